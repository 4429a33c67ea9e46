"""The benchmark's two files: the per-run csv (the record) and the markdown table made from it.

``<dataset>-<protocol>.csv`` holds one row per (model, seed) run, finished or failed;
``<dataset>-<protocol>.md`` is computed from those rows only: per model the mean ± sample standard
deviation (n - 1 in the denominator) over the seeds that finished, of every test metric, the
epochs run and the training seconds per epoch, plus the command, the shared config, package
versions and the machine. Both are rewritten atomically (temp file + rename) after every run.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recbole_cmi.tune.report import plain, write_atomic

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
    "total_s",
    "device",
    "learning_rate",
    "embedding_size",
    "hidden_size",
    "MAX_ITEM_LIST_LENGTH",
    "train_batch_size",
    "loss_type",
    "n_users",
    "n_items",
    "n_interactions",
    "n_valid_users",
    "n_test_users",
    "loadavg",
]
TEST_PREFIX = "test_"
METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG", "hit": "Hit", "mrr": "MRR", "precision": "Precision"}


@dataclass
class ModelSummary:
    model: str
    runs: int  # finished or failed
    ok: int
    metrics: dict = field(default_factory=dict)  # metric -> (mean, std or None)
    epochs: tuple | None = None
    train_s: tuple | None = None
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
        summary.epochs = mean_std([v for v in (_number(r.get("epochs_run")) for r in ok) if v is not None])
        summary.train_s = mean_std([v for v in (_number(r.get("train_s_per_epoch")) for r in ok) if v is not None])
        summary.best_epoch = mean_std([v for v in (_number(r.get("best_epoch")) for r in ok) if v is not None])
        summary.epochs_capped = sum(
            1
            for r in ok
            if _number(r.get("epochs")) is not None and _number(r.get("epochs_run")) == _number(r["epochs"])
        )
        summaries.append(summary)
    return summaries


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
    header = ["model", *(metric_label(k) for k in keys), "epochs run", "best epoch", "train s/epoch", "runs ok"]
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
            f"{s.ok}/{s.runs}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md_text(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict], meta: dict) -> str:
    """The whole report; ``meta`` holds what the rows do not (see ``accuracy.report_meta``)."""
    shared = meta["shared_config"]
    summaries = summarize(rows, meta["models"])
    epochs = _setting(shared, rows, "epochs")
    stopping_step = _setting(shared, rows, "stopping_step")
    topk = shared.get("topk")
    topk = topk if isinstance(topk, list) else [topk] if topk else None
    lines = [f"# {meta['title']}", ""]
    if meta.get("note"):
        lines += [f"> {meta['note']}", ""]
    capped = sum(s.epochs_capped for s in summaries)
    finished = sum(s.ok for s in summaries)
    lines += [
        f"- **Protocol** ({meta['protocol']}): {meta['protocol_text']}",
        f"- **Training**: at most {epochs} epochs per run (epoch cap); validation after every epoch; early stopping "
        f"after {stopping_step} validations without improvement of valid "
        f"{shared.get('valid_metric')}; the test set is evaluated once, with the best validation checkpoint.",
        f"- **Epoch cap reached** by {capped} of {finished} finished runs"
        + (" (those runs may not have converged)." if capped else "."),
        f"- **Seeds**: {', '.join(str(s) for s in meta['seeds'])}; cells are mean ± sample standard deviation "
        "(n − 1) over the seeds that finished (a single value when one did); best mean per column in bold.",
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
