"""The benchmark's files: the per-run csv (the record), and the markdown table and chart made from it.

``<dataset>/<protocol>.csv`` holds one row per (model, seed) run, finished or failed;
``<dataset>/<protocol>.md`` is computed from those rows only: per model the mean ± sample standard
deviation (n - 1 in the denominator) over the seeds that finished, of every test metric, the
epochs run, the best epoch, the runs that reached the epoch cap, the training seconds per epoch, the
test evaluation seconds and the peak memory; both ranking conventions (history items excluded or
ranked: ``test_*`` as configured, ``alt_test_*`` the other, from the same checkpoint); a paired
t-test of CMI against each baseline over the seeds; the validation curves (NDCG@20 against training
seconds, one seed per model); the tuned values each model ran with; the command, the shared config,
package versions and the machine. ``<protocol>.png`` charts two test metrics per model and
``<protocol>-curves.png`` the validation curves (only where matplotlib is installed). All are
rewritten atomically (temp file + rename) after every run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recbole_cmi.files import atomic_open, plain, write_text
from recbole_cmi.machine import machine_text, versions_text
from recbole_cmi.markdown import markdown_table

# Config values each run records as its config resolved them (model and dataset yaml included).
RESOLVED_CONFIG_KEYS = (
    "learning_rate",
    "embedding_size",
    "hidden_size",
    "MAX_ITEM_LIST_LENGTH",
    "train_batch_size",
    "exclude_history_items",
    "loss_type",
)
# Leading csv columns, in order; the test metrics (``test_recall@10``, ...) follow.
RUN_COLUMNS = [
    "dataset",
    "protocol",
    "model",
    "variant",
    "seed",
    "status",
    "error",
    "config_sha",
    "valid_metric",
    "best_valid_score",
    "best_epoch",
    "epochs_run",
    "epochs",
    "stopping_step",
    "train_s_per_epoch",
    "valid_s_per_epoch",
    "eval_s",
    "peak_rss_mib",
    "cuda_peak_mib",
    "total_s",
    "device",
    *RESOLVED_CONFIG_KEYS,
    "n_users",
    "n_items",
    "n_interactions",
    "n_valid_users",
    "n_test_users",
    "loadavg",
    "stopped_early",
    "resumed_at_epoch",
    "history_excluded",
    "alt_eval_s",
    "tuned_file",
    "tuned_values",
    "tuned_sha",
]
TRAILING_COLUMNS = ["valid_curve"]  # after the test metrics: long json cells
TEST_PREFIX = "test_"
ALT_PREFIX = "alt_test_"  # the test metrics of the same checkpoint under the other ranking convention
CURVE_METRIC = "ndcg@20"  # recorded at every validation and drawn against training seconds
CURVES_SUFFIX = "-curves.png"
CONVENTION_NAMES = {True: "history excluded", False: "history ranked"}
METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG", "hit": "Hit", "mrr": "MRR", "precision": "Precision"}
REFERENCE_MODEL = "CMI"  # the model the paired comparison tests against every other
MAIN_METRICS = ("recall@20", "ndcg@20")  # compared and charted when measured
NEED_PAIRS = "n/a (need ≥ 2 paired seeds)"
ZERO_SPREAD = 1e-12  # differences closer than this count as equal (float noise of a - b)


@dataclass
class ModelSummary:
    model: str
    runs: int  # finished or failed
    ok: int
    metrics: dict = field(default_factory=dict)  # metric -> (mean, std or None)
    epochs: tuple | None = None
    train_s: tuple | None = None
    eval_s: tuple | None = None  # seconds of the test-set evaluation
    peak_rss: tuple | None = None  # MiB
    cuda_peak: tuple | None = None  # MiB; None where no run used CUDA
    best_epoch: tuple | None = None
    epochs_capped: int = 0  # finished runs that reached the epoch cap before early stopping ended them


def metric_columns(rows: list[dict], prefix: str = TEST_PREFIX) -> list[str]:
    """``test_*`` (or other ``prefix``) columns in order of first appearance."""
    seen = []
    for row in rows:
        for key in row:
            if key.startswith(prefix) and key not in seen:
                seen.append(key)
    return seen


def runs_csv(rows: list[dict]) -> str:
    columns = RUN_COLUMNS + metric_columns(rows) + metric_columns(rows, ALT_PREFIX) + TRAILING_COLUMNS
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_cell(row.get(key)) for key in columns})
    return buffer.getvalue()


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def write_runs(path: Path, rows: list[dict]) -> None:
    write_text(path, runs_csv(rows))


def read_runs(path: Path) -> list[dict]:
    """The rows of a runs csv as dicts of strings (``[]`` if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return [dict(row) for row in csv.DictReader(f)]


def _number(value):
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def mean_std(values: list[float]) -> tuple[float, float | None] | None:
    """Mean and sample standard deviation (None for a single value); None for no values."""
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(rows: list[dict], models: list[str]) -> list[ModelSummary]:
    """Per model (``models`` first, in order, then any other model in ``rows``), over its finished runs."""
    order = list(models) + sorted({row["model"] for row in rows} - set(models))
    columns = metric_columns(rows)
    summaries = []
    for model in order:
        runs = [row for row in rows if row["model"] == model]
        if not runs:
            continue
        ok = [row for row in runs if row.get("status") == "ok"]
        summary = ModelSummary(model=model, runs=len(runs), ok=len(ok))
        for column in columns:
            values = [v for v in (_number(row.get(column)) for row in ok) if v is not None]
            if values:
                summary.metrics[column[len(TEST_PREFIX) :]] = mean_std(values)
        summary.epochs = _column_mean_std(ok, "epochs_run")
        summary.train_s = _column_mean_std(ok, "train_s_per_epoch")
        summary.eval_s = _column_mean_std(ok, "eval_s")
        summary.peak_rss = _column_mean_std(ok, "peak_rss_mib")
        summary.cuda_peak = _column_mean_std(ok, "cuda_peak_mib")
        summary.best_epoch = _column_mean_std(ok, "best_epoch")
        summary.epochs_capped = sum(1 for r in ok if hit_cap(r))
        summaries.append(summary)
    return summaries


def _flag(value) -> bool | None:
    """A boolean csv cell (``True``/``False``, any case) or value; None where it is empty or missing."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if value is not None else ""
    return {"true": True, "false": False}.get(text)


def hit_cap(row: dict) -> bool:
    """Whether a finished run trained all ``epochs`` without early stopping ending it (it may not have converged).

    Rows of earlier versions have no ``stopped_early``: there, reaching the cap is enough.
    """
    epochs, run = _number(row.get("epochs")), _number(row.get("epochs_run"))
    if epochs is None or run != epochs:
        return False
    return _flag(row.get("stopped_early")) is not True


def _column_mean_std(rows: list[dict], column: str) -> tuple | None:
    return mean_std([v for v in (_number(row.get(column)) for row in rows) if v is not None])


def metric_label(key: str) -> str:
    """``recall@10`` -> ``Recall@10``."""
    name, _, k = key.partition("@")
    return f"{METRIC_NAMES.get(name, name)}@{k}" if k else METRIC_NAMES.get(name, name)


def format_mean_std(value: tuple | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    mean, std = value
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def ordered_metrics(summaries: list[ModelSummary], metrics: list[str] | None, topk: list[int] | None) -> list[str]:
    """Table columns: ``metrics`` x ``topk`` in that order when given, then anything else measured."""
    measured = []
    for summary in summaries:
        measured += [key for key in summary.metrics if key not in measured]
    preferred = [f"{m.lower()}@{k}" for m in (metrics or []) for k in (topk or [])]
    return [key for key in preferred if key in measured] + [key for key in measured if key not in preferred]


def results_table(summaries: list[ModelSummary], metrics: list[str] | None, topk: list[int] | None) -> list[str]:
    """The markdown table: one row per model; the best mean of each metric in bold."""
    keys = ordered_metrics(summaries, metrics, topk)
    cuda = any(s.cuda_peak is not None for s in summaries)  # a column only where a run used a GPU
    header = ["model", *(metric_label(k) for k in keys), "epochs run", "best epoch", "at cap"]
    header += ["train s/epoch", "eval s"]
    header += ["peak RSS MiB", *(["peak CUDA MiB"] if cuda else []), "runs ok"]
    rows = []
    metric_cells = bold_best_cells(summaries, keys)
    for s in summaries:
        cells = [s.model, *metric_cells[s.model]]
        cells += [
            format_mean_std(s.epochs, 1),
            format_mean_std(s.best_epoch, 1),
            f"**{s.epochs_capped}/{s.ok} ⚠**" if s.epochs_capped else f"0/{s.ok}",
            format_mean_std(s.train_s, 1),
            format_mean_std(s.eval_s, 2),
            format_mean_std(s.peak_rss, 0),
            *([format_mean_std(s.cuda_peak, 0)] if cuda else []),
            f"{s.ok}/{s.runs}",
        ]
        rows.append(cells)
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1)).split("\n")


def bold_best_cells(summaries: list[ModelSummary], keys: list[str]) -> dict[str, list[str]]:
    """Per model, its ``mean ± std`` cell of every key; the best mean of each key in bold (with two models or more)."""
    best = {}
    for key in keys:
        means = [s.metrics[key][0] for s in summaries if key in s.metrics]
        best[key] = max(means) if means else None
    cells = {}
    for s in summaries:
        cells[s.model] = []
        for key in keys:
            text = format_mean_std(s.metrics.get(key))
            if key in s.metrics and best[key] is not None and s.metrics[key][0] == best[key] and len(summaries) > 1:
                text = f"**{text}**"
            cells[s.model].append(text)
    return cells


# ---------------------------------------------------------------- paired comparison


@dataclass
class PairedTest:
    n: int  # seeds where both runs finished
    mean_diff: float | None  # mean of reference - baseline; None without pairs
    p_value: float | None  # two-sided paired t-test; None where there is none (see note)
    note: str = ""  # why there is no p-value


def paired_values(rows: list[dict], reference: str, baseline: str, column: str) -> tuple[list, list, list]:
    """``(seeds, reference values, baseline values)`` over the seeds where both finished with a value."""

    def by_seed(model):
        values = {}
        for row in rows:
            value = _number(row.get(column))
            if row["model"] == model and row.get("status") == "ok" and value is not None:
                values[str(row["seed"])] = value  # a later row of the same run wins, as in the csv
        return values

    ours, theirs = by_seed(reference), by_seed(baseline)
    seeds = sorted(set(ours) & set(theirs), key=lambda seed: (_number(seed) is None, _number(seed) or 0, seed))
    return seeds, [ours[seed] for seed in seeds], [theirs[seed] for seed in seeds]


def paired_t_test(reference: list[float], baseline: list[float]) -> PairedTest:
    """Mean difference ``reference - baseline`` and the two-sided paired t-test p-value (pairs in order)."""
    if len(reference) != len(baseline):
        raise ValueError(f"paired values of unequal length: {len(reference)} and {len(baseline)}")
    diffs = [a - b for a, b in zip(reference, baseline)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else None
    if n < 2:
        return PairedTest(n, mean, None, NEED_PAIRS)
    if max(diffs) - min(diffs) <= ZERO_SPREAD:  # t = mean / 0: scipy would answer nan
        return PairedTest(n, mean, None, f"no p-value: all {n} differences are equal (zero variance)")
    from scipy.stats import ttest_rel  # scipy is a RecBole dependency; imported only when a table has pairs

    return PairedTest(n, mean, float(ttest_rel(reference, baseline).pvalue))


def paired_keys(measured: list[str], valid_metric: str | None) -> list[str]:
    """Metrics to compare: Recall@20 and NDCG@20 (else the first two measured), then the validation metric."""
    keys = [key for key in MAIN_METRICS if key in measured] or list(measured[:2])
    valid = str(valid_metric).lower() if valid_metric else None
    if valid in measured and valid not in keys:
        keys.append(valid)
    return keys


def reference_model(models: list[str]) -> str:
    """CMI where it was run, else the first model listed."""
    return REFERENCE_MODEL if REFERENCE_MODEL in models else models[0]


def format_p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def paired_section(rows: list[dict], models: list[str], keys: list[str], valid_metric: str | None) -> list[str]:
    """``## Paired comparison``: the reference model against every other, per metric, paired by seed."""
    if len(models) < 2 or not keys:
        return []
    reference = reference_model(models)
    heading = f"## Paired comparison ({reference} − baseline, paired by seed)"
    if reference != REFERENCE_MODEL:
        heading = (
            f"## Paired comparison ({reference} − baseline, paired by seed; {REFERENCE_MODEL} was not run, so the "
            f"first model listed, {reference}, is compared with the others)"
        )
    valid = str(valid_metric).lower() if valid_metric else None
    lines = [
        heading,
        "",
        f"Per baseline and test metric: the mean over seeds of {reference}'s value minus the baseline's, over the "
        "n seeds where both runs finished, and the two-sided paired t-test p-value (`scipy.stats.ttest_rel`, "
        "n − 1 degrees of freedom). With few seeds the test has little power: a large p-value is no evidence "
        "that the two are equal."
        + (f" {metric_label(valid)} is the validation metric (test values here)." if valid in keys else ""),
        "",
    ]
    cells = []
    for baseline in models:
        if baseline == reference:
            continue
        for key in keys:
            _, ours, theirs = paired_values(rows, reference, baseline, TEST_PREFIX + key)
            test = paired_t_test(ours, theirs)
            diff = "–" if test.mean_diff is None else f"{test.mean_diff:+.4f}"
            p = test.note if test.p_value is None else format_p(test.p_value)
            cells.append([baseline, metric_label(key), diff, test.n, p])
    header = ["baseline", "metric", f"mean difference ({reference} − baseline)", "n", "p (two-sided)"]
    return lines + markdown_table(header, cells, "llrrl").split("\n")


# ---------------------------------------------------------------- chart


def chart_keys(measured: list[str]) -> list[str]:
    """Recall@20 and NDCG@20 when measured, else the first two metrics measured."""
    keys = [key for key in MAIN_METRICS if key in measured]
    return keys if len(keys) == len(MAIN_METRICS) else list(measured[:2])


def write_chart(path: Path, summaries: list[ModelSummary], keys: list[str], title: str = "") -> str | None:
    """Grouped bars (mean, sample-std error bars) of ``keys`` per model, written atomically as a PNG.

    Returns None when it was written, else why not: no finished run, no matplotlib (it is optional),
    or an error while drawing; the chart never stops a benchmark.
    """
    drawn = [s for s in summaries if any(key in s.metrics for key in keys)]
    if not keys or not drawn:
        return "no chart yet: no finished run"

    def draw(ax):
        width = 0.8 / len(keys)
        for index, key in enumerate(keys):
            values = [s.metrics.get(key) for s in drawn]
            heights = [v[0] if v else math.nan for v in values]
            errors = [v[1] if v and v[1] is not None else 0.0 for v in values]
            positions = [i - 0.4 + width * (index + 0.5) for i in range(len(drawn))]
            ax.bar(positions, heights, width, yerr=errors, capsize=3, label=metric_label(key))
        ax.set_xticks(range(len(drawn)), [s.model for s in drawn], rotation=20 if len(drawn) > 4 else 0)
        ax.set_ylabel("test value (mean ± std over seeds)")
        if title:
            ax.set_title(title, fontsize="medium")
        ax.legend()

    return draw_png(path, (max(5.0, 1.2 * len(drawn) + 2), 3.6), draw)


def draw_png(path: Path, size: tuple[float, float], draw) -> str | None:
    """``draw(ax)`` on a new figure of ``size`` inches, written atomically to ``path`` as a 100-dpi PNG.

    Returns None when it was written, else why not (no matplotlib, which is optional, or an error while drawing).
    """
    path = Path(path)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "no chart: matplotlib is not installed (pip install matplotlib to get one)"
    try:
        # Figure + the Agg canvas, not pyplot: no global backend or figure state in the caller's process.
        fig = Figure(figsize=size, layout="tight")
        FigureCanvasAgg(fig)
        draw(fig.add_subplot())
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    except Exception as err:  # a chart is a convenience: the csv and the table are the record
        return f"no chart: {type(err).__name__}: {err}"
    return None


# ---------------------------------------------------------------- ranking conventions


CONVENTION_KEYS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50")


def excludes_history(row: dict) -> bool | None:
    """Whether a row's ``test_*`` ranked without the history items; its ``alt_test_*`` are the other convention.

    Rows of earlier versions have no ``history_excluded``: multi_target always excluded them, loo as configured.
    """
    flag = _flag(row.get("history_excluded"))
    if flag is not None:
        return flag
    if row.get("protocol") == "multi_target":
        return True
    return _flag(row.get("exclude_history_items"))


def convention_rows(rows: list[dict], exclude: bool) -> list[dict]:
    """Copies of ``rows`` whose ``test_*`` are the values under one convention (``exclude``: history items out of
    the ranking), taken from ``test_*`` or ``alt_test_*``; a run not evaluated that way has no ``test_*``."""
    out = []
    for row in rows:
        copy = {k: v for k, v in row.items() if not k.startswith((TEST_PREFIX, ALT_PREFIX))}
        headline = excludes_history(row)
        if headline is not None:
            prefix = TEST_PREFIX if headline == exclude else ALT_PREFIX
            copy.update({TEST_PREFIX + k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)})
        out.append(copy)
    return out


