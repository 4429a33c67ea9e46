"""MicroLens (Ni et al., "A Content-Driven Micro-Video Recommendation Dataset at Scale") -> atomic files.

The input folder holds the files of one official MicroLens release (prefix ``MicroLens-50k``,
``MicroLens-100k``, ...); interactions are public comments of users on micro-videos.

* ``<prefix>_pairs.csv`` (header ``userID,videoID,timestamp``, or ``user,item,timestamp`` as the
  100k release spells it): real time, used whenever it is present. Timestamps are copied as
  given (the 100k release writes milliseconds).
* otherwise ``<prefix>_pairs.tsv``: one line per user, ``user_id<TAB>item item ...``, oldest
  first, no header and **no time**. The written timestamp is then the item's position in the
  user's sequence (0, 1, 2, ...): it keeps the order and nothing else, so it is not seconds
  (no days, no gaps) and time-based splits or protocols cannot be used on it.
* optionally ``<prefix>_titles.csv`` (or ``_title_en.csv``; header ``item,title``), for categories.

Category rule (titles usually end with ``# hashtag # hashtag``): a hashtag is the text after a
``#`` up to the next ``#`` or the end of the title, lowercased with everything that is not a
letter or digit removed, so ``# King Glory``, ``#kingglory`` and ``# king-glory!`` are one tag.
Tags that would read as a missing value (``nan``, ``null``) or as the unknown token ``other``
are ignored. A tag's frequency is the number of titled items that carry it. The ``--top_tags``
most frequent tags (ties by name) are the categories; an item's category is its most frequent
tag among them (ties by name), or ``other`` when it has none or no title. ``--top_tags 0``
writes no ``.item`` file.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from recbole_cmi.data.convert.common import UNKNOWN_CATEGORY, ConversionResult, convert_folder
from recbole_cmi.data.convert.inputs import (
    PANDAS_NA_STRINGS,
    first_line_not_utf8,
    pick_column,
    read_header,
    read_table,
    require_file,
    require_finite,
    token_problem,
)
from recbole_cmi.errors import ConfigValueError, DatasetError
from recbole_cmi.progress import step

DESCRIPTION = "MicroLens *_pairs.csv (real time) or *_pairs.tsv (order only), optional *_titles.csv"
USER_COLUMNS = ("userID", "user", "user_id")
ITEM_COLUMNS = ("videoID", "item", "item_id", "video_id")
TITLE_SUFFIXES = ("_titles.csv", "_title_en.csv")
NOT_A_TAG_LETTER = re.compile(r"[\W_]+")
IGNORED_TAGS = frozenset(t.lower() for t in PANDAS_NA_STRINGS) | {UNKNOWN_CATEGORY}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default=None, help="release prefix, e.g. MicroLens-50k (needed only if several)")
    parser.add_argument(
        "--top_tags", type=int, default=50, help="number of hashtags kept as categories (0: no .item file)"
    )


def convert(
    input_dir,
    output,
    kcore: int = 5,
    top_tags: int = 50,
    prefix: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert one MicroLens release in ``input_dir`` to ``<output>/<name>.inter`` (+ ``.item``)."""
    return convert_folder(read, input_dir, output, kcore, name, overwrite, top_tags=top_tags, prefix=prefix)


def read(input_dir: Path, top_tags: int, prefix: str | None):
    """The interactions, item categories (or None) and notes of the release in ``input_dir``."""
    if top_tags < 0:
        raise ConfigValueError(f"--top_tags must be >= 0, got {top_tags}")
    if prefix is not None and not prefix:
        raise ConfigValueError("--prefix is empty: give a release prefix such as MicroLens-50k")
    pairs, prefix = locate_pairs(input_dir, prefix)
    if pairs.suffix == ".csv":
        frame = read_pairs_csv(pairs)
        notes = [f"read {pairs.name}: timestamps copied from its 'timestamp' column"]
    else:
        frame = read_pairs_tsv(pairs)
        notes = [
            f"read {pairs.name}: it records order only, so timestamp = position of the item in the user's "
            "sequence (0, 1, 2, ...), not seconds"
        ]
    categories = None
    titles = next((p for p in (input_dir / (prefix + s) for s in TITLE_SUFFIXES) if os.path.lexists(p)), None)
    if top_tags == 0:
        notes.append("no categories (--top_tags 0)")
    elif titles is None:
        notes.append(f"no {prefix}_titles.csv: no categories, no .item file")
    else:
        categories = hashtag_categories(read_titles(titles), top_tags)
        notes.append(f"categories: the most frequent of the top {top_tags} hashtags of {titles.name}, else 'other'")
    return frame, categories, notes


