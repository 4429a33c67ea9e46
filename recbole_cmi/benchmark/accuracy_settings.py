"""What one accuracy benchmark is: its settings, the models and variants it runs, the config every run shares,
the sha that identifies that config (``--resume`` compares it), and the tuned files the runs read.

:mod:`recbole_cmi.benchmark.accuracy` (the command) and :mod:`recbole_cmi.benchmark.tune` (the equal search
whose tuned files ``--tuned`` reads) build on it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from recbole_cmi.errors import ConfigValueError

DEFAULT_MODELS = ("CMI", "SASRec", "GRU4Rec", "ComiRecSA", "ComiRecDR", "CL4SRec")
FIRST_SEED = 2022
SHARED_DEFAULTS = {"embedding_size": 64, "hidden_size": 64, "topk": [10, 20, 50], "eval_step": 1}

PROTOCOLS = {
    "loo": {
        "metrics": ["Recall", "NDCG", "Hit"],
        "valid_metric": "NDCG@20",
        "text": "RecBole's sequential leave-one-out with full sort: per user the last interaction is the test "
        "target and the one before it the validation target; training uses every earlier prefix -> next item; "
        "all items are ranked ({history}). One target per user, so Recall@K = Hit@K; NDCG is RecBole's.",
    },
    "multi_target": {
        "metrics": ["Recall", "Hit", "NDCG"],
        "valid_metric": "Recall@50",
        "text": "the CMI paper's multi-target protocol (`recbole_cmi.data.protocol`): per user, the target is the "
        "set of items in the last period ({split}) and the history everything before it; validation uses the "
        "period before, training everything before validation; history items are excluded from the ranking; "
        "Recall@K = |top-K ∩ targets| / |targets| (targets deduplicated), Hit@K = HitRate@K, NDCG@K with "
        "binary gains (not ComiRec's); averaged over users with at least one target and a non-empty history.",
    },
}
DEFAULT_TUNED = "properties/tuned"  # --tuned without a folder: the package's own (properties_dir() / "tuned")
CONVENTIONS = ("both", "config")


@dataclass
class BenchmarkSettings:
    dataset: str
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    seeds: int = 3
    protocol: str = "loo"
    config_files: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    out: str = "results"
    resume: bool = False
    run_timeout: float | None = None
    work_dir: str | None = None
    note: str = ""
    command: str = ""
    tuned: str | None = None  # the folder of <dataset>/<Model>.yaml tuned files every model runs with
    conventions: str = "both"  # "both": the test set also under the other ranking convention; "config": as set
    keep_checkpoints: bool = False  # keep each run's best checkpoint (<work_dir>/<label>-seed<seed>/saved/)
    only_seeds: list[int] | None = None  # run only these of the --seeds seeds (one benchmark split over processes)


@dataclass(frozen=True)
class RunModel:
    """One ``--models`` entry: the model class, its settings over the shared config, and the label its rows carry."""

    label: str  # the csv's ``model`` column, the run folder, the tuned file's name under --tuned
    model: str  # the model class's name
    overrides: dict = field(default_factory=dict)  # the variant's own config keys (``Model:key=value``)
    text: str = ""  # the entry as written, for the table; "" for a plain model


def model_names(names: list[str]) -> list[str]:
    """The model classes' names for ``--models`` (an unknown name fails here, before any run); each at most once."""
    from recbole_cmi.utils import get_model

    if not names:
        raise ConfigValueError("--models is empty (comma-separated model names, e.g. CMI,SASRec)")
    models = [get_model(name).__name__ for name in names]
    duplicates = sorted({m for m in models if models.count(m) > 1})
    if duplicates:
        raise ConfigValueError(f"--models names {', '.join(duplicates)} more than once")
    return models


def model_variants(entries: list[str]) -> list[RunModel]:
    """``--models`` entries (plain names or ``Model:key=value,label=Name`` variants, :func:`parse_model_variants`)
    -> one :class:`RunModel` each; an unknown model or a label used twice fails here, before any run.

    A variant without ``label=`` is labelled by its text (``CMI:cl_weight=0``); the keys the benchmark sets itself
    are refused as in ``--key=value``.
    """
    from recbole_cmi.cli import parse_model_variants
    from recbole_cmi.utils import get_model

    variants = []
    for entry in entries:
        for variant in parse_model_variants(entry):
            model = get_model(variant.name).__name__
            for key in ("seed", "checkpoint_dir", "eval_protocol"):
                if key in variant.overrides:
                    raise ConfigValueError(f"--models: {variant.text} sets {key}, which the benchmark sets")
            label = variant.label or (variant.text if variant.overrides else model)
            text = variant.text if variant.overrides else ""
            variants.append(RunModel(label, model, dict(variant.overrides), text))
    if not variants:
        raise ConfigValueError("--models is empty (comma-separated model names, e.g. CMI,SASRec)")
    labels = [variant.label for variant in variants]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigValueError(f"--models names {', '.join(duplicates)} more than once (give variants a label=)")
    return variants