def conventions_section(rows: list[dict], models: list[str]) -> list[str]:
    """``## Both ranking conventions``: the main metrics with history items excluded and ranked (one checkpoint
    per run), and the paired comparison under each; empty where no run was evaluated both ways."""
    if not any(row.get(key) not in (None, "") for row in rows for key in row if key.startswith(ALT_PREFIX)):
        return []
    views = {flag: convention_rows(rows, flag) for flag in (True, False)}
    summaries = {flag: summarize(view, models) for flag, view in views.items()}
    measured = {key for flag in views for s in summaries[flag] for key in s.metrics}
    keys = [key for key in CONVENTION_KEYS if key in measured]
    if not keys:
        return []
    cells = {flag: bold_best_cells(summaries[flag], keys) for flag in views}
    headline = sorted({CONVENTION_NAMES[flag] for flag in map(excludes_history, rows) if flag is not None})
    header = [f"excl. {metric_label(k)}" for k in keys] + [f"ranked {metric_label(k)}" for k in keys]
    lines = [
        "## Both ranking conventions",
        "",
        "The best checkpoint of every run evaluated on the test set twice: **excl.** = history items excluded from "
        "the ranking (the CMI authors' retrieval; on data without repeats a recommended history item is always a "
        "miss), **ranked** = history items ranked like any other (RecBole's default for sequential models). "
        f"Validation, early stopping and the checkpoint followed the configured convention ({', '.join(headline)}: "
        "the main table above). Mean ± sample std over seeds; best mean per column in bold.",
        "",
    ]
    table = [[s.model, *cells[True][s.model], *cells[False][s.model]] for s in summaries[True]]
    lines += markdown_table(["model", *header], table, "l" + "r" * len(header)).split("\n")
    reference = reference_model([s.model for s in summaries[True]])
    baselines = [s.model for s in summaries[True] if s.model != reference]
    paired_metrics = [key for key in MAIN_METRICS if key in keys]
    if not baselines or not paired_metrics:
        return lines
    lines += [
        "",
        f"Paired by seed ({reference} − baseline; two-sided paired t-test, `scipy.stats.ttest_rel`):",
        "",
    ]
    table = []
    for baseline in baselines:
        for key in paired_metrics:
            cells_of_pair = []
            for flag in (True, False):
                _, ours, theirs = paired_values(views[flag], reference, baseline, TEST_PREFIX + key)
                test = paired_t_test(ours, theirs)
                diff = "–" if test.mean_diff is None else f"{test.mean_diff:+.4f}"
                cells_of_pair += [diff, str(test.n), test.note if test.p_value is None else format_p(test.p_value)]
            table.append([baseline, metric_label(key), *cells_of_pair])
    header = ["baseline", "metric", "excl.: mean difference", "n", "p", "ranked: mean difference", "n", "p"]
    return lines + markdown_table(header, table, "llrrlrrl").split("\n")


