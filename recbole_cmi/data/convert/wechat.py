"""WeChat Channels (2021 WeChat Big Data Challenge) action log -> atomic files.

The input folder holds ``user_action.csv`` (userid, feedid, date_, device, read_comment, comment,
like, play, stay, click_avatar, forward, follow, favorite; ``play``/``stay`` in milliseconds) and,
optionally, ``feed_info.csv`` (feedid, authorid, videoplayseconds, description, ..., manual_tag_list,
machine_tag_list, ...). Only the columns a rule needs are required.

Positive rows (``--positive``):

* ``any`` (default): every row of the log, i.e. every feed the user was shown and played;
* ``explicit``: rows with read_comment, comment, like, click_avatar, forward, follow or favorite = 1;
* ``play``: rows with ``play / 1000 >= --min_play_ratio * videoplayseconds`` (default ratio 1.0,
  watched to the end); needs ``feed_info.csv``, and rows whose feed has no duration there are dropped.

Timestamps: the log has **day granularity only** (``date_`` is a day index). The written timestamp
is ``date_ * 86400 + r``, with ``r`` the row's position among the same user's rows of that day in
the file (0, 1, ...), counted over the whole log before the positive rule. Days are therefore real
and the order inside a day is the file's; seconds within a day carry no meaning.

Category: the first entry of ``manual_tag_list`` (tags separated by ``;``) in ``feed_info.csv``;
``other`` for feeds without manual tags or absent from it. Without ``feed_info.csv`` no ``.item``
file is written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_cmi.data.convert.common import SECONDS_PER_DAY, UNKNOWN_CATEGORY, ConversionResult, convert_folder
from recbole_cmi.data.convert.inputs import (
    line_of,
    read_table,
    require_file,
    require_finite,
    require_integers,
    require_present,
    token_problem,
)
from recbole_cmi.errors import ConfigValueError, DatasetError

DESCRIPTION = "WeChat Channels 2021 challenge: user_action.csv, optional feed_info.csv"
ACTION_FILE = "user_action.csv"
FEED_FILE = "feed_info.csv"
EXPLICIT_ACTIONS = ("read_comment", "comment", "like", "click_avatar", "forward", "follow", "favorite")
POSITIVE_RULES = ("any", "explicit", "play")
DEFAULT_MIN_PLAY_RATIO = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--positive", choices=POSITIVE_RULES, default="any", help="which rows are interactions")
    parser.add_argument(
        "--min_play_ratio",
        type=float,
        default=None,
        help=f"with --positive play: minimum play time / video length (default {DEFAULT_MIN_PLAY_RATIO})",
    )


def convert(
    input_dir,
    output,
    kcore: int = 5,
    positive: str = "any",
    min_play_ratio: float | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert ``user_action.csv`` (+ ``feed_info.csv``) in ``input_dir`` to ``<output>/<name>.inter`` (+ ``.item``)."""
    return convert_folder(
        read, input_dir, output, kcore, name, overwrite, positive=positive, min_play_ratio=min_play_ratio
    )


