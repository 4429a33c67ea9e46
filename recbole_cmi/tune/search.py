"""Ray Tune hyper-parameter search for recbole_cmi and RecBole core models.

Why Ray 2.60 and not RecBole's own Ray path: ``recbole==1.2.1`` pins ``ray<=2.6.3``, which does
not import under NumPy 2 or setuptools >= 82, and its ``run_hyper.py --tool Ray`` selects on
test metrics, reports once per trial (ASHA has nothing to prune) and hard-codes one GPU per
trial. recbole_cmi installs recbole with ``--no-deps`` and uses the current Ray API
(``tune.Tuner``, ``tune.report(dict)``), which is also what today's clusters run.

How a search runs:

* The driver builds the model's config once (``Config(..., read_argv=False)``) to resolve the
  dataset's ``data_path`` to an absolute path, the validation metric and its direction
  (``valid_metric``, ``valid_metric_bigger``), and to reject searched names the model does not
  know. That *fixed* config (config files + ``--key=value`` overrides + ``data_path``) goes to
  every trial as a dict; trials never read ``sys.argv``.
* Each trial trains with ``run_recbole_cmi(..., evaluate_test=False)`` and reports after every
  validation ``{<metric>: this epoch, best_<metric>: best so far, epoch, best_epoch}``. The
  search, ASHA and model-based searchers use ``best_<metric>``: it is what the trial's best
  checkpoint scores, the same quantity RecBole's early stopping keeps. Every report hands Ray
  the trial's RecBole checkpoints (best model, and the ``-last`` state to resume from) with
  ``tune.report(..., checkpoint=...)``; Ray copies them under ``--output`` before training goes
  on, so a trial stopped by ASHA still leaves its best model behind.
* Trials get a ``checkpoint_dir`` of their own (in Ray's per-trial working folder; what lasts
  is Ray's copy in the trial folder under ``--output``) and ``gpu_id`` from the GPUs Ray
  assigned them (``ray.get_gpu_ids()``; RecBole's ``Config`` would otherwise overwrite
  ``CUDA_VISIBLE_DEVICES``). ``gpus_per_trial`` may be fractional; 0 trains on the CPU.
* A trial that raises is recorded with its error and the search goes on. The best trial is
  chosen on the validation metric among trials that did not fail; only its checkpoint is
  evaluated on the test set, once, on the driver.

Running on an existing Ray cluster: start the cluster (``ray start --head`` on one node,
``ray start --address=<head>:6379`` on the others), install recbole_cmi in the same Python
environment on every node and keep the dataset at the same absolute path on every node. Then
run ``run_hyper.py`` on a node of the cluster with ``--address=auto`` (or
``--address=<head>:6379``; the ``RAY_ADDRESS`` environment variable works too); an address where
nothing listens is an error within ``CONNECT_TIMEOUT_S`` (:mod:`recbole_cmi.tune.cluster`). ``--output`` is a
folder on the driver's machine: trials on other nodes write their results and checkpoints into it through a
small actor on the driver's node (``recbole_cmi/tune/storage.py``), so no shared file system or
bucket is needed. ``trials.csv`` names the node each trial ran on. Without an address, a local
Ray instance is started with all CPUs this process may use and shut down at the end.

An interrupted search continues with ``--resume`` (same ``--output``): finished trials are
kept, unfinished ones continue from their last checkpoint (with the same weights, optimizer and
random states), failed ones stay failed.

Here: the settings, the plan and the driver (the search from start to outputs, the best trial's test
evaluation). A trial is in :mod:`~recbole_cmi.tune.trial`, the Tuner, scheduler and searcher in
:mod:`~recbole_cmi.tune.tuner`, the connection to Ray in :mod:`~recbole_cmi.tune.cluster`, the trial table, the
choice of the best trial and the output files in :mod:`~recbole_cmi.tune.report`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recbole_cmi.cli import check_config_files
from recbole_cmi.errors import ConfigValueError, RecboleCmiError
from recbole_cmi.files import plain, write_json
from recbole_cmi.tune.cluster import check_cluster_answers, check_resources, ray_session
from recbole_cmi.tune.report import TrialRow, collect_rows, pick_best, write_outputs
from recbole_cmi.tune.space import (
    HyperParam,
    choice_combinations,
    parse_hyper_file,
    parse_hyper_text,
)
from recbole_cmi.tune.tuner import make_trainable, new_tuner, restore_tuner

SEARCHERS = ("random", "grid", "hyperopt", "optuna")
SCHEDULERS = ("asha", "fifo")
PLAN_FILE = "search.json"
DEFAULT_OUTPUT_ROOT = "ray_results"
DEFAULT_NUM_SAMPLES = 10


@dataclass
class SearchSettings:
    """What ``run_hyper.py`` passes in; ``config_dict`` holds the extra ``--key=value`` pairs."""

    model: str | None = None
    dataset: str | None = None
    params_file: str | None = None
    config_files: list[str] = field(default_factory=list)
    config_dict: dict = field(default_factory=dict)
    num_samples: int | None = None  # None: 1 for grid (each grid point once), else DEFAULT_NUM_SAMPLES
    scheduler: str = "asha"
    search: str = "random"
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 if the cluster has GPUs, else 0
    address: str | None = None
    num_cpus: int | None = None  # local Ray only; None: the CPUs this process may use
    output: str | None = None
    resume: bool = False
    search_seed: int | None = 2022
    grace_period: int = 1
    reduction_factor: float = 2.0
    verbose: int = 1


@dataclass
class SearchOutcome:
    output_dir: Path
    rows: list[TrialRow]
    best: TrialRow | None
    test_result: dict | None
    metric: str
    mode: str
    unfinished: int = 0
    files: dict = field(default_factory=dict)


def run_search(settings: SearchSettings) -> SearchOutcome:
    """Run (or resume) a search and write its tables, best config and best test result."""
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address and address not in ("auto", "local"):
        check_cluster_answers(address)  # before anything is written: a wrong address leaves no folder behind
    output = _output_dir(settings)
    if settings.resume:
        plan = _load_plan(output)
        settings = _resumed_settings(plan, settings)
    else:
        plan = make_plan(settings)
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / PLAN_FILE, plan)
    params = parse_hyper_text(plan["hyper_text"], plan["params_file"])
    experiment_dir = output / "ray" / plan["experiment"]

    with ray_session(settings.address, settings.num_cpus) as on_cluster:
        gpus_per_trial = check_resources(settings.cpus_per_trial, settings.gpus_per_trial, settings.address)
        trainable = make_trainable(plan, settings.cpus_per_trial, gpus_per_trial)
        # On a cluster, trials on other nodes write through the driver's node into --output (storage.py).
        from recbole_cmi.tune.storage import driver_disk_filesystem

        storage = driver_disk_filesystem(str(output / "ray")) if on_cluster else None
        if settings.resume:
            tuner = restore_tuner(experiment_dir, trainable, storage)
        else:
            tuner = new_tuner(plan, params, settings, trainable, output, storage)
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            print(f"search interrupted; continue it with --resume --output={output}", file=sys.stderr)
            raise

    rows = collect_rows(grid, plan, params)
    unfinished = sum(row.status in ("unfinished", "not started") for row in rows)
    best = None if unfinished else pick_best(rows)
    valid_result = test_result = None
    if best is not None:
        valid_result, test_result = evaluate_best(best.saved_model_file)
        reproduced = valid_result.get(plan["metric"])
        if reproduced is None or abs(reproduced - best.score) > 1e-4:
            print(
                f"warning: the best checkpoint scores valid {plan['metric']} = {reproduced}, "
                f"but its trial reported {best.score}",
                file=sys.stderr,
            )
    files = write_outputs(output, plan, params, rows, best, valid_result, test_result)
    outcome = SearchOutcome(output, rows, best, test_result, plan["metric"], plan["mode"], unfinished, files)
    if best is None and not unfinished:
        raise RecboleCmiError(f"all {len(rows)} trials failed; see {files['trials_md']}")
    return outcome


def make_plan(settings: SearchSettings) -> dict:
    """Validate the settings against the model's config; everything trials and outputs need."""
    _check_settings(settings)
    params_file = Path(settings.params_file).resolve()
    params = parse_hyper_file(params_file)
    config_files = [str(Path(f).resolve()) for f in settings.config_files or []]
    check_config_files(config_files)

    config = _driver_config(settings.model, settings.dataset, config_files, dict(settings.config_dict))
    known = set(config.final_config_dict)
    unknown = [p for p in params if p.name not in known]
    if unknown:
        listed = ", ".join(f"'{p.name}' (line {p.line})" for p in unknown)
        raise ConfigValueError(
            f"{params_file}: {listed} not a config key of {config['model']} on {config['dataset']}; "
            f"check the spelling, or give it a default in the model's yaml or with --<key>=<value>"
        )
    epochs = int(config["epochs"])
    eval_step = min(int(config["eval_step"] or 0), epochs)
    if epochs < 1 or eval_step < 1:
        raise ConfigValueError(
            f"a search needs epochs >= 1 and eval_step >= 1 (trials report every validation), "
            f"got epochs={config['epochs']}, eval_step={config['eval_step']}"
        )
    num_samples = _num_samples(settings, params, params_file)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "fixed": _fixed_config(config),
        "params_file": str(params_file),
        "hyper_text": params_file.read_text(encoding="utf-8"),
        "metric": config["valid_metric"].lower(),
        "mode": "max" if config["valid_metric_bigger"] else "min",
        "epochs": epochs,
        "max_t": epochs // eval_step,
        "stopping_step": int(config["stopping_step"]),
        "experiment": f"{config['model']}-{config['dataset']}-{stamp}",
        "settings": {**asdict(settings), "num_samples": num_samples, "resume": False},
        "searched": [p.describe() for p in params],
    }


