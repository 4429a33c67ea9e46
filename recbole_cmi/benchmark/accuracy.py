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
  next seed starts, so a stopped benchmark has comparable numbers early. ``--only_seeds=2024`` runs only those
  of the N (one benchmark split over processes or machines: each writes its own ``--out``; the rows of their
  csv files, put in one csv, are published together by ``--resume`` with the full ``--seeds``).
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
  on. With the same ``--work_dir``, a run that was interrupted continues from its last checkpoint
  (``progress.json`` and the ``-last`` checkpoint in its folder) rather than from epoch 0; so does a run
  that reached the cap (its folder keeps them) when ``--epochs`` goes up: epochs old cap + 1, ... only.
* **Measured in the run's process**: the seconds of every training epoch and validation, of the
  test-set evaluation, the peak resident set size (``ru_maxrss``) and, on a GPU,
  ``torch.cuda.max_memory_allocated``.

Here: the command and the benchmark loop. The settings, shared config and tuned files are in
:mod:`~recbole_cmi.benchmark.accuracy_settings`; a run's folder, subprocess and ``--resume`` in
:mod:`~recbole_cmi.benchmark.accuracy_launch`; the run itself in :mod:`~recbole_cmi.benchmark.accuracy_worker`;
the csv, the table and the charts in :mod:`~recbole_cmi.benchmark.report`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from recbole_cmi.benchmark.accuracy_launch import previous_rows, run_one
from recbole_cmi.benchmark.accuracy_settings import (
    CONVENTIONS,
    DEFAULT_MODELS,
    DEFAULT_TUNED,
    FIRST_SEED,
    PROTOCOLS,
    BenchmarkSettings,
    RunModel,
    config_sha,
    display_path,
    model_variants,
    shared_config,
    tuned_dir,
    tuned_source,
    utc_stamp,
)
from recbole_cmi.benchmark.accuracy_worker import worker
from recbole_cmi.benchmark.report import write_report
from recbole_cmi.benchmark.report_charts import CURVES_SUFFIX
from recbole_cmi.benchmark.report_runs import TEST_PREFIX, write_runs
from recbole_cmi.cli import (
    OneLineArgumentParser,
    check_config_files,
    config_file_names,
    parse_with_config_values,
    run_cli,
)
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.machine import describe_environment


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
    parser.add_argument(
        "--only_seeds",
        default=None,
        help="comma-separated seeds among the --seeds ones to run in this process (default: all of them)",
    )
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
        only_seeds=_seed_list(parser, args.only_seeds),
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
    curves_path = out / f"{settings.protocol}{CURVES_SUFFIX}"
    if settings.resume and not csv_path.is_file():
        # Earlier versions wrote <out>/<dataset>-<protocol>.csv: point at it rather than rerun silently.
        old = Path(settings.out) / f"{settings.dataset}-{settings.protocol}.csv"
        hint = f" ({old} is of the earlier layout: move it there to resume it)" if old.is_file() else ""
        print(f"--resume: no {csv_path} yet, every run starts{hint}")
    rows = previous_rows(csv_path, settings, shared, tuned if settings.tuned else {}) if settings.resume else []
    done = {(row["model"], str(row["seed"])) for row in rows if row.get("status") == "ok"}
    seeds = [FIRST_SEED + i for i in range(settings.seeds)]
    running = seeds if settings.only_seeds is None else [seed for seed in seeds if seed in settings.only_seeds]
    plan = [(seed, model) for seed in running for model in models if (model, str(seed)) not in done]
    prefix = f"bench-{settings.dataset}-{settings.protocol}-"
    work_dir = Path(settings.work_dir) if settings.work_dir else Path(tempfile.mkdtemp(prefix=prefix))
    work_dir.mkdir(parents=True, exist_ok=True)
    meta = report_meta(settings, models, seeds, shared, csv_path)
    chart_notes = []  # why the chart was skipped, each said once (not after every run)
    curves = {"drawn": False}

    def publish(rows):
        write_runs(csv_path, rows)
        meta["dataset_stats"] = _dataset_stats(rows) or meta.get("dataset_stats")
        meta["written"] = utc_stamp()
        why, curves_why = write_report(md_path, rows, meta, png_path, curves_path)
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
    seeds = [FIRST_SEED + i for i in range(settings.seeds)]
    outside = [seed for seed in settings.only_seeds or () if seed not in seeds]
    if outside:
        raise ConfigValueError(
            f"--only_seeds={','.join(map(str, settings.only_seeds))}: {', '.join(map(str, outside))} not among the "
            f"--seeds={settings.seeds} seeds ({', '.join(map(str, seeds))})"
        )
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


def _seed_list(parser, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--only_seeds={text!r}: comma-separated integers, e.g. 2023,2024")
    if not seeds:
        parser.error(f"--only_seeds={text!r}: at least one seed")
    return seeds


def _progress_line(row: dict) -> str:
    if row.get("status") != "ok":
        return f"FAILED: {row.get('error')}"
    metric = str(row.get("valid_metric", "")).lower()
    test = row.get(f"{TEST_PREFIX}{metric}")
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


# ---------------------------------------------------------------- provenance


def report_meta(settings: BenchmarkSettings, models: list[str], seeds: list[int], shared: dict, csv_path) -> dict:
    protocol_text = PROTOCOLS[settings.protocol]["text"]
    if settings.protocol == "multi_target":
        from recbole_cmi.data.target_split import describe_split

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
        "tuned": display_path(tuned_dir(settings.tuned) / settings.dataset) if settings.tuned else None,
        "conventions": settings.conventions,
    }