def shared_config(settings: BenchmarkSettings) -> dict:
    """The config dict every run gets (the seed and the checkpoint folder are added per run)."""
    protocol = PROTOCOLS[settings.protocol]
    shared = {"eval_protocol": settings.protocol, **SHARED_DEFAULTS}
    shared["metrics"] = list(protocol["metrics"])
    shared["valid_metric"] = protocol["valid_metric"]
    shared.update(settings.overrides)
    data_path = settings.overrides.get("data_path")
    if data_path is not None:
        shared["data_path"] = os.path.abspath(str(data_path))
    elif os.path.isdir(os.path.join("dataset", settings.dataset)):  # what Config would find in this folder
        shared["data_path"] = os.path.abspath("dataset")
    shared["show_progress"] = False
    if settings.tuned:
        shared["use_tuned_values"] = False  # the --tuned file is each model's only tuned layer
    return shared


def config_sha(settings: BenchmarkSettings, shared: dict) -> str:
    """What ``--resume`` compares: the dataset, protocol, shared config and the config files' contents.

    Under ``--tuned`` only the fact is hashed, not the folder: each row's ``tuned_sha`` pins its tuned file's
    content, so a copy of the tuned folder elsewhere (or the package installed elsewhere) resumes the same runs.
    """
    key = {
        "dataset": settings.dataset,
        "protocol": settings.protocol,
        "config_file_shas": [_file_sha(path) for path in settings.config_files],
        "shared": shared,
    }
    if settings.tuned:
        key["tuned"] = "per-row tuned_sha"
    return _sha_of(key)


def legacy_config_sha(settings: BenchmarkSettings, shared: dict) -> str:
    """The sha of csv rows written by earlier versions, which hashed the config files' and the tuned folder's paths."""
    key = {
        "dataset": settings.dataset,
        "protocol": settings.protocol,
        "config_files": [os.path.abspath(p) for p in settings.config_files],
        "shared": shared,
    }
    if settings.tuned:
        key["tuned_dir"] = str(tuned_dir(settings.tuned))
    return _sha_of(key)


def _file_sha(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:  # checked before any run; a file that vanished since is told apart by its path
        return os.path.abspath(path)


def _sha_of(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def tuned_dir(value: str) -> Path:
    """``--tuned``'s folder; its default is the package's own ``properties/tuned``, wherever that is installed."""
    if value == DEFAULT_TUNED:
        from recbole_cmi.paths import properties_dir

        return properties_dir() / "tuned"
    return Path(value).resolve()


def tuned_source(
    settings: BenchmarkSettings, label: str, shared: dict, model: str | None = None
) -> tuple[Path, dict, str] | None:
    """The tuned file a run of ``label`` (of the class ``model``, default: ``label``) reads, its values and the sha
    of its text; None where there is none.

    With ``--tuned`` it is ``<DIR>/<dataset>/<label>.yaml`` (a variant has its own); without, the package's tuned
    layer of the model class, where it exists and ``use_tuned_values`` is not False. The file must hold a yaml
    mapping (key: value lines).
    """
    if settings.tuned:
        path = tuned_dir(settings.tuned) / settings.dataset / f"{label}.yaml"
    else:
        from recbole_cmi.config_yaml import tuned_layer_path

        if shared.get("use_tuned_values", True) is False:
            return None
        path = tuned_layer_path(model or label, settings.dataset)
        if not path.is_file():
            return None
    text = path.read_text(encoding="utf-8")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ConfigValueError(f"tuned file {path} is not valid yaml: {first}") from err
    if not isinstance(values, dict):
        raise ConfigValueError(f"tuned file {path} must hold 'key: value' lines (a yaml mapping)")
    return path, values, hashlib.sha256(text.encode()).hexdigest()[:12]


def tuned_header(path: Path) -> str:
    """The comment lines that head a tuned file, joined: how its values were chosen (``benchmark tune`` writes the
    search there; a hand-written file should say where its values come from)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    header = []
    for line in lines:
        if not line.strip().startswith("#"):
            break
        header.append(line.strip().lstrip("#").strip())
    return " ".join(part for part in header if part)


def display_path(path: Path) -> str:
    """``path`` relative to the working folder where it lies below it (tables name files portably), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def utc_stamp() -> str:
    """The time now, as the tables write it: ``2025-01-31 12:00 UTC``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 (datetime.UTC is 3.11+)
