"""``python -m recbole_cmi benchmark authors-code``: our leave-one-out split as the CMI authors' input file.

The authors' code (github.com/libeibei95/CMI, ``model/data_iterator_cl.py``) reads ``<data>/pos_seqs_renbr.txt``,
one line per user and day: ``uid,day,item,item,...``. ``Data.read`` keeps the days of a fixed window (``wechat``
in the data folder's name: days 1..14, else days 20..29), ``TrainData`` trains on every day but the last two,
``TestData`` validates on the second-to-last day and tests on the last, with the earlier days as the history.
Ids must be >= 1 (0 is their padding; a user id of 0 would also break their reader) and a user's lines must be
consecutive.

The mapping (per user, interactions ordered by time, equal times in file order, as RecBole's sequential
augmentation orders them): the last item is alone on the window's last day (our leave-one-out test target), the
one before it alone on the day before (our validation target), and every earlier item, in order, on the day before
that (our training part). Their reader joins a user's days into one sequence in day order, so putting the whole
training part on one day loses nothing, and histories of any length fit the fixed window. Users with fewer than 3
interactions have no training item and are left out (5-core data has none). Users and items are numbered 1, 2, ...
in order of first appearance in the input (among the users kept); ``user_ids.tsv`` and ``item_ids.tsv`` map the
input ids to these numbers.

results/microlens/authors-code.md documents how their code was run on the result.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_cmi.cli import OneLineArgumentParser, run_cli
from recbole_cmi.data.atomic import read_atomic_file
from recbole_cmi.errors import ConfigValueError, DatasetError
from recbole_cmi.files import write_text
from recbole_cmi.paths import plain_name_problem

PROG = "python -m recbole_cmi benchmark authors-code"
FILE_NAME = "pos_seqs_renbr.txt"  # the name data_iterator_cl.Data reads
USER_MAP, ITEM_MAP = "user_ids.tsv", "item_ids.tsv"
COLUMNS = ("user_id", "item_id", "timestamp")
MIN_INTERACTIONS = 3  # a training item, the validation target and the test target
MIN_TRAIN_ITEMS = 4  # TrainData.reformat_posseqs keeps only training sequences of at least 4 items


def day_window(dataset_name: str) -> tuple[int, int]:
    """The first and last day ``data_iterator_cl.Data`` keeps for data read from ``../data/<dataset_name>_data``."""
    days, max_day = (14, 14) if "wechat" in dataset_name else (10, 29)
    return max_day - days + 1, max_day


def user_days(items: list[int], last_day: int) -> list[tuple[int, list[int]]]:
    """One user's time-ordered items (at least 3) as ``(day, items)`` lines: training, validation, test."""
    return [(last_day - 2, items[:-2]), (last_day - 1, items[-2:-1]), (last_day, items[-1:])]


@dataclasses.dataclass
class Conversion:
    lines: list[str]  # pos_seqs_renbr.txt, without line ends
    user_ids: list[str]  # input id of user 1, 2, ...
    item_ids: list[str]  # input id of item 1, 2, ...
    interactions: int  # written
    skipped_users: int  # fewer than MIN_INTERACTIONS interactions
    short_users: int  # kept, but with fewer than MIN_TRAIN_ITEMS training items
    first_day: int
    last_day: int

    def summary(self) -> str:
        return "\n".join(
            [
                f"{len(self.user_ids)} users, {len(self.item_ids)} items, {self.interactions} interactions; "
                f"days {self.last_day - 2} (training), {self.last_day - 1} (validation target), "
                f"{self.last_day} (test target) of their window {self.first_day}..{self.last_day}",
                f"left out: {self.skipped_users} users with fewer than {MIN_INTERACTIONS} interactions",
                f"their TrainData leaves out {self.short_users} users (fewer than {MIN_TRAIN_ITEMS} "
                "training items); their TestData still evaluates them",
            ]
        )