# ---------------------------------------------------------------- validation curves


def run_curve(row: dict) -> dict | None:
    """A row's ``valid_curve`` (``{"epoch": [...], "train_s": [...], "ndcg@20": [...], ...}``); None if absent."""
    value = row.get("valid_curve")
    if isinstance(value, str):
        try:
            value = json.loads(value) if value else None
        except ValueError:
            return None
    if not isinstance(value, dict) or not value.get("epoch") or not value.get("train_s"):
        return None
    return value


def curve_runs(rows: list[dict], models: list[str]) -> list[dict]:
    """One finished run with a validation curve per model: the lowest seed that every such model has, else each
    model's lowest; models in table order."""
    order = list(models) + sorted({row["model"] for row in rows} - set(models))
    runs = {}
    for row in rows:
        if row.get("status") == "ok" and run_curve(row) is not None and _number(row.get("seed")) is not None:
            runs.setdefault(row["model"], {})[int(_number(row["seed"]))] = row  # a later row of a run wins
    if not runs:
        return []
    common = set.intersection(*(set(seeds) for seeds in runs.values()))
    return [runs[m][min(common) if common else min(runs[m])] for m in order if m in runs]


def write_curves_chart(path: Path, picked: list[dict], title: str = "") -> str | None:
    """Validation NDCG@20 against training seconds, one line per run in ``picked``, the best epoch marked."""
    lines = []
    for row in picked:
        curve = run_curve(row)
        points = [(t, v) for t, v in zip(curve["train_s"], curve.get(CURVE_METRIC) or []) if v is not None]
        if points:
            best = _best_point(curve)
            lines.append((f"{row['model']} (seed {row['seed']})", points, best))
    if not lines:
        return f"no validation curves yet: no finished run recorded valid {metric_label(CURVE_METRIC)}"

    def draw(ax):
        for label, points, best in lines:
            (line,) = ax.plot([t for t, _ in points], [v for _, v in points], marker=".", label=label)
            if best is not None and best[2] is not None:
                ax.plot([best[1]], [best[2]], marker="o", markersize=9, fillstyle="none", color=line.get_color())
        ax.set_xlabel("training seconds (validation not counted)")
        ax.set_ylabel(f"validation {metric_label(CURVE_METRIC)}")
        if title:
            ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)

    return draw_png(path, (7.0, 4.2), draw)


