"""The conversion steps every converter shares: deduplication, k-core filtering, writing, statistics.

A converter is a module with ``DESCRIPTION`` (one line for ``--help``), ``add_arguments(parser)``
(its own options; each option's ``dest`` is a keyword of its ``convert``), and
``convert(input_dir, output, kcore, <its options>, name, overwrite)``, which hands a ``read``
function to :func:`convert_folder`. That checks the shared options (``--output``, ``--name``,
``--kcore``, ``--overwrite``: :func:`~recbole_cmi.data.convert.inputs.target`) and the ``--input``
folder before any file is read (:mod:`recbole_cmi.data.convert.inputs`, which also reads and checks
the source files), then ``read(input_dir, **options)`` turns the source into one frame (columns
``user_id``, ``item_id``, ``timestamp``; ids as strings), an optional item -> category series and
notes, which :func:`finish`

1. orders each user's rows by time (users in order of first appearance; equal times keep file order),
2. drops repeated (user, item) pairs, keeping the first occurrence (the earliest one),
3. applies iterative k-core filtering on users and items (k <= 1 disables it),
4. writes ``<output>/<name>.inter`` and, when categories exist, ``<name>.item`` as RecBole atomic files,
5. returns statistics before and after filtering.

Where stderr is a terminal, the long steps (reading, ordering, filtering, writing) each print a line with their
seconds (:func:`recbole_cmi.progress.step`); elsewhere nothing is added to the output.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_cmi.data.convert.inputs import (
    MANIFEST,
    Target,
    files_we_wrote,
    require_dir,
    target,
    token_problem,
)
from recbole_cmi.errors import ConfigValueError, DatasetError
from recbole_cmi.files import write_text
from recbole_cmi.progress import step

UNKNOWN_CATEGORY = "other"
SECONDS_PER_DAY = 86_400
INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ITEM_HEADER = "item_id:token\tcategory:token"


@dataclasses.dataclass(frozen=True)
class Statistics:
    users: int
    items: int
    interactions: int
    density: float
    length_mean: float
    length_median: float
    length_max: int
    categories: int | None  # distinct categories among the items present; None without categories


@dataclasses.dataclass
class ConversionResult:
    name: str
    inter_path: Path
    item_path: Path | None
    notes: list[str]
    before: Statistics
    after: Statistics
    kcore: int

    def report(self) -> str:
        label = f"after {self.kcore}-core" if self.kcore > 1 else "written (no k-core)"
        lines = list(self.notes)
        lines.append(format_statistics([("before filtering", self.before), (label, self.after)]))
        written = str(self.inter_path) + (f" and {self.item_path}" if self.item_path else "")
        lines.append(f"wrote {written}")
        return "\n".join(lines)


def convert_folder(
    read, input_dir, output, kcore: int = 5, name: str | None = None, overwrite: bool = False, **options
) -> ConversionResult:
    """One conversion: check the shared options and ``--input``, ``read(input_dir, **options)``, then :func:`finish`.

    ``read`` checks its own options first and returns ``(frame, categories or None, notes)``.
    """
    where = target(output, name, kcore, overwrite)
    frame, categories, notes = read(require_dir(input_dir), **options)
    return finish(frame, categories, where, notes)


def order_and_dedup(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows by user (first appearance), then time, then file order; repeated (user, item) pairs keep the first."""
    user_rank = pd.factorize(frame["user_id"])[0]
    order = np.lexsort((np.arange(len(frame)), frame["timestamp"].to_numpy(), user_rank))
    ordered = frame.iloc[order]
    unique = ordered.drop_duplicates(["user_id", "item_id"], keep="first")
    return unique.reset_index(drop=True), len(ordered) - len(unique)