def convert(users, items, times, dataset_name: str = "wechat") -> Conversion:
    """The authors' lines for interactions given as three equal-length sequences (ids as strings, times numbers)."""
    first_day, last_day = day_window(dataset_name)
    users, items = np.asarray(users, dtype=object), np.asarray(items, dtype=object)
    times = np.asarray(times, dtype=float)
    user_codes, _ = pd.factorize(users, sort=False)
    counts = np.bincount(user_codes)
    keep = counts[user_codes] >= MIN_INTERACTIONS
    user_codes, user_ids = pd.factorize(users[keep], sort=False)  # 0, 1, ... in order of first appearance
    item_codes, item_ids = pd.factorize(items[keep], sort=False)
    order = np.lexsort((times[keep], user_codes))  # stable: equal times keep file order
    sorted_users, sorted_items = user_codes[order], item_codes[order] + 1
    starts = np.flatnonzero(np.r_[len(sorted_users) > 0, sorted_users[1:] != sorted_users[:-1]])
    ends = np.r_[starts[1:], len(sorted_users)]
    lines = []
    for start, end in zip(starts.tolist(), ends.tolist()):
        uid = int(sorted_users[start]) + 1
        for day, day_items in user_days(sorted_items[start:end].tolist(), last_day):
            lines.append(",".join(map(str, [uid, day, *day_items])))
    train_lengths = ends - starts - 2
    return Conversion(
        lines=lines,
        user_ids=[str(u) for u in user_ids],
        item_ids=[str(i) for i in item_ids],
        interactions=int(keep.sum()),
        skipped_users=int((counts < MIN_INTERACTIONS).sum()),
        short_users=int((train_lengths < MIN_TRAIN_ITEMS).sum()),
        first_day=first_day,
        last_day=last_day,
    )


def inter_file(path) -> str:
    """``path`` itself, or the one ``.inter`` file in the folder ``path``."""
    path = str(path)
    if not os.path.isdir(path):
        return path
    found = sorted(name for name in os.listdir(path) if name.endswith(".inter"))
    if len(found) != 1:
        what = "no .inter file" if not found else f"several .inter files ({', '.join(found)}): name one"
        raise DatasetError(f"{path} holds {what}")
    return os.path.join(path, found[0])


def read_inter(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User ids, item ids (strings) and times of a RecBole ``.inter`` file; a DatasetError names the file and line."""
    fields, frame = read_atomic_file(path)
    types = dict(fields)
    missing = [c for c in COLUMNS if c not in types]
    if missing:
        raise DatasetError(f"{path}, line 1: missing column(s) {', '.join(missing)}; the header has {', '.join(types)}")
    if types["timestamp"] != "float":
        raise DatasetError(f"{path}, line 1: column 'timestamp' must be of type float, got {types['timestamp']}")
    line_numbers = frame.attrs.get("line_numbers")
    for column in COLUMNS:
        empty = np.flatnonzero((frame[column] == "").to_numpy())
        if len(empty):
            row = int(empty[0])
            where = f"line {int(line_numbers[row])}" if line_numbers is not None else f"data row {row + 1}"
            raise DatasetError(f"{path}, {where}: empty value in column '{column}'")
    return frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), frame["timestamp"].astype(float).to_numpy()


def write(conversion: Conversion, output) -> list[Path]:
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigValueError(f"--output {output} is a file, not a folder")
    output.mkdir(parents=True, exist_ok=True)
    paths = [output / FILE_NAME, output / USER_MAP, output / ITEM_MAP]
    write_text(paths[0], "".join(line + "\n" for line in conversion.lines))
    maps = (
        (paths[1], conversion.user_ids, "user_id\tauthors_uid"),
        (paths[2], conversion.item_ids, "item_id\tauthors_item"),
    )
    for path, ids, header in maps:
        rows = [f"{original}\t{number}" for number, original in enumerate(ids, start=1)]
        write_text(path, "\n".join([header, *rows]) + "\n")
    return paths


def main(argv=None) -> int:
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--input", required=True, help="a RecBole .inter file, or a folder holding exactly one")
    parser.add_argument("--output", required=True, help=f"folder for {FILE_NAME}, {USER_MAP} and {ITEM_MAP}")
    parser.add_argument(
        "--dataset_name",
        default="wechat",
        help="the --dataset their run.py will be given (it reads ../data/<name>_data); a name holding 'wechat' "
        "means their 14-day window, any other their days 20..29 (default wechat)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    problem = plain_name_problem(args.dataset_name)
    if problem:
        parser.error(f"--dataset_name {args.dataset_name!r} {problem}")
    return run_cli(lambda: _convert(args))


def _convert(args) -> int:
    path = inter_file(args.input)
    conversion = convert(*read_inter(path), dataset_name=args.dataset_name)
    if not conversion.lines:
        raise DatasetError(f"{path}: no user has {MIN_INTERACTIONS} or more interactions")
    paths = write(conversion, args.output)
    print(conversion.summary())
    print(f"wrote {', '.join(map(str, paths))}")
    print(
        f"their run.py reads ../data/{args.dataset_name}_data/{FILE_NAME} (relative to model/): link "
        f"{args.output} there and run it with --dataset {args.dataset_name}"
    )
    return 0