def read(input_dir: Path, positive: str, min_play_ratio: float | None):
    """The positive interactions, feed categories (or None) and notes of the log in ``input_dir``."""
    if positive not in POSITIVE_RULES:
        raise ConfigValueError(f"--positive must be one of {', '.join(POSITIVE_RULES)}, got {positive!r}")
    if min_play_ratio is not None and positive != "play":
        raise ConfigValueError("--min_play_ratio applies only to --positive play")
    if min_play_ratio is None:
        min_play_ratio = DEFAULT_MIN_PLAY_RATIO
    if not np.isfinite(min_play_ratio) or min_play_ratio < 0:
        raise ConfigValueError(f"--min_play_ratio must be a number >= 0, got {min_play_ratio}")
    actions_path = require_file(input_dir / ACTION_FILE, "WeChat action log")
    feeds_path = input_dir / FEED_FILE
    if positive == "play":
        require_file(feeds_path, f"{FEED_FILE} (--positive play needs each feed's videoplayseconds)")
    actions = read_actions(actions_path, positive)
    feeds = read_feeds(feeds_path, with_duration=positive == "play") if os.path.lexists(feeds_path) else None

    notes = [
        f"read {ACTION_FILE} ({len(actions):,} rows): day granularity only, so timestamp = date_ * 86400 + "
        "the row's position among the user's rows of that day"
    ]
    if positive == "explicit":
        keep = (actions[list(EXPLICIT_ACTIONS)] == 1).any(axis=1).to_numpy()
        notes.append(f"positive = any of {', '.join(EXPLICIT_ACTIONS)} is 1: {keep.sum():,} rows")
    elif positive == "play":
        feed_ids = actions["feedid"].cat
        duration = feeds["videoplayseconds"].reindex(feed_ids.categories).to_numpy()[feed_ids.codes.to_numpy()]
        known = ~np.isnan(duration)
        keep = known & (actions["play"].to_numpy() / 1000.0 >= min_play_ratio * np.nan_to_num(duration))
        notes.append(
            f"positive = play / 1000 >= {min_play_ratio:g} * videoplayseconds: {keep.sum():,} rows "
            f"({(~known).sum():,} rows dropped: feed without a duration in {FEED_FILE})"
        )
    else:
        keep = np.ones(len(actions), dtype=bool)
        notes.append("positive = every row")
    frame = actions.loc[keep, ["userid", "feedid", "timestamp"]].rename(
        columns={"userid": "user_id", "feedid": "item_id"}
    )

    categories = None
    if feeds is not None:
        categories = feeds["category"]
        notes.append(f"categories: first manual_tag_list entry of {FEED_FILE}, else '{UNKNOWN_CATEGORY}'")
    else:
        notes.append(f"no {FEED_FILE}: no categories, no .item file")
    return frame, categories, notes


def read_actions(path: Path, positive: str) -> pd.DataFrame:
    flags = {"any": (), "explicit": EXPLICIT_ACTIONS, "play": ()}[positive]
    numbers = ("date_",) + flags + (("play",) if positive == "play" else ())
    actions = read_table(path, ids=("userid", "feedid"), numbers=numbers)
    require_integers(path, actions, "date_", minimum=0)
    for column in flags:
        require_present(path, actions, column)
        bad = ~actions[column].isin((0, 1))
        if bad.any():
            value = actions[column].to_numpy()[np.flatnonzero(bad.to_numpy())[0]]
            raise DatasetError(
                f"{path}, line {line_of(actions, bad)}: column '{column}' must be 0 or 1, got {float(value)!r}"
            )
    if positive == "play":
        require_finite(path, actions, "play")
    position = actions.groupby(["userid", "date_"], sort=False, observed=True).cumcount().to_numpy()
    if position.max() >= SECONDS_PER_DAY:
        raise DatasetError(f"{path}: a user has {SECONDS_PER_DAY:,}+ rows on one day; timestamps would overlap days")
    actions["timestamp"] = actions["date_"].to_numpy() * SECONDS_PER_DAY + position
    return actions


def read_feeds(path: Path, with_duration: bool) -> pd.DataFrame:
    """feedid -> category (and videoplayseconds when asked), first row of a repeated feedid."""
    feeds = read_table(
        path, ids=("feedid",), numbers=("videoplayseconds",) if with_duration else (), texts=("manual_tag_list",)
    )
    first_tag = feeds["manual_tag_list"].str.split(";").str[0].str.strip()
    for tag in pd.unique(first_tag[first_tag != ""]):
        problem = token_problem(tag)
        if problem:
            raise DatasetError(
                f"{path}, line {line_of(feeds, first_tag == tag)}: manual_tag_list entry {tag!r}, which {problem}"
            )
    feeds["category"] = first_tag.where(first_tag != "", UNKNOWN_CATEGORY)
    if with_duration:
        valid = feeds["videoplayseconds"].dropna()
        if not np.isfinite(valid.to_numpy()).all() or (valid < 0).any():
            bad = ~np.isfinite(feeds["videoplayseconds"].fillna(0).to_numpy()) | (feeds["videoplayseconds"] < 0)
            raise DatasetError(
                f"{path}, line {line_of(feeds, bad)}: column 'videoplayseconds' must be a finite number >= 0"
            )
    feeds["feedid"] = feeds["feedid"].astype(str)
    return feeds.drop_duplicates("feedid", keep="first").set_index("feedid")
