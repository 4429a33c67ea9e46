"""The benchmark's files: the per-run csv (the record), and the markdown table and chart made from it.

``<dataset>/<protocol>.csv`` holds one row per (model, seed) run, finished or failed;
``<dataset>/<protocol>.md`` is computed from those rows only: per model the mean ± sample standard
deviation (n - 1 in the denominator) over the seeds that finished, of every test metric, the
epochs run, the training seconds per epoch, the test evaluation seconds and the peak memory; a
paired t-test of CMI against each baseline over the seeds; the command, the shared config,
package versions and the machine. ``<protocol>.png`` charts two test metrics per model (only
where matplotlib is installed). All are rewritten atomically (temp file + rename) after every run.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recbole_cmi.tune.report import plain, write_atomic

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
]
TEST_PREFIX = "test_"
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
    epochs_capped: int = 0  # finished runs that stopped at the epoch cap


def metric_columns(rows: list[dict]) -> list[str]:
    """``test_*`` columns in order of first appearance."""
    seen = []
    for row in rows:
        for key in row:
            if key.startswith(TEST_PREFIX) and key not in seen:
                seen.append(key)
    return seen


def runs_csv(rows: list[dict]) -> str:
    columns = RUN_COLUMNS + metric_columns(rows)
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
    write_atomic(path, runs_csv(rows))


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
        summary.epochs_capped = sum(
            1
            for r in ok
            if _number(r.get("epochs")) is not None and _number(r.get("epochs_run")) == _number(r["epochs"])
        )
        summaries.append(summary)
    return summaries


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
    best = {}
    for key in keys:
        means = [s.metrics[key][0] for s in summaries if key in s.metrics]
        best[key] = max(means) if means else None
    cuda = any(s.cuda_peak is not None for s in summaries)  # a column only where a run used a GPU
    header = ["model", *(metric_label(k) for k in keys), "epochs run", "best epoch", "train s/epoch", "eval s"]
    header += ["peak RSS MiB", *(["peak CUDA MiB"] if cuda else []), "runs ok"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for s in summaries:
        cells = [s.model]
        for key in keys:
            text = format_mean_std(s.metrics.get(key))
            if key in s.metrics and best[key] is not None and s.metrics[key][0] == best[key] and len(summaries) > 1:
                text = f"**{text}**"
            cells.append(text)
        cells += [
            format_mean_std(s.epochs, 1),
            format_mean_std(s.best_epoch, 1),
            format_mean_std(s.train_s, 1),
            format_mean_std(s.eval_s, 2),
            format_mean_std(s.peak_rss, 0),
            *([format_mean_std(s.cuda_peak, 0)] if cuda else []),
            f"{s.ok}/{s.runs}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


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
        f"| baseline | metric | mean difference ({reference} − baseline) | n | p (two-sided) |",
        "|---|---|---:|---:|---|",
    ]
    for baseline in models:
        if baseline == reference:
            continue
        for key in keys:
            _, ours, theirs = paired_values(rows, reference, baseline, TEST_PREFIX + key)
            test = paired_t_test(ours, theirs)
            diff = "–" if test.mean_diff is None else f"{test.mean_diff:+.4f}"
            p = test.note if test.p_value is None else format_p(test.p_value)
            lines.append(f"| {baseline} | {metric_label(key)} | {diff} | {test.n} | {p} |")
    return lines


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
    path = Path(path)
    drawn = [s for s in summaries if any(key in s.metrics for key in keys)]
    if not keys or not drawn:
        return "no chart yet: no finished run"
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "no chart: matplotlib is not installed (pip install matplotlib to get one)"
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")  # same folder, so os.replace is atomic
    try:
        # Figure + the Agg canvas, not pyplot: no global backend or figure state in the caller's process.
        fig = Figure(figsize=(max(5.0, 1.2 * len(drawn) + 2), 3.6), layout="tight")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
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
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    except Exception as err:  # a chart is a convenience: the csv and the table are the record
        tmp.unlink(missing_ok=True)
        return f"no chart: {type(err).__name__}: {err}"
    return None


def _md_text(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_report(md_path: Path, rows: list[dict], meta: dict, chart_path: Path | None = None) -> str | None:
    """The chart (when ``chart_path`` is given) and then the markdown that shows it; returns why no chart."""
    why = None
    meta = dict(meta, chart_name=None)
    if chart_path is not None:
        summaries = summarize(rows, meta["models"])
        keys = chart_keys(ordered_metrics(summaries, meta.get("metrics"), _topk(meta)))
        why = write_chart(chart_path, summaries, keys, f"{meta['dataset']}, protocol {meta['protocol']}")
        if why is None:
            meta["chart_name"] = Path(chart_path).name  # relative: the png lies next to the md
    write_atomic(md_path, markdown(rows, meta))
    return why


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
        + (" (those runs may not have converged)." if capped else "."),
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
        lines += [
            "| dataset | users | items | interactions | valid users | test users |",
            "|---|---:|---:|---:|---:|---:|",
            f"| {meta['dataset']} | {stats.get('n_users', '')} | {stats.get('n_items', '')} | "
            f"{stats.get('n_interactions', '')} | {stats.get('n_valid_users', '')} | {stats.get('n_test_users', '')} |",
            "",
        ]
    lines += ["## Test results", ""]
    lines += results_table(summaries, meta.get("metrics"), topk) if summaries else ["No run has finished yet."]
    if meta.get("chart_name"):
        lines += ["", f"![chart]({meta['chart_name']})"]
    order = list(meta["models"]) + sorted({row["model"] for row in rows} - set(meta["models"]))
    keys = paired_keys(ordered_metrics(summaries, meta.get("metrics"), topk), shared.get("valid_metric"))
    paired = paired_section(rows, order, keys, shared.get("valid_metric"))
    if paired:
        lines += ["", *paired]
    failed = [row for row in rows if row.get("status") != "ok"]
    if failed:
        lines += ["", "## Failed runs", "", "| model | seed | error |", "|---|---:|---|"]
        lines += [f"| {r['model']} | {r['seed']} | {_md_text(r.get('error', ''))} |" for r in failed]
    resolved = _resolved_settings(rows)
    if resolved:
        lines += ["", "## Per-model settings (resolved, from the runs)", ""]
        lines += ["| model | learning_rate | loss_type | embedding_size | hidden_size | MAX_ITEM_LIST_LENGTH | "
                  "train_batch_size | device |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {model} | " + " | ".join(_md_text(v) for v in values) + " |" for model, values in resolved]
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
        "- packages: " + ", ".join(f"{name} {version}" for name, version in meta["versions"].items()),
        "- machine: " + "; ".join(f"{key}: {value}" for key, value in meta["machine"].items()),
        *_load_line(rows, meta["machine"].get("nproc")),
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


def _load_line(rows: list[dict], nproc) -> list[str]:
    loads = []
    for row in rows:
        parts = str(row.get("loadavg") or "").split()
        if row.get("status") == "ok" and len(parts) == 3 and _number(parts[2]) is not None:
            loads.append(float(parts[2]))
    if not loads:
        return []
    return [
        f"- load: the 15-minute load average when a run ended was {min(loads):.1f} to {max(loads):.1f} on {nproc} "
        "usable cores (timings are wall-clock: above the core count, other processes shared the CPU)"
    ]


def _resolved_settings(rows: list[dict]) -> list[tuple[str, list]]:
    keys = ["learning_rate", "loss_type", "embedding_size", "hidden_size", "MAX_ITEM_LIST_LENGTH",
            "train_batch_size", "device"]  # fmt: skip
    out, seen = [], set()
    for row in rows:
        if row.get("status") == "ok" and row["model"] not in seen:
            seen.add(row["model"])
            out.append((row["model"], [row.get(k, "") for k in keys]))
    return out