def _best_point(curve: dict) -> tuple | None:
    """``(epoch, train_s, NDCG@20)`` at the validation that selected the checkpoint (the validation metric's best;
    ties go to the later epoch, as RecBole's early stopping); None without a validation metric."""
    scores = [key for key in curve if key not in ("epoch", "train_s")]
    metric = scores[-1] if scores else None  # the validation metric, listed last when it is not NDCG@20
    values = curve.get(metric) or []
    best = None
    for index, value in enumerate(values):
        if value is not None and (best is None or value >= values[best]):
            best = index
    if best is None:
        return None
    ndcg = (curve.get(CURVE_METRIC) or [None] * len(values))[best]
    return curve["epoch"][best], curve["train_s"][best], ndcg


def curves_section(rows: list[dict], models: list[str], image: str | None) -> list[str]:
    """``## Validation curves``: the chart and, per model, the run it draws: when it was best and how it ended."""
    picked = curve_runs(rows, models)
    if not picked:
        return []
    label = metric_label(CURVE_METRIC)
    lines = ["## Validation curves (one seed per model)", ""]
    if image:
        lines += [f"![validation curves]({image})", ""]
    lines += [
        f"Validation {label} after every epoch against the training seconds so far (validation not counted; "
        "wall-clock, so other processes on the machine slow a run down); the circle marks the best epoch, the "
        "checkpoint that was tested. Every run's curve is in the csv (`valid_curve`).",
        "",
    ]
    table = []
    for row in picked:
        curve = run_curve(row)
        best = _best_point(curve)
        ended = "**epoch cap ⚠**" if hit_cap(row) else "early stopping" if _flag(row.get("stopped_early")) else "–"
        at_best = "–" if best is None else f"{best[1]:.1f}"
        score = "–" if best is None or best[2] is None else f"{best[2]:.4f}"
        cells = [row["model"], row["seed"], row.get("epochs_run", ""), "–" if best is None else best[0], score]
        cells += [at_best, f"{curve['train_s'][-1]:.1f}", ended]
        table.append(cells)
    header = ["model", "seed", "epochs run", "best epoch", f"best valid {label}", "train s to best epoch"]
    header += ["train s in all", "ended by"]
    return lines + markdown_table(header, table, "lrrrrrrl").split("\n")


