"""Equal tuning budget: the same validation search for every model, and the tuned files it writes.

    python -m recbole_cmi.benchmark tune --dataset=microlens \\
        --models=CMI,SASRec,GRU4Rec,ComiRecSA,ComiRecDR,CL4SRec --trials=12 --epochs=8 --grace=2 \\
        [--protocol=loo|multi_target] [--seed=2022] [--search_seed=2022] [--reduction_factor=2] \\
        [--hyper_dir=properties/hyper/benchmark] [--search_dir=ray_results/tune-<dataset>-<protocol>] \\
        [--tuned_dir=properties/tuned] [--out=results] [--resume] [--max_concurrent=K] [--cpus_per_trial=1] \\
        [--gpus_per_trial=G] [--num_cpus=N] [--address=auto] [--config_files="a.yaml"] [--<key>=<value> ...]

* **One search, run per model** with :func:`recbole_cmi.tune.search.run_search` (Ray Tune; see its module for
  how trials run): a random search over ``<hyper_dir>/<Model>.hyper`` (each point at most once), ``--trials``
  trials, ASHA on the validation metric (``best_<metric>`` reported after every epoch; ``--grace`` epochs
  before a trial can be stopped, ``--reduction_factor``), at most ``--epochs`` epochs per trial with early
  stopping (``stopping_step``), the same ``--search_seed`` and training ``--seed``. Every shipped space searches
  the learning rate on one grid (the command refuses spaces whose ``learning_rate`` values differ) plus the
  model's own main knobs.
* **The benchmark's shared config**: what ``python -m recbole_cmi.benchmark accuracy`` gives every run
  (``eval_protocol``, ``embedding_size`` = ``hidden_size`` = 64, ``metrics``, ``topk``, ``valid_metric``,
  validation every epoch, the ``--<key>=<value>`` overrides), so a search selects on the validation split the
  final runs use. Trials start from each model's published defaults: ``use_tuned_values: False`` leaves the
  tuned files (this command's output) out of the search.
* **Output.** Per model ``<tuned_dir>/<dataset>/<Model>.yaml``: the best trial's values, headed by a comment
  that names the search (command, space, budget, validation metric and score, trials, date), which
  ``accuracy --tuned`` and every run on that dataset then read. ``<out>/<dataset>/tune-<protocol>.md``: one row
  per model (best values, score, trials stopped by ASHA, wall time) and every model's trials table, rewritten
  after each model. The searches themselves lie in ``--search_dir`` (``<Model>/``: Ray's trials and
  checkpoints, ``trials.md``, ``best_config.yaml``).
* **Resumable**: ``--resume`` with the same options keeps what is done: a model whose search finished only has
  its tuned file written again, an interrupted one continues (Ray restores its trials from their last
  checkpoints), the others start. Other options than the stored ones are refused (``tune.json``).

Here: the command and the searches. The settings and the trials' shared config are in
:mod:`~recbole_cmi.benchmark.tune_settings`, the tuned files and the table in
:mod:`~recbole_cmi.benchmark.tune_report`.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path

from recbole_cmi.benchmark.accuracy_settings import (
    DEFAULT_MODELS,
    DEFAULT_TUNED,
    FIRST_SEED,
    PROTOCOLS,
    model_names,
    tuned_dir,
)
from recbole_cmi.benchmark.tune_report import score_text, summary_markdown, tuned_yaml
from recbole_cmi.benchmark.tune_settings import (
    RESERVED_KEYS,
    ModelTuning,
    TuneSettings,
    hyper_dir_path,
    search_config,
    search_spec,
)
from recbole_cmi.cli import OneLineArgumentParser, config_file_names, parse_with_config_values, run_cli
from recbole_cmi.errors import ConfigValueError, RecboleCmiError
from recbole_cmi.files import write_json, write_text

SPEC_FILE = "tune.json"
SECONDS_FILE = "tune_seconds.json"
SUMMARY_FILE = "best_test_result.json"  # run_search writes it once every trial has ended and a best exists


# ---------------------------------------------------------------- command line


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m recbole_cmi benchmark tune",
        description="The same validation search for every model; writes properties/tuned/<dataset>/<Model>.yaml.",
        allow_abbrev=False,
    )
    parser.add_argument("--dataset", "-d", help="dataset name (bundled, ./dataset/<name>, or under --data_path)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    parser.add_argument("--trials", type=int, default=12, help="trials per model (random search, distinct points)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap of every trial (required)")
    parser.add_argument("--grace", type=int, default=1, help="ASHA grace period: epochs before a trial can stop")
    parser.add_argument("--reduction_factor", type=float, default=2.0, help="ASHA reduction factor")
    parser.add_argument("--protocol", default="loo", help="loo or multi_target: the validation split searched")
    parser.add_argument("--seed", type=int, default=FIRST_SEED, help="training seed of every trial")
    parser.add_argument("--search_seed", type=int, default=2022, help="seed of the points drawn")
    parser.add_argument(
        "--hyper_dir", default=None, help="folder of <Model>.hyper (default properties/hyper/benchmark)"
    )
    parser.add_argument(
        "--search_dir", default=None, help="Ray's output (default ray_results/tune-<dataset>-<protocol>)"
    )
    parser.add_argument(
        "--tuned_dir", default=None, help="writes <tuned_dir>/<dataset>/<Model>.yaml (properties/tuned)"
    )
    parser.add_argument("--out", default="results", help="writes <out>/<dataset>/tune-<protocol>.md")
    parser.add_argument("--config_files", nargs="*", default=None, help="yaml files shared by every trial")
    parser.add_argument("--resume", action="store_true", help="keep finished searches, continue interrupted ones")
    parser.add_argument("--max_concurrent", type=int, default=None, help="trials at a time (default: as CPUs allow)")
    parser.add_argument("--cpus_per_trial", type=float, default=1.0)
    parser.add_argument("--gpus_per_trial", type=float, default=None, help="default 1 if there is a GPU, else 0")
    parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--address", default=None, help="an existing Ray cluster: auto or HOST:PORT")
    parser.add_argument("--verbose", type=int, default=0, help="Ray Tune's verbosity, 0..3")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, overrides = parse_with_config_values(parser, argv)
    if not args.dataset:
        parser.error("--dataset is required")
    if args.epochs is None:
        parser.error("--epochs is required: the epoch cap of every trial, the same for every model")
    named = {f.name for f in fields(TuneSettings)}  # the options named like a setting go there as they are
    values = {key: value for key, value in vars(args).items() if key in named}
    values.update(
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        config_files=config_file_names(args.config_files),
        overrides=overrides,
        command=shlex.join(["python", "-m", "recbole_cmi.benchmark", "tune", *argv]),
    )
    settings = TuneSettings(**values)

    def action():
        results = run_tuning(settings)
        failed = [r for r in results if r.error]
        for result in results:
            if result.error:
                print(f"{result.model}: {result.error}")
            else:
                print(f"{result.model}: valid {score_text(result.best)}; tuned file {result.tuned_file}")
        return 1 if failed else 0

    return run_cli(action)


# ---------------------------------------------------------------- the searches


def run_tuning(settings: TuneSettings) -> list[ModelTuning]:
    """Every model's search (or what a resumed one kept), its tuned file and the summary table."""
    models, spaces = _check_settings(settings)
    shared = search_config(settings)
    search_dir = Path(settings.search_dir or Path("ray_results") / f"tune-{settings.dataset}-{settings.protocol}")
    spec = search_spec(settings, shared)
    _claim_search_dir(search_dir, spec, settings.resume)
    summary_path = Path(settings.out) / settings.dataset / f"tune-{settings.protocol}.md"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for index, model in enumerate(models, 1):
        print(f"[{index}/{len(models)}] {model}: {spaces[model][1]} points, {settings.trials} trials ...", flush=True)
        result = tune_model(settings, model, spaces[model], shared, search_dir / model)
        results.append(result)
        write_text(summary_path, summary_markdown(settings, spec, results, models))
        if result.error.startswith("interrupted"):
            break  # the rest waits for --resume too
    return results


