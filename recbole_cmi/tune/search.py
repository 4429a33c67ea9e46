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
nothing listens is an error within ``CONNECT_TIMEOUT_S``. ``--output`` is a folder on the
driver's machine: trials on other nodes write their results and checkpoints into it through a
small actor on the driver's node (``recbole_cmi/tune/storage.py``), so no shared file system or
bucket is needed. ``trials.csv`` names the node each trial ran on. Without an address, a local
Ray instance is started with all CPUs this process may use and shut down at the end.

An interrupted search continues with ``--resume`` (same ``--output``): finished trials are
kept, unfinished ones continue from their last checkpoint (with the same weights, optimizer and
random states), failed ones stay failed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recbole_cmi.cli import check_config_files
from recbole_cmi.errors import ConfigValueError, RecboleCmiError
from recbole_cmi.files import plain, write_json
from recbole_cmi.tune.report import TrialRow, write_outputs
from recbole_cmi.tune.space import (
    HyperParam,
    choice_combinations,
    distinct_choice_points,
    parse_hyper_file,
    parse_hyper_text,
    to_search_space,
)

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
        gpus_per_trial = _check_resources(settings)
        trainable = _trainable(plan, settings.cpus_per_trial, gpus_per_trial)
        # On a cluster, trials on other nodes write through the driver's node into --output (storage.py).
        from recbole_cmi.tune.storage import driver_disk_filesystem

        storage = driver_disk_filesystem(str(output / "ray")) if on_cluster else None
        if settings.resume:
            tuner = _restore(experiment_dir, trainable, storage)
        else:
            tuner = _new_tuner(plan, params, settings, trainable, output, storage)
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
    num_samples = settings.num_samples or (1 if settings.search == "grid" else DEFAULT_NUM_SAMPLES)
    n_points = choice_combinations(params) if settings.search == "random" else None
    if n_points is not None and num_samples > n_points:
        if settings.num_samples:
            raise ConfigValueError(
                f"--num_samples={num_samples} is more than the {n_points} different points of {params_file.name}: "
                f"random search tries each point at most once; lower --num_samples or use --search=grid"
            )
        num_samples = n_points
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "fixed": fixed,
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


def best_key(metric: str) -> str:
    return f"best_{metric}"


# ---------------------------------------------------------------- trials (run in Ray workers)


class EpochReporter:
    """``Trainer.fit`` callback: reports every validation to Tune, with the trial's checkpoints.

    Improvement and early stopping mirror ``recbole.utils.early_stopping`` (ties count as
    improvements, as there), so the reported best epoch is the one the best checkpoint holds.
    The Ray checkpoint is the whole RecBole checkpoint folder (best model and ``-last`` state)
    plus this reporter's own state, so a restored trial continues exactly where it stopped.
    """

    STATE_FILE = "reporter.json"

    def __init__(self, metric: str, bigger: bool, stopping_step: int, checkpoint_dir: str, state: dict | None = None):
        self.metric = metric
        self.bigger = bigger
        self.stopping_step = stopping_step
        self.checkpoint_dir = checkpoint_dir
        state = state or {}
        self.best = state.get("best", -math.inf if bigger else math.inf)
        self.best_epoch = state.get("best_epoch")
        self.steps_without_gain = state.get("steps_without_gain", 0)

    @classmethod
    def restore(cls, metric, bigger, stopping_step, checkpoint_dir):
        """A reporter continuing from a restored checkpoint folder, and the best-model file to resume from."""
        state = json.loads(Path(checkpoint_dir, cls.STATE_FILE).read_text(encoding="utf-8"))
        reporter = cls(metric, bigger, stopping_step, checkpoint_dir, state)
        best_file = os.path.join(checkpoint_dir, state["best_file"]) if state.get("best_file") else None
        return reporter, best_file

    def best_model_file(self) -> str:
        names = [f for f in os.listdir(self.checkpoint_dir) if f.endswith(".pth") and not f.endswith("-last.pth")]
        return sorted(names)[0] if names else ""

    def __call__(self, epoch_idx: int, valid_score: float) -> None:
        import ray
        from ray import tune

        score = float(valid_score)
        if score >= self.best if self.bigger else score <= self.best:
            self.best, self.best_epoch, self.steps_without_gain = score, epoch_idx, 0
        else:
            self.steps_without_gain += 1
        best_file = self.best_model_file()
        state = {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "steps_without_gain": self.steps_without_gain,
            "best_file": best_file,
        }
        write_json(Path(self.checkpoint_dir, self.STATE_FILE), state)
        metrics = {
            self.metric: score,
            best_key(self.metric): self.best,
            "epoch": epoch_idx,
            "best_epoch": self.best_epoch,
            "early_stop": self.steps_without_gain > self.stopping_step,
            "checkpoint_file": best_file,
            "node_id": ray.get_runtime_context().get_node_id(),  # which machine of a cluster trained it
        }
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(self.checkpoint_dir))