def _check_settings(settings: SearchSettings) -> None:
    """The settings a plan needs, each in its range (one ConfigValueError line naming the option)."""
    for name in ("model", "dataset", "params_file"):
        if not getattr(settings, name):
            raise ConfigValueError(f"--{name} is required (unless --resume continues an earlier search)")
    if settings.search not in SEARCHERS:
        raise ConfigValueError(f"--search must be one of {', '.join(SEARCHERS)}, got '{settings.search}'")
    if settings.scheduler not in SCHEDULERS:
        raise ConfigValueError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got '{settings.scheduler}'")
    _check_positive("num_samples", settings.num_samples, allow_none=True)
    _check_positive("max_concurrent", settings.max_concurrent, allow_none=True)
    _check_positive("cpus_per_trial", settings.cpus_per_trial)
    _check_positive("grace_period", settings.grace_period)
    if settings.gpus_per_trial is not None and settings.gpus_per_trial < 0:
        raise ConfigValueError(f"--gpus_per_trial must be >= 0, got {settings.gpus_per_trial}")
    if settings.reduction_factor <= 1:
        raise ConfigValueError(f"--reduction_factor must be > 1, got {settings.reduction_factor}")


def _fixed_config(config) -> dict:
    """What every trial gets: the config's yaml layers and the user's values, with an absolute ``data_path``."""
    # Trials get recbole_cmi's yaml layers as they read now, under the user's values: editing a yaml
    # file during a search (or a cluster node with other files) cannot change later trials.
    given = {**config.property_values(), **config.external_config_dict}
    fixed = {k: plain(v) for k, v in given.items() if k not in ("model", "dataset")}
    fixed["data_path"] = os.path.dirname(os.path.normpath(config["data_path"]))
    try:
        json.dumps(fixed)
    except TypeError as err:
        raise ConfigValueError(
            f"the fixed config must hold plain values (numbers, strings, lists, dicts): {err}"
        ) from err
    return fixed