def kcore_filter(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Drop users and items with fewer than ``k`` interactions, repeatedly, until none is left (k <= 1: no-op)."""
    if k <= 1 or frame.empty:
        return frame
    users, user_index = pd.factorize(frame["user_id"])
    items, item_index = pd.factorize(frame["item_id"])
    keep = np.ones(len(frame), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=len(user_index))
        item_counts = np.bincount(items[keep], minlength=len(item_index))
        kept = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if kept.sum() == keep.sum():
            break
        keep = kept
    return frame[keep].reset_index(drop=True)


def distinct(values: pd.Series) -> np.ndarray:
    """The distinct values in order of first appearance, as plain strings (also for categoricals)."""
    return np.asarray(values.drop_duplicates(), dtype=object)


def statistics(frame: pd.DataFrame, categories: pd.Series | None) -> Statistics:
    lengths = frame.groupby("user_id", sort=False, observed=True).size().to_numpy()
    users, items, n = len(lengths), int(frame["item_id"].nunique()), len(frame)
    n_categories = None
    if categories is not None:
        present = categories.reindex(distinct(frame["item_id"])).fillna(UNKNOWN_CATEGORY)
        n_categories = int(present.nunique())
    return Statistics(
        users=users,
        items=items,
        interactions=n,
        density=n / (users * items) if users and items else 0.0,
        length_mean=float(lengths.mean()) if users else 0.0,
        length_median=float(np.median(lengths)) if users else 0.0,
        length_max=int(lengths.max()) if users else 0,
        categories=n_categories,
    )


def format_statistics(rows: list[tuple[str, Statistics]]) -> str:
    header = ["", "users", "items", "interactions", "density", "len mean", "median", "max", "categories"]
    table = [header]
    for label, s in rows:
        table.append(
            [
                label,
                f"{s.users:,}",
                f"{s.items:,}",
                f"{s.interactions:,}",
                f"{s.density:.4%}",
                f"{s.length_mean:.2f}",
                f"{s.length_median:g}",
                f"{s.length_max:,}",
                "-" if s.categories is None else f"{s.categories:,}",
            ]
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
        for row in table
    )


def format_timestamps(values: np.ndarray) -> list[str]:
    """Whole seconds without a trailing '.0', other values in Python's shortest exact form."""
    return [str(int(v)) if v.is_integer() else repr(v) for v in values.astype(float).tolist()]


def write_atomic(
    frame: pd.DataFrame, categories: pd.Series | None, output: Path, name: str
) -> tuple[Path, Path | None]:
    try:
        return _write_atomic(frame, categories, output, name)
    except OSError as err:  # checked up front (check_output), but a disk can fill or a folder change meanwhile
        where = err.filename or output
        raise DatasetError(f"--output {output}: cannot write {where} ({err.strerror or err})") from err


def _write_atomic(
    frame: pd.DataFrame, categories: pd.Series | None, output: Path, name: str
) -> tuple[Path, Path | None]:
    output.mkdir(parents=True, exist_ok=True)
    ours = files_we_wrote(output)
    inter_path = output / f"{name}.inter"
    lines = [INTER_HEADER]
    lines += [
        f"{u}\t{i}\t{t}"
        for u, i, t in zip(
            frame["user_id"].tolist(), frame["item_id"].tolist(), format_timestamps(frame["timestamp"].to_numpy())
        )
    ]
    if categories is None:
        stale = output / f"{name}.item"
        if stale.is_file() and stale.name not in ours:
            raise ConfigValueError(
                f"{stale} was not written by this converter and would no longer match the new items (this "
                f"conversion has no categories); move it away first: files we did not write are never deleted"
            )
        _write_lines(inter_path, lines)
        if stale.is_file():  # ours, from an earlier conversion: its categories would no longer match the items
            stale.unlink()
        _record(output, (ours | {inter_path.name}) - {stale.name})
        return inter_path, None
    _write_lines(inter_path, lines)
    item_path = output / f"{name}.item"
    items = distinct(frame["item_id"])
    item_categories = categories.reindex(items).fillna(UNKNOWN_CATEGORY)
    _write_lines(item_path, [ITEM_HEADER] + [f"{i}\t{c}" for i, c in zip(items.tolist(), item_categories.tolist())])
    _record(output, ours | {inter_path.name, item_path.name})
    return inter_path, item_path


def _record(output: Path, names: set[str]) -> None:
    _write_lines(output / MANIFEST, [json.dumps({"files": sorted(names)})])


def _write_lines(path: Path, lines: list[str]) -> None:
    # An interrupted run never leaves half a file behind.
    write_text(path, "\n".join(lines) + "\n")


def finish(frame: pd.DataFrame, categories: pd.Series | None, where: Target, notes: list[str]) -> ConversionResult:
    """Order, deduplicate, filter, write and measure one converted dataset (see the module docstring).

    Writes only ``<output>/<name>.inter``, ``.item`` and a manifest of what it wrote (``where``, from
    :func:`target`, has refused a folder that holds other files unless ``overwrite``); a file it did
    not write is never deleted.
    """
    if frame.empty:
        raise DatasetError("no interactions to convert (the input holds no positive interactions)")
    if categories is not None:
        for item, category in categories.drop_duplicates().items():
            problem = token_problem(category)
            if problem:
                raise DatasetError(f"category {category!r} (item {item}), which {problem}")
    frame = frame[["user_id", "item_id", "timestamp"]].astype({"user_id": "category", "item_id": "category"})
    with step("ordering and deduplicating"):
        frame, duplicates = order_and_dedup(frame)
    notes = notes + [f"dropped {duplicates:,} repeated (user, item) pairs, keeping each pair's first occurrence"]
    before = statistics(frame, categories)
    filtered = frame
    if where.kcore > 1:
        with step(f"{where.kcore}-core filtering"):
            filtered = kcore_filter(frame, where.kcore)
    if filtered.empty:
        raise DatasetError(
            f"no interactions left after {where.kcore}-core filtering of {before.interactions:,} interactions "
            f"({before.users:,} users, {before.items:,} items); use a smaller --kcore"
        )
    with step(f"writing {where.name}.inter" + (" and .item" if categories is not None else "")):
        inter_path, item_path = write_atomic(filtered, categories, where.output, where.name)
    return ConversionResult(
        name=where.name,
        inter_path=inter_path,
        item_path=item_path,
        notes=notes,
        before=before,
        after=statistics(filtered, categories),
        kcore=where.kcore,
    )