def run_trial(params: dict, plan: dict) -> None:
    """One trial: the fixed config plus this trial's ``params``, trained with per-epoch reports.

    A trial Ray restarts from a checkpoint (``--resume``) resumes training from it.
    """
    import ray
    import torch
    from ray import tune

    from recbole_cmi.quick_start import run_recbole_cmi

    torch.set_num_threads(max(1, int(plan["cpus_per_trial"])))
    # Ray's per-trial working folder on the node that runs it: Ray copies every reported
    # checkpoint into the trial folder under --output, so RecBole's own files stay out of it.
    context = tune.get_context()
    checkpoint_dir = os.path.join(os.getcwd(), "recbole_checkpoint", context.get_trial_id())
    os.makedirs(checkpoint_dir, exist_ok=True)
    bigger = plan["mode"] == "max"
    reporter, resume = EpochReporter(plan["metric"], bigger, plan["stopping_step"], checkpoint_dir), None
    restored = tune.get_checkpoint()
    if restored is not None:
        restored.to_directory(checkpoint_dir)
        reporter, resume = EpochReporter.restore(plan["metric"], bigger, plan["stopping_step"], checkpoint_dir)
    config_dict = {
        **plan["fixed"],
        **{name: plain(value) for name, value in params.items()},
        "checkpoint_dir": checkpoint_dir,
        # The GPUs Ray gave this trial (it already set CUDA_VISIBLE_DEVICES to them); "" = CPU.
        "gpu_id": ",".join(str(i) for i in ray.get_gpu_ids()),
    }
    run_recbole_cmi(
        plan["model"],
        plan["dataset"],
        config_dict=config_dict,
        saved=True,
        read_argv=False,
        callback_fn=reporter,
        resume=resume,
        evaluate_test=False,
    )


# ---------------------------------------------------------------- driver


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray; reuse one already running.

    Yields True when connected to a cluster started with ``ray start`` (trials may run on other nodes).
    """
    import logging

    import ray

    if ray.is_initialized():
        yield bool(address or os.environ.get("RAY_ADDRESS"))
        return
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(
                num_cpus=num_cpus or available_cpus(),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
    except ConnectionError as err:
        raise RecboleCmiError(f"cannot connect to the Ray cluster at '{address}': {_first_line(err)}") from err
    except ray.exceptions.AuthenticationError as err:
        raise RecboleCmiError(
            f"the Ray cluster at '{address}' refused this process's token: set RAY_AUTH_MODE=token and the "
            "cluster's RAY_AUTH_TOKEN (or its ~/.ray/auth_token) here, as on every node"
        ) from err
    try:
        yield address not in (None, "", "local")
    finally:
        ray.shutdown()


CONNECT_TIMEOUT_S = 10.0


def check_cluster_answers(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in one line, within ``timeout`` seconds, when nothing listens at ``HOST:PORT``.

    Ray itself retries an unreachable address for minutes before it gives up.
    """
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        raise ConfigValueError(f"--address must be auto or HOST:PORT (the head node's GCS port), got '{address}'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise RecboleCmiError(
            f"no Ray cluster answers at {address} ({reason}; connect timeout {timeout:g} s): start one with "
            f"`ray start --head --port={port}` on {host}, or check --address"
        ) from err


def _first_line(err) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def evaluate_best(model_file: str) -> tuple[dict, dict]:
    """The checkpoint's validation result (to check it against the trial) and its test result."""
    from recbole_cmi.quick_start import evaluate_checkpoint

    # RecBole's Trainer writes log_tensorboard/ into the cwd: keep it out of the results.
    with tempfile.TemporaryDirectory() as scratch, _working_directory(scratch):
        results = evaluate_checkpoint(model_file, splits=("valid", "test"))
    return tuple({k: float(v) for k, v in result.items()} for result in results)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pick_best(rows: list[TrialRow]) -> TrialRow | None:
    """The first row of the sorted table that finished without error and left a checkpoint."""
    for row in rows:
        if row.status != "error" and row.score is not None and row.saved_model_file:
            return row
    return None


def collect_rows(grid, plan: dict, params: list[HyperParam]) -> list[TrialRow]:
    """One row per trial, best validation score first (ties by trial id, unscored trials last)."""
    metric, max_t = plan["metric"], plan["max_t"]
    scheduler = plan["settings"]["scheduler"]
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        score = metrics.get(best_key(metric))
        score = float(score) if score is not None and math.isfinite(float(score)) else None
        epoch = metrics.get("epoch")
        model_file = ""
        if result.checkpoint is not None and metrics.get("checkpoint_file"):
            model_file = os.path.join(result.checkpoint.path, metrics["checkpoint_file"])
        if result.error is not None:
            status = "error"
        elif epoch is None:
            status = "not started"
        elif metrics.get("training_iteration", 0) >= max_t:
            status = "completed"
        elif metrics.get("early_stop"):
            status = "early stop (stopping_step)"
        elif not metrics.get("done"):
            status = "unfinished"
        else:
            status = "stopped by ASHA" if scheduler == "asha" else "stopped"
        rows.append(
            TrialRow(
                trial_id=metrics.get("trial_id") or os.path.basename(str(result.path)),
                params={p.name: plain((result.config or {}).get(p.name)) for p in params},
                score=score,
                best_epoch=metrics.get("best_epoch"),
                epochs_run=None if epoch is None else int(epoch) + 1,
                status=status,
                error=_one_line_error(result.error),
                saved_model_file=model_file,
                node_id=metrics.get("node_id") or "",
            )
        )
    sign = -1 if plan["mode"] == "max" else 1
    rows.sort(key=lambda r: (r.score is None, 0 if r.score is None else sign * r.score, r.trial_id))
    for rank, row in enumerate(rows, start=1):
        row.rank = rank
    return rows