def _check_settings(settings: TuneSettings) -> tuple[list[str], dict]:
    """Model class names and, per model, ``(hyper file, points)``; every problem before any search starts."""
    from recbole_cmi.tune.space import choice_combinations, parse_hyper_file

    if settings.protocol not in PROTOCOLS:
        raise ConfigValueError(f"--protocol={settings.protocol!r} (one of {', '.join(PROTOCOLS)})")
    for name in ("trials", "epochs", "grace"):
        value = getattr(settings, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigValueError(f"--{name}={value!r} (an integer >= 1)")
    if settings.grace > settings.epochs:
        raise ConfigValueError(f"--grace={settings.grace} is more than --epochs={settings.epochs}")
    for key, option in RESERVED_KEYS.items():
        if key in settings.overrides:
            raise ConfigValueError(f"--{key} is set by the tune command; use {option}")
    models = model_names(settings.models)
    hyper_dir = hyper_dir_path(settings.hyper_dir)
    spaces, grids = {}, {}
    for model in models:
        path = hyper_dir / f"{model}.hyper"
        if not path.is_file():
            raise ConfigValueError(f"no search space for {model}: {path} does not exist")
        params = parse_hyper_file(path)
        points = choice_combinations(params)
        if points is not None and settings.trials > points:
            raise ConfigValueError(
                f"--trials={settings.trials} is more than the {points} points of {path}: every model gets the same "
                "number of trials, so lower --trials (or widen that space)"
            )
        spaces[model] = (path, points)
        grids[model] = next((p.describe() for p in params if p.name == "learning_rate"), None)
    if len({grids[m] for m in models}) > 1 or None in grids.values():
        listed = "; ".join(f"{m}: {grids[m] or 'not searched'}" for m in models)
        raise ConfigValueError(
            f"the learning rate must be searched on the same grid for every model ({hyper_dir}/<Model>.hyper): {listed}"
        )
    return models, spaces


def _claim_search_dir(search_dir: Path, spec: dict, resume: bool) -> None:
    """Refuse to mix searches: a new one needs fresh folders, a resumed one the stored spec."""
    spec_path = search_dir / SPEC_FILE
    if resume and spec_path.is_file():
        stored = json.loads(spec_path.read_text(encoding="utf-8"))
        current = json.loads(json.dumps(spec))  # the same json types as the stored one
        changed = sorted(key for key in set(stored) | set(current) if stored.get(key) != current.get(key))
        if changed:
            raise ConfigValueError(
                f"--resume: {spec_path} is of another search ({', '.join(changed)} differ); give the same options, "
                "or another --search_dir to start afresh"
            )
        return
    if not resume and spec_path.is_file():  # any earlier search there, of these models or others
        taken = sorted(p.name for p in search_dir.iterdir() if p.is_dir() and any(p.iterdir()))
        if taken:
            raise ConfigValueError(
                f"{search_dir} already holds the searches of {', '.join(taken)}: pass --resume to keep them, or "
                "another --search_dir"
            )
    search_dir.mkdir(parents=True, exist_ok=True)
    write_json(spec_path, spec)


def tune_model(settings: TuneSettings, model: str, space: tuple, shared: dict, output: Path) -> ModelTuning:
    """One model's search (new, continued or already finished) and its tuned file."""
    from recbole_cmi.tune.search import PLAN_FILE, SearchSettings, run_search

    hyper_file, points = space
    result = ModelTuning(model=model, hyper_file=hyper_file, points=points)
    plan_path = output / PLAN_FILE
    if plan_path.is_file():
        stored = json.loads(plan_path.read_text(encoding="utf-8")).get("hyper_text")
        if stored != hyper_file.read_text(encoding="utf-8"):
            raise ConfigValueError(f"--resume: {hyper_file} changed since the search in {output} started")
    finished = (output / SUMMARY_FILE).is_file()
    if not finished:
        search = SearchSettings(
            model=model,
            dataset=settings.dataset,
            params_file=str(hyper_file),
            config_files=list(settings.config_files),
            config_dict=dict(shared),
            num_samples=settings.trials,
            scheduler="asha",
            search="random",
            max_concurrent=settings.max_concurrent,
            cpus_per_trial=settings.cpus_per_trial,
            gpus_per_trial=settings.gpus_per_trial,
            address=settings.address,
            num_cpus=settings.num_cpus,
            output=str(output),
            resume=plan_path.is_file(),
            search_seed=settings.search_seed,
            grace_period=settings.grace,
            reduction_factor=settings.reduction_factor,
            verbose=settings.verbose,
        )
        start = time.perf_counter()
        try:
            outcome = run_search(search)
        except RecboleCmiError as err:  # every trial failed: the other models still run
            result.error = str(err)
        else:
            if outcome.unfinished:
                result.error = f"interrupted: {outcome.unfinished} trials unfinished; continue with --resume"
        _add_seconds(output, time.perf_counter() - start)
    result.wall_s = _read_json(output / SECONDS_FILE, {}).get("wall_s")
    result.stopping_step = _read_json(plan_path, {}).get("stopping_step")
    result.statuses = _trial_statuses(output / "trials.csv")
    trials_md = output / "trials.md"
    result.trials_md = trials_md.read_text(encoding="utf-8") if trials_md.is_file() else ""
    if result.error or not (output / SUMMARY_FILE).is_file():
        result.error = result.error or f"no best trial in {output}"
        return result
    result.best = _read_json(output / SUMMARY_FILE, None)
    folder = tuned_dir(settings.tuned_dir or DEFAULT_TUNED)  # where accuracy --tuned looks
    result.tuned_file = folder / settings.dataset / f"{model}.yaml"
    result.tuned_file.parent.mkdir(parents=True, exist_ok=True)
    write_text(result.tuned_file, tuned_yaml(settings, result, output))
    return result


def _add_seconds(output: Path, seconds: float) -> None:
    """Wall seconds of every invocation that searched (a resumed search adds to the first one's)."""
    if not output.is_dir():
        return
    total = _read_json(output / SECONDS_FILE, {}).get("wall_s") or 0.0
    write_json(output / SECONDS_FILE, {"wall_s": round(total + seconds, 1)})


def _read_json(path: Path, default):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def _trial_statuses(trials_csv: Path) -> dict:
    import csv

    counts: dict[str, int] = {}
    if trials_csv.is_file():
        with open(trials_csv, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts
