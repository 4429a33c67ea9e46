"""What one equal-budget tuning (:mod:`recbole_cmi.benchmark.tune`) is: its settings, what one model's search
gave, the config every trial gets (the accuracy benchmark's shared config) and what a ``--resume`` must find
unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from recbole_cmi.benchmark.accuracy_settings import DEFAULT_MODELS, FIRST_SEED, BenchmarkSettings, shared_config
from recbole_cmi.files import plain

DEFAULT_HYPER_DIR = "properties/hyper/benchmark"  # relative to the package's properties folder's parent

# Set by this command (the option to use instead).
RESERVED_KEYS = {
    "seed": "--seed",
    "epochs": "--epochs",
    "eval_protocol": "--protocol",
    "use_tuned_values": "(always False while searching)",
    "checkpoint_dir": "--search_dir",
}


@dataclass
class TuneSettings:
    dataset: str
    epochs: int
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    trials: int = 12
    grace: int = 1
    reduction_factor: float = 2.0
    protocol: str = "loo"
    seed: int = FIRST_SEED
    search_seed: int = 2022
    hyper_dir: str | None = None  # None: the package's properties/hyper/benchmark
    search_dir: str | None = None  # None: ray_results/tune-<dataset>-<protocol>
    tuned_dir: str | None = None  # None: the package's properties/tuned
    out: str = "results"
    config_files: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    resume: bool = False
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    num_cpus: int | None = None
    address: str | None = None
    verbose: int = 0
    command: str = ""


@dataclass
class ModelTuning:
    """What one model's search gave (``error`` set where it gave no best trial)."""

    model: str
    hyper_file: Path
    points: int | None
    best: dict | None = None  # best_test_result.json of run_search
    statuses: dict = field(default_factory=dict)  # trial status -> count
    wall_s: float | None = None
    stopping_step: int | None = None  # as the search resolved it (dataset yaml, overrides)
    tuned_file: Path | None = None
    trials_md: str = ""
    error: str = ""


def hyper_dir_path(value: str | None) -> Path:
    """``--hyper_dir``'s folder of ``<Model>.hyper``; by default the package's ``properties/hyper/benchmark``."""
    if value:
        return Path(value).resolve()
    from recbole_cmi.paths import properties_dir

    return properties_dir() / "hyper" / "benchmark"


def search_config(settings: TuneSettings) -> dict:
    """The config dict every trial of every model gets: the accuracy benchmark's shared config, the epoch cap, the
    training seed, and the published defaults (no tuned layer)."""
    bench = BenchmarkSettings(dataset=settings.dataset, protocol=settings.protocol, overrides=settings.overrides)
    shared = shared_config(bench)
    shared.update(epochs=settings.epochs, seed=settings.seed, use_tuned_values=False)
    return shared


def search_spec(settings: TuneSettings, shared: dict) -> dict:
    """What must not change between an invocation and its ``--resume`` (the models may)."""
    return {
        "dataset": settings.dataset,
        "protocol": settings.protocol,
        "trials": settings.trials,
        "epochs": settings.epochs,
        "grace": settings.grace,
        "reduction_factor": settings.reduction_factor,
        "search_seed": settings.search_seed,
        "config_files": [str(Path(p).resolve()) for p in settings.config_files],
        "shared": plain(shared),
    }


def public_settings(settings: TuneSettings) -> dict:
    """The settings as the table records them (the command is shown on its own)."""
    values = asdict(settings)
    values.pop("command")
    return values