def _num_samples(settings: SearchSettings, params: list[HyperParam], params_file: Path) -> int:
    """The trials to run: ``--num_samples``, else 1 per grid point or ``DEFAULT_NUM_SAMPLES``; a random search
    over choices only runs each of its points at most once."""
    num_samples = settings.num_samples or (1 if settings.search == "grid" else DEFAULT_NUM_SAMPLES)
    n_points = choice_combinations(params) if settings.search == "random" else None
    if n_points is not None and num_samples > n_points:
        if settings.num_samples:
            raise ConfigValueError(
                f"--num_samples={num_samples} is more than the {n_points} different points of {params_file.name}: "
                f"random search tries each point at most once; lower --num_samples or use --search=grid"
            )
        num_samples = n_points
    return num_samples


def evaluate_best(model_file: str) -> tuple[dict, dict]:
    """The checkpoint's validation result (to check it against the trial) and its test result."""
    from recbole_cmi.pipeline import evaluate_checkpoint

    # RecBole's Trainer writes log_tensorboard/ into the cwd: keep it out of the results.
    with tempfile.TemporaryDirectory() as scratch, _working_directory(scratch):
        results = evaluate_checkpoint(model_file, splits=("valid", "test"))
    return tuple({k: float(v) for k, v in result.items()} for result in results)


def _driver_config(model, dataset, config_files, config_dict):
    from recbole_cmi.config import Config

    # RecBole's Config sets CUDA_VISIBLE_DEVICES for the process; a local Ray started after it
    # would then see only that GPU. The driver trains nothing, so restore it.
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        return Config(model, dataset, config_files or None, config_dict, read_argv=False)
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def _check_positive(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigValueError(f"--{name} must be > 0, got {value}")


def _output_dir(settings: SearchSettings) -> Path:
    if settings.output:
        output = Path(settings.output).resolve()
        if not settings.resume and output.exists() and any(output.iterdir()):
            raise ConfigValueError(
                f"output folder {output} is not empty: pass --resume to continue that search, or another --output"
            )
        return output
    root = Path(DEFAULT_OUTPUT_ROOT).resolve()
    if settings.resume:
        pattern = f"{settings.model}-{settings.dataset}-*" if settings.model and settings.dataset else "*"
        earlier = sorted(p for p in root.glob(pattern) if (p / PLAN_FILE).is_file())
        if not earlier:
            raise ConfigValueError(f"no earlier search under {root} to resume; pass --output=<its folder>")
        return earlier[-1]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{settings.model}-{settings.dataset}-{stamp}"


def _load_plan(output: Path) -> dict:
    try:
        return json.loads((output / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigValueError(f"cannot resume: {output / PLAN_FILE} is missing or unreadable ({err})") from err


def _resumed_settings(plan: dict, given: SearchSettings) -> SearchSettings:
    """The stored settings; where Ray runs (address, local CPUs) and how much it prints may change."""
    settings = SearchSettings(**plan["settings"])
    settings.resume = True
    settings.address = given.address
    settings.num_cpus = given.num_cpus
    settings.verbose = given.verbose
    return settings


@contextlib.contextmanager
def _working_directory(path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