# ---------------------------------------------------------------- tuned values


def tuned_section(rows: list[dict], models: list[str], tuned: str | None) -> list[str]:
    """``## Tuned values``: per model the tuned file its runs read and the values in it (or its defaults)."""
    order = list(models) + sorted({row["model"] for row in rows} - set(models))
    finished = [row for row in rows if row.get("status") == "ok"]
    if not finished:
        return []
    if tuned:
        intro = (
            f"Every model ran with its file in `{tuned}` (`--tuned`: the values of the same validation search for "
            "every model, `python -m recbole_cmi.benchmark tune`; each file's header names that search) over its "
            "published defaults (`properties/model/<Model>.yaml`, RecBole's own for core models); the package's "
            "own tuned layer was off (`use_tuned_values: False`)."
        )
    else:
        intro = (
            "Runs read the package's tuned layer (`properties/tuned/<dataset>/<Model>.yaml`, each file's header "
            "names the search that produced it) where one exists; the other models ran their published defaults."
        )
    table = []
    for model in order:
        runs = [row for row in finished if row["model"] == model]
        variants: dict[tuple, int] = {}
        for row in runs:
            key = (row.get("tuned_file") or "", row.get("tuned_values") or "")
            variants[key] = variants.get(key, 0) + 1
        variant = next((row.get("variant") for row in runs if row.get("variant")), "")
        name = f"{model} (`{variant}`)" if variant and variant != model else model  # a variant's own settings
        for (path, values), count in variants.items():
            shown = _tuned_values_text(values) if path else "– (published defaults)"
            table.append([name, path or "–", shown, count])
    table_text = markdown_table(["model", "tuned file", "values", "runs"], table, "lllr")
    return ["## Tuned values", "", intro, "", *table_text.split("\n")]


