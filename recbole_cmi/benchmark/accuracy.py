"""Accuracy benchmark: every model x seed under one shared config, each run in a fresh subprocess.

    python -m recbole_cmi.benchmark accuracy --dataset=micro_video \\
        --models=CMI,SASRec,GRU4Rec,ComiRecSA,ComiRecDR,CL4SRec --seeds=3 [--protocol=loo|multi_target] \\
        [--tuned[=DIR]] [--conventions=both|config] [--config_files="a.yaml b.yaml"] [--<key>=<value> ...] \\
        [--out=results/] [--resume]

* **One shared config.** Every run gets the same config dict: ``eval_protocol``, ``embedding_size`` and
  ``hidden_size`` (d = 64 unless given: models read one or the other), ``metrics``, ``topk``
  (10/20/50), ``valid_metric`` (NDCG@20 for ``loo``, the paper's Recall@50 for ``multi_target``),
  validation after every epoch, and every ``--<key>=<value>`` given (values parsed as Python
  literals, ``true``/``false`` as booleans, anything else as a string), on top of the config files.
  ``MAX_ITEM_LIST_LENGTH``, ``epochs`` and ``stopping_step`` come from the dataset yaml and
  ``properties/overall.yaml`` unless given. Model yaml files still set what is the model's own (its
  loss, its learning rate); the table lists the resolved values per model. Early stopping and the
  best checkpoint use the validation metric only; the test set is evaluated once per run.
* **Tuned values** (``--tuned``, ``--tuned=DIR``): every model runs with ``<DIR>/<dataset>/<Model>.yaml``
  (default DIR ``properties/tuned``, what ``python -m recbole_cmi.benchmark tune`` writes), given as the first
  config file, over its published defaults (``use_tuned_values: False`` drops the package's own tuned layer, so
  nothing else is mixed in); a model without that file stops the benchmark before any run. Without ``--tuned``
  the config layers apply as in every run (``properties/tuned/<dataset>/<Model>.yaml`` where it exists). Either
  way each row records the tuned file it ran with and its values, and the table lists them.
* **Convergence**: early stopping on the validation metric (``stopping_step``), ``epochs`` the cap. Each row
  records whether early stopping ended the run (``stopped_early``); the table flags the runs that reached the cap
  instead. Every validation is recorded with the training seconds so far (``valid_curve``: NDCG@20 and the
  validation metric), and ``<protocol>-curves.png`` draws validation NDCG@20 against training seconds, one seed
  per model.
* **Both ranking conventions** (``--conventions=both``, the default): the best checkpoint is evaluated on the test
  set as configured (``test_*``: the headline; ``history_excluded`` says which convention that is) and once more
  with the other convention (``alt_test_*``): history items excluded (the CMI authors' retrieval) or ranked
  (RecBole's default). Validation, early stopping and the checkpoint follow the configured one only, so the second
  number costs one test evaluation, not a training. ``--conventions=config`` skips it.
* **Variants** (``--models=CMI,CMI:cl_weight=0,label=CMI_noCL``): a model with its own config keys over the
  shared config is a row of its own, named by its label (its text without one); under ``--tuned`` it reads
  ``<DIR>/<dataset>/<label>.yaml``, so an ablation gets its own equal search.
* **Seeds** 2022, 2023, ...: ``--seeds=N`` runs N of them; all models run with one seed before the
  next seed starts, so a stopped benchmark has comparable numbers early.
* **Isolation.** A run is ``python -m recbole_cmi.benchmark accuracy --run_spec=<json>`` in its own
  folder under ``--work_dir`` (default: a new temporary folder), which holds its RecBole log and
  ``run.log`` (stdout and stderr); its checkpoints are deleted when it ends (``--keep_checkpoints`` keeps the best
  one of each finished run, ``saved/<Model>-<time>.pth``, for ``python -m recbole_cmi robustness --checkpoints``). A run that fails (an
  error, a crash, ``--run_timeout`` seconds exceeded) is recorded with a one-line error and the
  benchmark goes on.
* **Output.** After every run ``<out>/<dataset>/<protocol>.csv`` (one row per run), ``.md`` (per
  model mean ± sample std over seeds, epochs run, best epoch, runs at the epoch cap, training seconds
  per epoch, test evaluation seconds, peak memory; both ranking conventions; a paired t-test over seeds of
  CMI against each baseline (for each convention); the validation curves; the tuned values; the dataset's
  statistics, the command, the shared config, package versions, the machine) and ``.png`` (a chart
  of two test metrics; skipped where matplotlib is missing) and ``<protocol>-curves.png`` are rewritten
  atomically, so a killed
  benchmark keeps what finished. ``--resume`` skips the runs that finished in that csv (failed ones
  run again); the csv must come from the same shared config (its ``config_sha``), except for a higher
  ``--epochs``: then the runs that early stopping ended are kept and those that reached the old cap run
  again. With the same ``--work_dir``, a run that was interrupted continues from its last checkpoint
  (``progress.json`` and the ``-last`` checkpoint in its folder) rather than from epoch 0.
* **Measured in the run's process**: the seconds of every training epoch and validation, of the
  test-set evaluation, the peak resident set size (``ru_maxrss``) and, on a GPU,
  ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from recbole_cmi.benchmark import report
from recbole_cmi.cli import (
    OneLineArgumentParser,
    check_config_files,
    config_file_names,
    parse_with_config_values,
    run_cli,
)
from recbole_cmi.errors import ConfigValueError, RecboleCmiError
from recbole_cmi.files import plain, write_json
from recbole_cmi.machine import describe_environment
from recbole_cmi.memory import cuda_peak_mib, peak_rss_mib

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
RUN_LOG = "run.log"
PROGRESS_FILE = "progress.json"  # a run's epochs so far, rewritten at every validation (for --resume)
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


@dataclass(frozen=True)
class RunModel:
    """One ``--models`` entry: the model class, its settings over the shared config, and the label its rows carry."""

    label: str  # the csv's ``model`` column, the run folder, the tuned file's name under --tuned
    model: str  # the model class's name
    overrides: dict = field(default_factory=dict)  # the variant's own config keys (``Model:key=value``)
    text: str = ""  # the entry as written, for the table; "" for a plain model


@dataclass
class BenchmarkOutcome:
    rows: list[dict]
    csv_path: Path
    md_path: Path
    png_path: Path | None  # None where no chart was drawn (no finished run, no matplotlib)
    work_dir: Path
    curves_path: Path | None = None  # validation curves; None where none was drawn


# ---------------------------------------------------------------- command line


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m recbole_cmi benchmark accuracy",
        description="Every model x seed under one shared config; per-run csv and a markdown table.",
        allow_abbrev=False,
    )
    parser.add_argument("--dataset", "-d", help="dataset name (bundled, ./dataset/<name>, or under --data_path)")
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated model names or variants Model:key=value,key=value,label=Name (e.g. "
        "CMI,CMI:cl_weight=0,label=CMI_noCL); a variant's rows, folder and --tuned file carry its label",
    )
    parser.add_argument("--seeds", type=int, default=3, help=f"number of seeds: {FIRST_SEED}, {FIRST_SEED + 1}, ...")
    parser.add_argument("--protocol", default="loo", help="loo (RecBole leave-one-out) or multi_target (the paper's)")
    parser.add_argument("--config_files", nargs="*", default=None, help="yaml files shared by every run")
    parser.add_argument("--out", default="results", help="writes <out>/<dataset>/<protocol>.md, .csv and .png")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the runs that finished in the existing csv; with the same --work_dir, continue interrupted runs",
    )
    parser.add_argument("--run_timeout", type=float, default=None, help="seconds after which a run is stopped")
    parser.add_argument("--work_dir", default=None, help="folder for the runs' logs (default: a new temp folder)")
    parser.add_argument("--note", default="", help="a line shown at the top of the table")
    parser.add_argument(
        "--tuned",
        nargs="?",
        const=DEFAULT_TUNED,
        default=None,
        metavar="DIR",
        help="run every model with DIR/<dataset>/<Model>.yaml (default DIR: properties/tuned, written by "
        "`python -m recbole_cmi.benchmark tune`); a missing file stops the benchmark before any run",
    )
    parser.add_argument(
        "--conventions",
        default="both",
        help="both (default): also evaluate each run's best checkpoint on the test set with history items ranked "
        "if they were excluded, or excluded if they were ranked; config: only as configured",
    )
    parser.add_argument(
        "--keep_checkpoints",
        action="store_true",
        help="keep each run's best checkpoint in <work_dir>/<model>-seed<seed>/saved/ (for the robustness study)",
    )
    parser.add_argument("--run_spec", default=None, help=argparse.SUPPRESS)  # one run, in the subprocess
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, overrides = parse_with_config_values(parser, argv)
    if args.run_spec:
        return worker(args.run_spec)
    if not args.dataset:
        parser.error("--dataset is required")
    settings = BenchmarkSettings(
        dataset=args.dataset,
        models=[args.models],
        seeds=args.seeds,
        protocol=args.protocol,
        config_files=config_file_names(args.config_files),
        overrides=overrides,
        out=args.out,
        resume=args.resume,
        run_timeout=args.run_timeout,
        work_dir=args.work_dir,
        note=args.note,
        command=shlex.join(["python", "-m", "recbole_cmi.benchmark", "accuracy", *argv]),
        tuned=args.tuned,
        conventions=args.conventions,
        keep_checkpoints=args.keep_checkpoints,
    )

    def action():
        outcome = run_benchmark(settings)
        ok = sum(1 for row in outcome.rows if row.get("status") == "ok")
        chart = f"; chart: {outcome.png_path}" if outcome.png_path else ""
        chart += f"; validation curves: {outcome.curves_path}" if outcome.curves_path else ""
        print(f"{ok}/{len(outcome.rows)} runs finished; table: {outcome.md_path}; runs: {outcome.csv_path}{chart}")
        print(f"run logs: {outcome.work_dir}")

    return run_cli(action)


# ---------------------------------------------------------------- the benchmark


def run_benchmark(settings: BenchmarkSettings) -> BenchmarkOutcome:
    """Run every model x seed not finished yet, rewriting the csv and the table after each run."""
    variants = {variant.label: variant for variant in _check_settings(settings)}
    models = list(variants)
    shared = shared_config(settings)
    sha = config_sha(settings, shared)
    tuned = {label: tuned_source(settings, label, shared, variant.model) for label, variant in variants.items()}
    if settings.tuned:  # the shared config dict outranks config files: it would silently undo a tuned value
        clashes = [f"{key} ({model})" for model, source in tuned.items() for key in source[1] if key in shared]
        if clashes:
            raise ConfigValueError(
                f"--tuned: the shared config (the benchmark's d = 64 and the --key=value options) sets "
                f"{', '.join(clashes)}, which would override the tuned value; drop that option or that key"
            )
    out = Path(settings.out) / settings.dataset
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = (out / f"{settings.protocol}{suffix}" for suffix in (".csv", ".md", ".png"))
    curves_path = out / f"{settings.protocol}{report.CURVES_SUFFIX}"
    if settings.resume and not csv_path.is_file():
        # Earlier versions wrote <out>/<dataset>-<protocol>.csv: point at it rather than rerun silently.
        old = Path(settings.out) / f"{settings.dataset}-{settings.protocol}.csv"
        hint = f" ({old} is of the earlier layout: move it there to resume it)" if old.is_file() else ""
        print(f"--resume: no {csv_path} yet, every run starts{hint}")
    rows = _previous_rows(csv_path, settings, shared, tuned if settings.tuned else {}) if settings.resume else []
    done = {(row["model"], str(row["seed"])) for row in rows if row.get("status") == "ok"}
    seeds = [FIRST_SEED + i for i in range(settings.seeds)]
    plan = [(seed, model) for seed in seeds for model in models if (model, str(seed)) not in done]
    prefix = f"bench-{settings.dataset}-{settings.protocol}-"
    work_dir = Path(settings.work_dir) if settings.work_dir else Path(tempfile.mkdtemp(prefix=prefix))
    work_dir.mkdir(parents=True, exist_ok=True)
    meta = report_meta(settings, models, seeds, shared, csv_path)
    chart_notes = []  # why the chart was skipped, each said once (not after every run)
    curves = {"drawn": False}

    def publish(rows):
        report.write_runs(csv_path, rows)
        meta["dataset_stats"] = _dataset_stats(rows) or meta.get("dataset_stats")
        meta["written"] = _now()
        why, curves_why = report.write_report(md_path, rows, meta, png_path, curves_path)
        curves["drawn"] = curves_why is None
        for note in (why, curves_why):
            if note and note not in chart_notes:
                chart_notes.append(note)
                print(note, flush=True)
        return why is None

    if done:
        print(f"resuming: {len(done)} finished runs in {csv_path} are kept")
    charted = False
    for index, (seed, model) in enumerate(plan, 1):
        print(f"[{index}/{len(plan)}] {model} seed {seed} ...", flush=True)
        row = run_one(settings, variants[model], seed, shared, sha, work_dir, tuned[model])
        rows = [r for r in rows if not (r["model"] == model and str(r["seed"]) == str(seed))] + [row]
        charted = publish(rows)
        print(f"[{index}/{len(plan)}] {model} seed {seed}: {_progress_line(row)}", flush=True)
    if not plan:  # nothing left to run: refresh the table (and chart) from the csv
        charted = publish(rows)
    png = png_path if charted else None
    drawn = curves_path if curves["drawn"] else None
    return BenchmarkOutcome(rows, csv_path, md_path, png, work_dir, drawn)


def _check_settings(settings: BenchmarkSettings) -> list[RunModel]:
    if settings.protocol not in PROTOCOLS:
        raise ConfigValueError(f"--protocol={settings.protocol!r} (one of {', '.join(PROTOCOLS)})")
    if not isinstance(settings.seeds, int) or settings.seeds < 1:
        raise ConfigValueError(f"--seeds={settings.seeds!r} (an integer >= 1: the number of seeds)")
    if settings.run_timeout is not None and settings.run_timeout <= 0:
        raise ConfigValueError(f"--run_timeout={settings.run_timeout!r} (seconds > 0)")
    if settings.conventions not in CONVENTIONS:
        raise ConfigValueError(f"--conventions={settings.conventions!r} (one of {', '.join(CONVENTIONS)})")
    if settings.tuned and "use_tuned_values" in settings.overrides:
        raise ConfigValueError("--use_tuned_values is set by --tuned (False: only the --tuned file is layered)")
    for key in ("seed", "checkpoint_dir", "eval_protocol"):
        if key in settings.overrides:
            option = {"seed": "--seeds", "checkpoint_dir": "--work_dir", "eval_protocol": "--protocol"}[key]
            raise ConfigValueError(f"--{key} is set by the benchmark; use {option}")
    check_config_files(settings.config_files)
    variants = model_variants(settings.models)
    models = [variant.label for variant in variants]
    if settings.tuned:
        folder = tuned_dir(settings.tuned) / settings.dataset
        missing = [model for model in models if not (folder / f"{model}.yaml").is_file()]
        if missing:
            raise ConfigValueError(
                f"--tuned: no tuned file for {', '.join(missing)} in {folder} (write them with python -m "
                f"recbole_cmi.benchmark tune --dataset={settings.dataset} --models={','.join(missing)} ...)"
            )
    return variants


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
    key = {
        "dataset": settings.dataset,
        "protocol": settings.protocol,
        "config_files": [os.path.abspath(p) for p in settings.config_files],
        "shared": shared,
    }
    if settings.tuned:  # only then: csv files of earlier versions keep their sha
        key["tuned_dir"] = str(tuned_dir(settings.tuned))
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _previous_rows(csv_path: Path, settings: BenchmarkSettings, shared: dict, tuned: dict) -> list[dict]:
    """The csv's rows, if they ran the same shared config (and, under --tuned, the same tuned files as now).

    One difference is accepted: a higher ``--epochs`` than the rows had (the table flagged runs at the epoch cap and
    the cap went up). A run that early stopping ended is the same run under any higher cap, so it is kept (under
    this config's sha); a run that reached the old cap is dropped, so it runs again.
    """
    sha = config_sha(settings, shared)
    rows, raised = [], []
    for row in report.read_runs(csv_path):
        if row.get("config_sha") != sha and _lower_cap_of(row, settings, shared):
            if row.get("status") == "ok" and not report.hit_cap(row):
                row = {**row, "config_sha": sha}
            else:
                raised.append(f"{row['model']} seed {row['seed']}")
                continue
        rows.append(row)
    if raised:
        print(f"--resume: the epoch cap is now {shared['epochs']}; these runs reached the old cap (or failed) and run "
              f"again: {', '.join(raised)}", flush=True)  # fmt: skip
    other = sorted({row.get("config_sha", "") for row in rows} - {sha})
    if other:
        raise ConfigValueError(
            f"--resume: {csv_path} holds runs of another shared config (config_sha {', '.join(other)}, this one "
            f"{sha}); give the same options and config files, or run without --resume to start afresh"
        )
    changed = sorted(
        {
            row["model"]
            for row in rows
            if row["model"] in tuned and row.get("status") == "ok" and row.get("tuned_sha") != tuned[row["model"]][2]
        }
    )
    if changed:
        raise ConfigValueError(
            f"--resume: the tuned file of {', '.join(changed)} changed since its runs in {csv_path} (tuned_sha): "
            "their numbers are of other values; run without --resume to start afresh"
        )
    return rows


def _lower_cap_of(row: dict, settings: BenchmarkSettings, shared: dict) -> bool:
    """Whether ``row`` ran this very shared config but for a lower ``epochs`` (given as ``--epochs``)."""
    cap = report._number(row.get("epochs"))
    if not isinstance(shared.get("epochs"), int) or cap is None or not cap.is_integer() or cap >= shared["epochs"]:
        return False
    return row.get("config_sha") == config_sha(settings, {**shared, "epochs": int(cap)})


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
        from recbole_cmi.config import tuned_layer_path

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


def run_one(
    settings: BenchmarkSettings, model: RunModel | str, seed: int, shared: dict, sha: str, work_dir: Path, tuned=None
) -> dict:
    """One run in a subprocess; always returns a csv row (status ``ok`` or ``failed``).

    ``model``: a :class:`RunModel` (or a model name); ``tuned``: ``tuned_source``'s answer for it; under ``--tuned``
    its file is the run's first config file.
    """
    model = model if isinstance(model, RunModel) else RunModel(model, model)
    spec = prepare_run(settings, model, seed, shared, work_dir, tuned)
    run_dir = Path(spec["result"]).parent
    spec_path = run_dir / "spec.json"
    row = {"dataset": settings.dataset, "protocol": settings.protocol, "model": model.label, "seed": seed}
    if model.text:
        row["variant"] = model.text
    row["config_sha"] = sha
    if tuned:
        row["tuned_file"] = _display_path(tuned[0])
        row["tuned_values"] = json.dumps(plain(tuned[1]), separators=(", ", ": "))
        row["tuned_sha"] = tuned[2]
    command = [sys.executable, "-m", "recbole_cmi.benchmark", "accuracy", f"--run_spec={spec_path}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very recbole_cmi
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    log_path = run_dir / RUN_LOG
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            completed = subprocess.run(
                command, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=settings.run_timeout
            )
        returncode = completed.returncode
    except subprocess.TimeoutExpired:
        returncode = None
    elapsed = time.perf_counter() - start
    result = _read_result(spec["result"])
    if result is not None:
        row.update(result)
    elif returncode is None:
        row.update(status="failed", error=f"stopped after --run_timeout={settings.run_timeout:g} s")
    else:
        row.update(status="failed", error=f"exit status {returncode}: {_last_line(log_path)}")
    row.setdefault("total_s", round(elapsed, 1))
    _drop_checkpoints(run_dir / "saved", keep_best=settings.keep_checkpoints and row.get("status") == "ok")
    (run_dir / PROGRESS_FILE).unlink(missing_ok=True)  # ended (finished or failed): nothing to continue
    return row


def _drop_checkpoints(saved: Path, keep_best: bool) -> None:
    """Delete a finished run's checkpoints; with ``keep_best``, all but the best one (the ``-last`` one goes)."""
    if not keep_best:
        shutil.rmtree(saved, ignore_errors=True)
        return
    for path in saved.glob("*-last.pth"):  # recbole_cmi.trainer.last_checkpoint_path's name: resuming state only
        path.unlink(missing_ok=True)


def prepare_run(
    settings: BenchmarkSettings, model: RunModel | str, seed: int, shared: dict, work_dir: Path, tuned=None
) -> dict:
    """The run's folder and ``spec.json``; returns the spec.

    With ``--resume``, a folder left by an interrupted run of the same spec (its last checkpoint and
    ``progress.json``, the epochs' seconds and validations so far) is kept, and the run continues from that
    checkpoint (``recbole_cmi.trainer``: the same weights, optimizer and random states) instead of starting over.
    Otherwise the folder starts empty.
    """
    model = model if isinstance(model, RunModel) else RunModel(model, model)
    run_dir = work_dir / f"{_folder_name(model.label)}-seed{seed}"
    config_files = [os.path.abspath(p) for p in settings.config_files]
    if settings.tuned and tuned:
        config_files.insert(0, str(tuned[0]))  # the user's own config files still win
    config_dict = {**shared, **model.overrides, "seed": seed, "checkpoint_dir": str(run_dir / "saved")}
    spec = {
        "model": model.model,
        "dataset": settings.dataset,
        "config_files": config_files,
        "config_dict": config_dict,
        "result": str(run_dir / "result.json"),
        "conventions": settings.conventions,
        "progress": str(run_dir / PROGRESS_FILE),
    }
    last = _interrupted_checkpoint(run_dir, spec) if settings.resume else None
    if last is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
    else:
        spec["resume_from"] = str(last)
        Path(spec["result"]).unlink(missing_ok=True)  # a result must come from this attempt
        print(f"  continuing {model.label} seed {seed} from {last}", flush=True)
    write_json(run_dir / "spec.json", spec)
    return spec


def _folder_name(label: str) -> str:
    """A run folder's name for ``label`` (a variant's text may hold ``:``, ``=``, ``/``)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)


def _interrupted_checkpoint(run_dir: Path, spec: dict) -> Path | None:
    """The ``-last`` checkpoint an interrupted run of ``spec`` left in ``run_dir``; None if there is none to use."""
    from recbole_cmi.trainer import last_checkpoint_path

    earlier = _read_result(run_dir / "spec.json")
    same = earlier is not None and all(earlier.get(k) == spec[k] for k in ("model", "config_files", "config_dict"))
    if not same or not (run_dir / PROGRESS_FILE).is_file():
        return None
    best = [p for p in (run_dir / "saved").glob("*.pth") if not p.name.endswith("-last.pth")]
    lasts = [Path(last_checkpoint_path(p)) for p in best if Path(last_checkpoint_path(p)).is_file()]
    return lasts[0] if len(lasts) == 1 else None


def _display_path(path: Path) -> str:
    """``path`` relative to the working folder where it lies below it (tables name files portably), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_result(path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return "no output"
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else "no output"


def _progress_line(row: dict) -> str:
    if row.get("status") != "ok":
        return f"FAILED: {row.get('error')}"
    metric = str(row.get("valid_metric", "")).lower()
    test = row.get(f"{report.TEST_PREFIX}{metric}")
    return (
        f"ok in {row.get('total_s')} s ({row.get('epochs_run')} epochs, {row.get('train_s_per_epoch')} s/epoch "
        f"training, {row.get('eval_s')} s test evaluation, peak RSS {row.get('peak_rss_mib')} MiB; "
        f"test {metric} {test})"
    )


def _dataset_stats(rows: list[dict]) -> dict | None:
    for row in rows:
        if row.get("status") == "ok" and row.get("n_users") not in (None, ""):
            keys = ("n_users", "n_items", "n_interactions", "n_valid_users", "n_test_users")
            return {key: row.get(key) for key in keys}
    return None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 (datetime.UTC is 3.11+)


# ---------------------------------------------------------------- provenance


def report_meta(settings: BenchmarkSettings, models: list[str], seeds: list[int], shared: dict, csv_path) -> dict:
    protocol_text = PROTOCOLS[settings.protocol]["text"]
    if settings.protocol == "multi_target":
        from recbole_cmi.data.protocol import describe_split

        protocol_text = protocol_text.format(split=describe_split(shared))
    return {
        "title": f"{settings.dataset}: accuracy under protocol `{settings.protocol}`",
        "dataset": settings.dataset,
        "protocol": settings.protocol,
        "protocol_text": protocol_text,
        "models": models,
        "seeds": seeds,
        "shared_config": shared,
        "metrics": shared.get("metrics"),
        "config_files": list(settings.config_files),
        "command": settings.command or "(run from Python: recbole_cmi.benchmark.accuracy.run_benchmark)",
        "note": settings.note,
        **describe_environment(),
        "csv_name": Path(csv_path).name,
        "tuned": _display_path(tuned_dir(settings.tuned) / settings.dataset) if settings.tuned else None,
        "conventions": settings.conventions,
    }


# ---------------------------------------------------------------- one run (in the subprocess)


def worker(spec_path: str) -> int:
    """Train and test one model; write its csv row as json (also when it fails). Exit status 0 or 1."""
    from recbole_cmi.cli import quiet_recbole_warnings

    quiet_recbole_warnings()
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    try:
        row = train_and_test(spec)
    except Exception as err:  # recorded in the csv; the traceback goes to run.log
        traceback.print_exc()
        if isinstance(err, RecboleCmiError):
            message = str(err)
        else:
            first = (str(err).strip().splitlines() or [""])[0]
            message = f"{type(err).__name__}: {first}"
        write_json(Path(spec["result"]), {"status": "failed", "error": message[:500]})
        print(f"error: {message}", file=sys.stderr)
        return 1
    write_json(Path(spec["result"]), row)
    return 0


class RunRecorder:
    """The trainer's ``epoch_observer`` (:class:`recbole_cmi.trainer.EpochObserver`) in a benchmark run: the seconds
    of every training epoch and validation, the validation curve, and the best epoch by RecBole's early-stopping
    rule. With ``progress_path``, all of it is written there after every validation, before the epoch's
    checkpoints, so that a resumed run (:meth:`resume`) drops what they do not hold."""

    def __init__(self, config, progress_path=None):
        self.train_seconds, self.valid_seconds = [], []
        self.valid_metric = config["valid_metric"].lower()
        self.bigger = config["valid_metric_bigger"]
        self.curve = {"epoch": [], "train_s": [], report.CURVE_METRIC: []}
        if self.valid_metric != report.CURVE_METRIC:
            self.curve[self.valid_metric] = []
        self.best_score = self.best_epoch = None
        self.progress_path = progress_path

    def on_train_epoch(self, epoch_idx: int, seconds: float) -> None:
        self.train_seconds.append(seconds)

    def on_validation(self, epoch_idx: int, seconds: float, valid_score, valid_result) -> None:
        self.valid_seconds.append(seconds)
        self.curve["epoch"].append(len(self.train_seconds))
        self.curve["train_s"].append(round(sum(self.train_seconds), 3))  # training seconds so far (no validations)
        for key, values in self.curve.items():
            if key not in ("epoch", "train_s"):
                value = (valid_result or {}).get(key)
                values.append(None if value is None else float(value))
        if self.progress_path:
            progress = {"train_seconds": self.train_seconds, "valid_seconds": self.valid_seconds, "curve": self.curve}
            write_json(Path(self.progress_path), progress)
        self._track_best(epoch_idx, valid_score)

    def _track_best(self, epoch_idx: int, score) -> None:
        """RecBole's early_stopping rule: ties move the best epoch forward."""
        if self.best_score is None or (score >= self.best_score if self.bigger else score <= self.best_score):
            self.best_score, self.best_epoch = score, epoch_idx + 1  # 1-based, like epochs_run

    def resume(self, progress_path, epochs: int) -> None:
        """Take the first ``epochs`` epochs (those the resumed checkpoint holds) from an interrupted run's record."""
        with open(progress_path, encoding="utf-8") as f:
            progress = json.load(f)
        self.train_seconds += progress["train_seconds"][:epochs]
        self.valid_seconds += progress["valid_seconds"][:epochs]
        for key, values in self.curve.items():
            values += progress["curve"].get(key, [None] * epochs)[:epochs]
        scores = self.curve[self.valid_metric if self.valid_metric in self.curve else report.CURVE_METRIC]
        for epoch_idx, score in enumerate(scores):
            if score is not None:
                self._track_best(epoch_idx, score)


def train_and_test(spec: dict) -> dict:
    """``run_recbole_cmi``'s steps, with the epochs timed; returns the run's csv fields."""
    from recbole_cmi.quick_start import build_pipeline

    start = time.perf_counter()
    pipeline = build_pipeline(spec["model"], spec["dataset"], spec["config_files"] or None, spec["config_dict"])
    config, dataset, trainer = pipeline.config, pipeline.dataset, pipeline.trainer
    _, valid_data, test_data = pipeline.loaders
    recorder = RunRecorder(config, spec.get("progress"))
    train_seconds, valid_seconds = recorder.train_seconds, recorder.valid_seconds
    resumed_at = 0
    if spec.get("resume_from"):  # an interrupted run: its checkpoint and the epochs recorded up to it
        trainer.resume_checkpoint(spec["resume_from"])
        resumed_at = trainer.start_epoch  # epochs the checkpoint holds
        recorder.resume(spec["progress"], resumed_at)
    trainer.epoch_observer = recorder
    best_valid_score, _ = trainer.fit(pipeline.train_data, valid_data, saved=True, show_progress=False)
    tested = _evaluate_test(trainer, test_data, spec.get("conventions", "both") == "both")
    test_result, eval_seconds, excluded, alt_result, alt_seconds = tested
    row = {
        "status": "ok",
        "error": "",
        "valid_metric": config["valid_metric"],
        "best_valid_score": float(best_valid_score),
        "best_epoch": recorder.best_epoch,
        "epochs_run": len(train_seconds),
        "epochs": config["epochs"],
        "stopping_step": config["stopping_step"],
        # RecBole's rule: training stops once more than stopping_step validations in a row did not improve.
        "stopped_early": trainer.cur_step > config["stopping_step"],
        "resumed_at_epoch": resumed_at,
        "history_excluded": excluded,
        "train_s_per_epoch": round(sum(train_seconds) / len(train_seconds), 2) if train_seconds else None,
        "valid_s_per_epoch": round(sum(valid_seconds) / len(valid_seconds), 2) if valid_seconds else None,
        "eval_s": round(eval_seconds, 3),
        "alt_eval_s": None if alt_seconds is None else round(alt_seconds, 3),
        "peak_rss_mib": peak_rss_mib(),
        "cuda_peak_mib": cuda_peak_mib(config["device"]),
        "total_s": round(time.perf_counter() - start, 1),
        "device": str(config["device"]),
        "n_users": dataset.user_num - 1,  # id 0 is padding
        "n_items": dataset.item_num - 1,
        "n_interactions": _interaction_count(dataset),
        "n_valid_users": len(valid_data._dataset) if valid_data else 0,
        "n_test_users": len(test_data._dataset),
    }
    for key in report.RESOLVED_CONFIG_KEYS:
        row[key] = config[key]
    row["loadavg"] = _load_average()
    for key, value in (test_result or {}).items():
        row[f"{report.TEST_PREFIX}{key}"] = float(value)
    for key, value in (alt_result or {}).items():
        row[f"{report.ALT_PREFIX}{key}"] = float(value)
    row["valid_curve"] = json.dumps(recorder.curve, separators=(",", ":"))
    return row


def _evaluate_test(trainer, test_data, both: bool) -> tuple:
    """The best checkpoint's test result under the run's ranking convention and, with ``both``, the same weights'
    under the other one: ``(result, seconds, history excluded, other result, its seconds)`` (None, None without)."""
    from logging import getLogger

    eval_start = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    eval_seconds = time.perf_counter() - eval_start
    getLogger().info(f"test result: {test_result}")
    excluded = history_excluded(trainer, test_data)
    alt_result, alt_seconds = None, None
    if both:
        alt_start = time.perf_counter()
        with ranking_convention(trainer, test_data, exclude=not excluded):
            alt_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        alt_seconds = time.perf_counter() - alt_start
        getLogger().info(f"test result with history items {'ranked' if excluded else 'excluded'}: {alt_result}")
    return test_result, eval_seconds, excluded, alt_result, alt_seconds


def history_excluded(trainer, eval_data) -> bool:
    """Whether ``trainer.evaluate(eval_data)`` takes each user's history items out of the ranking now."""
    from recbole_cmi.data.protocol import MultiTargetEvalLoader

    if isinstance(eval_data, MultiTargetEvalLoader):  # the paper's protocol: excluded unless the loader says not
        return bool(eval_data.exclude_history)
    return bool(trainer.config["exclude_history_items"])  # loo: recbole_cmi.trainer.HistoryExclusionMixin


@contextlib.contextmanager
def ranking_convention(trainer, eval_data, exclude: bool):
    """Evaluate with history items excluded from (``exclude``) or ranked in the full sort, then restore the setting.

    Under ``loo`` this is the run's ``exclude_history_items``, which the trainer reads at every batch; under
    ``multi_target`` the evaluation loader's ``exclude_history``. The model's weights are not touched.
    """
    from recbole_cmi.data.protocol import MultiTargetEvalLoader

    if isinstance(eval_data, MultiTargetEvalLoader):
        before = eval_data.exclude_history
        eval_data.exclude_history = exclude
        try:
            yield
        finally:
            eval_data.exclude_history = before
        return
    before = trainer.config["exclude_history_items"]
    trainer.config["exclude_history_items"] = exclude
    try:
        yield
    finally:
        trainer.config["exclude_history_items"] = before


def _load_average() -> str:
    """The machine's 1/5/15-minute load averages when the run ended ('' where unknown): timings are wall-clock."""
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return ""


def _interaction_count(dataset) -> int:
    # A sequential dataset, once built, holds one row per interaction that has a history (every
    # interaction but each user's first); a general dataset one row per interaction.
    rows = dataset.inter_num
    if getattr(dataset, "item_list_length_field", None) in dataset.inter_feat:
        rows += dataset.user_num - 1
    return rows