def locate_pairs(input_dir: Path, prefix: str | None) -> tuple[Path, str]:
    """The pairs file to read (``.csv`` before ``.tsv``) and its release prefix."""
    pattern = f"{prefix}_pairs" if prefix else "*_pairs"
    found = sorted(input_dir.glob(pattern + ".csv")) + sorted(input_dir.glob(pattern + ".tsv"))
    if not found:
        wanted = f"{prefix}_pairs.csv or {prefix}_pairs.tsv" if prefix else "*_pairs.csv or *_pairs.tsv"
        raise DatasetError(f"missing MicroLens interactions: no {wanted} in {input_dir}")
    prefixes = sorted({p.name[: -len("_pairs.csv")] for p in found})
    if len(prefixes) > 1:
        raise DatasetError(
            f"{input_dir} holds several MicroLens releases ({', '.join(prefixes)}): choose one with --prefix"
        )
    return require_file(found[0], "MicroLens interactions"), prefixes[0]


def read_pairs_csv(path: Path) -> pd.DataFrame:
    header = read_header(path)
    user, item = pick_column(path, header, USER_COLUMNS), pick_column(path, header, ITEM_COLUMNS)
    frame = read_table(path, ids=(user, item), numbers=("timestamp",))
    require_finite(path, frame, "timestamp")
    return frame.rename(columns={user: "user_id", item: "item_id"})


def read_pairs_tsv(path: Path) -> pd.DataFrame:
    with step(f"reading {path.name}"):
        return _read_pairs_tsv(path)


def _read_pairs_tsv(path: Path) -> pd.DataFrame:
    users, items = [], []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                user, tab, rest = line.partition("\t")
                if not tab or not user:
                    raise DatasetError(
                        f"{path}, line {number}: expected 'user_id<TAB>item item ...', got {line[:60]!r}"
                    )
                line_items = rest.split()
                users.extend([user] * len(line_items))
                items.extend(line_items)
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}, line {first_line_not_utf8(path)}: not UTF-8 text ({err.reason})") from err
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from err
    if not items:
        raise DatasetError(f"{path} is empty: expected lines 'user_id<TAB>item item ...'")
    frame = pd.DataFrame({"user_id": users, "item_id": items})
    for column, label in (("user_id", "user id"), ("item_id", "item id")):
        for value in pd.unique(frame[column]):
            problem = token_problem(value)
            if problem:
                line = first_line_with(path, value, column == "user_id")
                raise DatasetError(f"{path}, line {line}: {label} {value!r}, which {problem}")
    # A user listed on several lines continues the same sequence.
    frame["timestamp"] = frame.groupby("user_id", sort=False).cumcount().astype(float)
    return frame


def first_line_with(path: Path, value: str, as_user: bool) -> int:
    """The first line of a pairs .tsv whose user (or one of whose items) is ``value`` (to name it in an error)."""
    number = 0
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            user, _, rest = line.rstrip("\r\n").partition("\t")
            if (user == value) if as_user else (value in rest.split()):
                return number
    return number


def read_titles(path: Path) -> pd.DataFrame:
    titles = read_table(path, ids=("item",), texts=("title",))
    return titles.drop_duplicates("item", keep="first")


def title_tags(title: str) -> set[str]:
    tags = {NOT_A_TAG_LETTER.sub("", part.lower()) for part in title.split("#")[1:]}
    return {t for t in tags if t and t not in IGNORED_TAGS}


def hashtag_categories(titles: pd.DataFrame, top_tags: int) -> pd.Series:
    """item -> category by the rule of the module docstring."""
    item_tags = [title_tags(title) for title in titles["title"].tolist()]
    frequency = Counter(tag for tags in item_tags for tag in tags)
    top = sorted(frequency.items(), key=lambda pair: (-pair[1], pair[0]))[:top_tags]
    rank = {tag: position for position, (tag, _) in enumerate(top)}
    categories = [min(tags & rank.keys(), key=rank.__getitem__, default=UNKNOWN_CATEGORY) for tags in item_tags]
    return pd.Series(categories, index=titles["item"].to_numpy(), name="category")