def _tuned_values_text(values: str) -> str:
    try:
        mapping = json.loads(values) if values else {}
    except ValueError:
        return values
    if not isinstance(mapping, dict):
        return values
    return ", ".join(f"{key}: {value}" for key, value in mapping.items()) or "(empty file)"


def write_report(
    md_path: Path, rows: list[dict], meta: dict, chart_path: Path | None = None, curves_path: Path | None = None
) -> tuple[str | None, str | None]:
    """The charts (where their paths are given) and then the markdown that shows them.

    Returns why the test-metric chart and why the validation-curve chart were not drawn: None where it was drawn
    (or not asked for), ``""`` where no run had a validation curve to draw.
    """
    why = curves_why = None
    meta = dict(meta, chart_name=None, curves_name=None)
    title = f"{meta['dataset']}, protocol {meta['protocol']}"
    if chart_path is not None:
        summaries = summarize(rows, meta["models"])
        keys = chart_keys(ordered_metrics(summaries, meta.get("metrics"), _topk(meta)))
        why = write_chart(chart_path, summaries, keys, title)
        if why is None:
            meta["chart_name"] = Path(chart_path).name  # relative: the png lies next to the md
    picked = curve_runs(rows, meta["models"]) if curves_path is not None else []
    if picked:  # runs of earlier versions recorded no curve: then nothing is drawn, and nothing said
        curves_why = write_curves_chart(curves_path, picked, f"{title}: validation")
        if curves_why is None:
            meta["curves_name"] = Path(curves_path).name
    elif curves_path is not None:
        curves_why = ""
    write_text(md_path, markdown(rows, meta))
    return why, curves_why


