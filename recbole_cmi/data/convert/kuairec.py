"""KuaiRec (Gao et al., CIKM 2022) -> atomic files.

The input folder is the release's ``data/`` folder: ``big_matrix.csv`` or ``small_matrix.csv``
(``--matrix``; columns user_id, video_id, play_duration, video_duration, time, date, timestamp,
watch_ratio) and, optionally, ``item_categories.csv`` (video_id, feat as a list such as ``[8]`` or
``[27, 9]``).

* Positive rows: ``watch_ratio >= --min_watch_ratio`` (default 2.0, the usual threshold for KuaiRec:
  the video was watched about twice). Rows with an empty ``timestamp`` or ``watch_ratio`` cannot be
  placed or judged and are dropped (the count is printed); any other non-numeric value is an error.
* Timestamps: the ``timestamp`` column (Unix seconds with milliseconds), copied as given.
* Category: the first entry of ``feat``; ``other`` for ``[]`` or videos absent from ``item_categories.csv``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_cmi.data.convert.common import UNKNOWN_CATEGORY, ConversionResult, convert_folder
from recbole_cmi.data.convert.inputs import (
    line_of,
    read_table,
    require_file,
    token_problem,
)
from recbole_cmi.errors import ConfigValueError, DatasetError

DESCRIPTION = "KuaiRec big_matrix.csv / small_matrix.csv, optional item_categories.csv"
CATEGORY_FILE = "item_categories.csv"
MATRICES = ("big", "small")
DEFAULT_MIN_WATCH_RATIO = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matrix", choices=MATRICES, default="big", help="big_matrix.csv or small_matrix.csv")
    parser.add_argument(
        "--min_watch_ratio",
        type=float,
        default=DEFAULT_MIN_WATCH_RATIO,
        help=f"positive when watch_ratio >= this (default {DEFAULT_MIN_WATCH_RATIO})",
    )


def convert(
    input_dir,
    output,
    kcore: int = 5,
    matrix: str = "big",
    min_watch_ratio: float = DEFAULT_MIN_WATCH_RATIO,
    name: str | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert a KuaiRec matrix (+ ``item_categories.csv``) in ``input_dir`` to ``<output>/<name>.inter`` (+ ``.item``)."""
    return convert_folder(
        read, input_dir, output, kcore, name, overwrite, matrix=matrix, min_watch_ratio=min_watch_ratio
    )


def read(input_dir: Path, matrix: str, min_watch_ratio: float):
    """The positive interactions, video categories (or None) and notes of the KuaiRec ``data/`` folder."""
    if matrix not in MATRICES:
        raise ConfigValueError(f"--matrix must be one of {', '.join(MATRICES)}, got {matrix!r}")
    if not np.isfinite(min_watch_ratio):
        raise ConfigValueError(f"--min_watch_ratio must be a finite number, got {min_watch_ratio}")
    matrix_path = require_file(input_dir / f"{matrix}_matrix.csv", "KuaiRec interaction matrix")
    rows = read_table(matrix_path, ids=("user_id", "video_id"), numbers=("timestamp", "watch_ratio"))
    for column in ("timestamp", "watch_ratio"):
        values = rows[column].to_numpy()
        if np.isinf(values).any():
            raise DatasetError(
                f"{matrix_path}, line {line_of(rows, np.isinf(values))}: column '{column}' must be finite"
            )
    complete = rows["timestamp"].notna() & rows["watch_ratio"].notna()
    positive = complete & (rows["watch_ratio"] >= min_watch_ratio)
    notes = [
        f"read {matrix_path.name} ({len(rows):,} rows): timestamps copied from its 'timestamp' column; "
        f"{(~complete).sum():,} rows without timestamp or watch_ratio dropped",
        f"positive = watch_ratio >= {min_watch_ratio:g}: {positive.sum():,} rows",
    ]
    frame = rows.loc[positive, ["user_id", "video_id", "timestamp"]].rename(columns={"video_id": "item_id"})

    categories = None
    category_path = input_dir / CATEGORY_FILE
    if os.path.lexists(category_path):
        categories = read_categories(category_path)
        notes.append(f"categories: first feat entry of {CATEGORY_FILE}, else '{UNKNOWN_CATEGORY}'")
    else:
        notes.append(f"no {CATEGORY_FILE}: no categories, no .item file")
    return frame, categories, notes


def read_categories(path: Path) -> pd.Series:
    """video_id -> first feat entry (``other`` for ``[]``), first row of a repeated video_id."""
    table = read_table(path, ids=("video_id",), texts=("feat",))
    firsts = []
    for line, feat in enumerate(table["feat"].tolist(), start=2):
        text = feat.strip()
        if not (text.startswith("[") and text.endswith("]")):
            raise DatasetError(
                f"{path}, line {line}: column 'feat' must be a list such as [8] or [27, 9], got {feat!r}"
            )
        first = text[1:-1].split(",")[0].strip().strip("'\"")
        problem = token_problem(first) if first else None
        if problem:
            raise DatasetError(f"{path}, line {line}: feat entry {first!r}, which {problem}")
        firsts.append(first or UNKNOWN_CATEGORY)
    categories = pd.Series(firsts, index=table["video_id"].to_numpy(), name="category")
    return categories[~categories.index.duplicated(keep="first")]