def _one_line_error(error) -> str:
    if error is None:
        return ""
    cause = error
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:  # RayTaskError wraps it
        cause = cause.cause
    text = str(cause).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    name = type(cause).__name__
    return message if message.startswith(name) else f"{name}: {message}"


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


def _check_resources(settings: SearchSettings) -> float:
    """Per-trial GPUs; a request no node can meet is an error locally (Ray would wait forever)."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    gpus_per_trial = settings.gpus_per_trial
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if gpus >= 1 else 0.0
    problems = []
    if settings.cpus_per_trial > cpus:
        problems.append(f"--cpus_per_trial={settings.cpus_per_trial:g} but the cluster has {cpus:g} CPUs")
    if gpus_per_trial > gpus:
        problems.append(f"--gpus_per_trial={gpus_per_trial:g} but the cluster has {gpus:g} GPUs")
    if problems:
        message = "; ".join(problems)
        if not (settings.address or os.environ.get("RAY_ADDRESS")):
            raise ConfigValueError(f"{message} (local Ray)")
        print(f"warning: {message}; trials wait until the cluster grows", file=sys.stderr)
    return gpus_per_trial


def _trainable(plan: dict, cpus_per_trial: float, gpus_per_trial: float):
    from ray import tune

    trial_plan = {key: plan[key] for key in ("model", "dataset", "fixed", "metric", "mode", "stopping_step")} | {
        "cpus_per_trial": cpus_per_trial
    }
    return tune.with_resources(
        tune.with_parameters(run_trial, plan=trial_plan), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    )


def _new_tuner(plan: dict, params: list[HyperParam], settings: SearchSettings, trainable, output: Path, storage=None):
    from ray import tune

    metric = best_key(plan["metric"])
    search = settings.search
    num_samples = plan["settings"]["num_samples"]
    return tune.Tuner(
        trainable,
        param_space=to_search_space(params, grid=search == "grid"),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=plan["mode"],
            num_samples=num_samples,
            scheduler=_scheduler(settings, plan["max_t"]),
            search_alg=_search_algorithm(
                search,
                settings.search_seed,
                num_samples,
                settings.max_concurrent,
                distinct_choice_points(params, num_samples, settings.search_seed) if search == "random" else None,
            ),
            # Ray applies this to Searchers only; the variant generator takes its own limit.
            max_concurrent_trials=None if search in ("random", "grid") else settings.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=plan["experiment"],
            storage_path=str(output / "ray"),
            storage_filesystem=storage,
            verbose=settings.verbose,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def _restore(experiment_dir: Path, trainable, storage=None):
    from ray import tune

    if not tune.Tuner.can_restore(str(experiment_dir), storage_filesystem=storage):
        raise ConfigValueError(f"cannot resume: no Ray Tune experiment state in {experiment_dir}")
    return tune.Tuner.restore(
        str(experiment_dir),
        trainable=trainable,
        resume_unfinished=True,
        resume_errored=False,
        storage_filesystem=storage,
    )


def _scheduler(settings: SearchSettings, max_t: int):
    if settings.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_t,
        grace_period=min(settings.grace_period, max_t),
        reduction_factor=settings.reduction_factor,
    )


def _search_algorithm(search: str, seed: int | None, num_samples: int, max_concurrent: int | None, points=None):
    if search in ("random", "grid"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # ``points`` (random search over choices only): the trials' distinct points, one per sample.
        return BasicVariantGenerator(
            random_state=seed, max_concurrent=max_concurrent or 0, points_to_evaluate=points or None
        )
    if search == "hyperopt":
        try:
            from ray.tune.search.hyperopt import HyperOptSearch
        except ImportError as err:
            raise ConfigValueError("--search=hyperopt needs hyperopt: pip install 'recbole_cmi[tune]'") from err
        # TPE models the results of the first trials; with few trials, start modelling after a third.
        return HyperOptSearch(random_state_seed=seed, n_initial_points=max(1, min(20, num_samples // 3)))
    try:
        import optuna  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as err:
        raise ConfigValueError("--search=optuna needs optuna: pip install 'recbole_cmi[tune]'") from err
    return OptunaSearch(seed=seed)


@contextlib.contextmanager
def _working_directory(path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