def _topk(meta: dict) -> list | None:
    topk = meta["shared_config"].get("topk")
    return topk if isinstance(topk, list) else [topk] if topk else None


def finished_seeds(rows: list[dict]) -> dict[str, list[int]]:
    """Per model in ``rows`` (in order of appearance), the seeds of its finished runs."""
    seeds: dict[str, set[int]] = {}
    for row in rows:
        if row.get("status") == "ok":
            seeds.setdefault(row["model"], set()).add(int(row["seed"]))
    return {model: sorted(values) for model, values in seeds.items()}


def seeds_in_table(rows: list[dict], planned: list[int]) -> list[int]:
    """The seeds the table summarises: this invocation's, and those of finished runs kept from the csv
    (``--resume`` with other ``--seeds`` or ``--models`` than an earlier invocation keeps its runs in the table)."""
    return sorted(set(planned).union(*finished_seeds(rows).values()))


def uneven_seeds(rows: list[dict], planned: list[int]) -> str:
    """``" (CL4SRec: 2022 only)"``: the models whose finished seeds are not all of the table's, else ``""``."""
    every = seeds_in_table(rows, planned)
    fewer = [
        f"{model}: {', '.join(map(str, seeds))} only" for model, seeds in finished_seeds(rows).items() if seeds != every
    ]
    return f" ({'; '.join(fewer)})" if fewer else ""


def kept_runs(rows: list[dict], models: list[str], planned: list[int]) -> list[str]:
    """The finished runs in the table that this invocation's ``--models`` × ``--seeds`` does not cover, as
    ``"CL4SRec seed 2022"``: they come from an earlier invocation (``--resume``), whose command is not recorded."""
    return [
        f"{model} seed{'s' if len(outside) > 1 else ''} {', '.join(map(str, outside))}"
        for model, seeds in finished_seeds(rows).items()
        if (outside := [seed for seed in seeds if model not in models or seed not in planned])
    ]


