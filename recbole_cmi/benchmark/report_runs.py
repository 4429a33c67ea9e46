"""The accuracy benchmark's record: ``<dataset>/<protocol>.csv``, one row per (model, seed) run, finished or failed.

The columns (``RUN_COLUMNS``, then the test metrics ``test_*`` and ``alt_test_*``, then the validation curve), the
csv's writing and reading, and how its cells read back: numbers, flags, whether a run reached the epoch cap, which
ranking convention its ``test_*`` are, its validation curve. The accuracy benchmark's run writes the row
(:mod:`recbole_cmi.benchmark.accuracy_worker`); the tables and charts are computed from these rows only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from recbole_cmi.files import write_text

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
    "tuned_header",
]

TRAILING_COLUMNS = ["valid_curve"]  # after the test metrics: long json cells
TEST_PREFIX = "test_"
ALT_PREFIX = "alt_test_"  # the test metrics of the same checkpoint under the other ranking convention
CURVE_METRIC = "ndcg@20"  # recorded at every validation and drawn against training seconds
METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG", "hit": "Hit", "mrr": "MRR", "precision": "Precision"}


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


def cell_number(value):
    """A csv cell (or value) as a finite float; None where it is empty, not a number, or not finite."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def cell_flag(value) -> bool | None:
    """A boolean csv cell (``True``/``False``, any case) or value; None where it is empty or missing."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if value is not None else ""
    return {"true": True, "false": False}.get(text)


def hit_cap(row: dict) -> bool:
    """Whether a finished run trained all ``epochs`` without early stopping ending it (it may not have converged).

    Rows of earlier versions have no ``stopped_early``: there, reaching the cap is enough.
    """
    epochs, run = cell_number(row.get("epochs")), cell_number(row.get("epochs_run"))
    if epochs is None or run != epochs:
        return False
    return cell_flag(row.get("stopped_early")) is not True


def metric_label(key: str) -> str:
    """``recall@10`` -> ``Recall@10``."""
    name, _, k = key.partition("@")
    return f"{METRIC_NAMES.get(name, name)}@{k}" if k else METRIC_NAMES.get(name, name)


def excludes_history(row: dict) -> bool | None:
    """Whether a row's ``test_*`` ranked without the history items; its ``alt_test_*`` are the other convention.

    Rows of earlier versions have no ``history_excluded``: multi_target always excluded them, loo as configured.
    """
    flag = cell_flag(row.get("history_excluded"))
    if flag is not None:
        return flag
    if row.get("protocol") == "multi_target":
        return True
    return cell_flag(row.get("exclude_history_items"))


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


def best_point(curve: dict) -> tuple | None:
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