def markdown(rows: list[dict], meta: dict) -> str:
    """The whole report; ``meta`` holds what the rows do not (see ``accuracy.report_meta``)."""
    shared = meta["shared_config"]
    summaries = summarize(rows, meta["models"])
    epochs = _setting(shared, rows, "epochs")
    stopping_step = _setting(shared, rows, "stopping_step")
    topk = _topk(meta)
    lines = [f"# {meta['title']}", ""]
    if meta.get("note"):
        lines += [f"> {meta['note']}", ""]
    capped = sum(s.epochs_capped for s in summaries)
    finished = sum(s.ok for s in summaries)
    protocol_text = meta["protocol_text"].replace(
        "{history}", _history_rule(_setting(shared, rows, "exclude_history_items"))
    )
    lines += [
        f"- **Protocol** ({meta['protocol']}): {protocol_text}",
        f"- **Training**: at most {epochs} epochs per run (epoch cap); validation after every epoch; early stopping "
        f"after {stopping_step} validations without improvement of valid "
        f"{shared.get('valid_metric')}; the test set is evaluated once, with the best validation checkpoint.",
        f"- **Epoch cap reached** by {capped} of {finished} finished runs"
        + (
            " (those runs may not have converged: flagged ⚠ in the `at cap` column; raise `--epochs` and run "
            "them again)."
            if capped
            else " (every run was ended by early stopping)."
            if finished
            else "."
        ),
        f"- **Seeds**: {', '.join(str(s) for s in seeds_in_table(rows, meta['seeds']))}"
        f"{uneven_seeds(rows, meta['seeds'])}; cells are "
        "mean ± sample standard deviation "
        "(n − 1) over the seeds that finished (a single value when one did); best mean per column in bold.",
        "- **Cost** (wall-clock, per run): train s/epoch is a training epoch; eval s the test-set evaluation "
        "(loading the best checkpoint, then ranking); peak RSS MiB the run's process at its largest (Python, "
        "torch, the dataset and the model together); peak CUDA MiB (shown only when a run used a GPU) "
        "`torch.cuda.max_memory_allocated`. The csv also has valid_s_per_epoch, a validation evaluation.",
        "",
    ]
    if meta.get("dataset_stats"):
        stats = meta["dataset_stats"]
        keys = ("n_users", "n_items", "n_interactions", "n_valid_users", "n_test_users")
        header = ["dataset", "users", "items", "interactions", "valid users", "test users"]
        lines += [markdown_table(header, [[meta["dataset"], *(stats.get(key, "") for key in keys)]], "lrrrrr"), ""]
    lines += ["## Test results", ""]
    lines += results_table(summaries, meta.get("metrics"), topk) if summaries else ["No run has finished yet."]
    if meta.get("chart_name"):
        lines += ["", f"![chart]({meta['chart_name']})"]
    order = list(meta["models"]) + sorted({row["model"] for row in rows} - set(meta["models"]))
    keys = paired_keys(ordered_metrics(summaries, meta.get("metrics"), topk), shared.get("valid_metric"))
    paired = paired_section(rows, order, keys, shared.get("valid_metric"))
    if paired:
        lines += ["", *paired]
    for section in (
        conventions_section(rows, order),
        curves_section(rows, order, meta.get("curves_name")),
        tuned_section(rows, order, meta.get("tuned")),
    ):
        if section:
            lines += ["", *section]
    failed = [row for row in rows if row.get("status") != "ok"]
    if failed:
        table = [[r["model"], r["seed"], r.get("error", "")] for r in failed]
        lines += ["", "## Failed runs", "", markdown_table(["model", "seed", "error"], table, "lrl")]
    resolved = _resolved_settings(rows)
    if resolved:
        lines += ["", "## Per-model settings (resolved, from the runs)", ""]
        lines.append(markdown_table(["model", *RESOLVED_TABLE_KEYS], [[model, *values] for model, values in resolved]))
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
    ]
    kept = kept_runs(rows, meta["models"], meta["seeds"])
    if kept:
        lines += [
            f"The table also keeps finished runs of the same shared config from earlier invocations (`--resume`), "
            f"outside this command's `--models` × `--seeds`: {'; '.join(kept)}. Rerun them with this command, "
            "`--models` and `--seeds` changed to cover them.",
            "",
        ]
    lines += [
        "Shared config (every model and seed; the seed varies):",
        "",
        "```yaml",
        yaml.safe_dump(plain(shared), sort_keys=False, default_flow_style=None).rstrip(),
        "```",
        "",
    ]
    if meta.get("config_files"):
        lines += ["Config files: " + ", ".join(f"`{p}`" for p in meta["config_files"]), ""]
    lines += [
        "## Environment",
        "",
        f"- packages: {versions_text(meta['versions'])}",
        f"- machine: {machine_text(meta['machine'])}",
        *_load_line(rows, meta["machine"].get("usable_cpus")),
        f"- written: {meta['written']}; per-run numbers: `{meta['csv_name']}`",
        "",
    ]
    return "\n".join(lines)


def _history_rule(exclude) -> str:
    """How the loo ranking treats the input history, from the runs' ``exclude_history_items``."""
    if str(exclude) == "True":
        return "except the items of the input history (`exclude_history_items: True`, as the CMI authors' retrieval)"
    if str(exclude) == "False":
        return "history items included, as RecBole does for sequential models (`exclude_history_items: False`)"
    return f"`exclude_history_items`: {exclude}"


def _setting(shared: dict, rows: list[dict], key: str):
    """A shared setting as given, else as the finished runs resolved it (``a / b`` when they differ)."""
    if key in shared:
        return shared[key]
    values = []
    for row in rows:
        value = row.get(key)
        if row.get("status") == "ok" and value not in (None, "") and str(value) not in values:
            values.append(str(value))
    return " / ".join(values) if values else "?"


def _load_line(rows: list[dict], usable_cpus) -> list[str]:
    loads = []
    for row in rows:
        parts = str(row.get("loadavg") or "").split()
        if row.get("status") == "ok" and len(parts) == 3 and _number(parts[2]) is not None:
            loads.append(float(parts[2]))
    if not loads:
        return []
    return [
        f"- load: the 15-minute load average when a run ended was {min(loads):.1f} to {max(loads):.1f} on "
        f"{usable_cpus} usable cores (timings are wall-clock: above the core count, other processes shared the CPU)"
    ]


RESOLVED_TABLE_KEYS = ("learning_rate", "loss_type", "embedding_size", "hidden_size", "MAX_ITEM_LIST_LENGTH",
                       "train_batch_size", "device")  # fmt: skip


def _resolved_settings(rows: list[dict]) -> list[tuple[str, list]]:
    out, seen = [], set()
    for row in rows:
        if row.get("status") == "ok" and row["model"] not in seen:
            seen.add(row["model"])
            out.append((row["model"], [row.get(k, "") for k in RESOLVED_TABLE_KEYS]))
    return out
