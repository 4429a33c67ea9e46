"""The periods and target sets of ``eval_protocol: multi_target`` (:mod:`recbole_cmi.data.protocol`).

:func:`period_labels` puts each interaction in the training, validation or test period by the rule of
``multi_target_split`` (:func:`split_settings`, :func:`describe_split`); :func:`build_split` turns the labels into
a :class:`TargetSplit`, per evaluated user the history before a period and the deduplicated new items in it; and
:func:`history_lists` lays the histories out as RecBole's ``item_id_list`` tensors. The protocol module's docstring
gives the rules (docs/cmi.md §4.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recbole_cmi.errors import ConfigValueError, DatasetError

SPLITS = ("day", "user_day", "last_n", "last_fraction")
SPLIT_DEFAULTS = {"multi_target_split": "day", "multi_target_n": 5, "multi_target_fraction": 0.2}
SECONDS_PER_DAY = 86_400
TRAIN, VALID, TEST = 0, 1, 2


def setting(config, key, default=None):
    """``config[key]`` for a RecBole Config (None when missing) or a plain dict."""
    value = config.get(key) if isinstance(config, dict) else config[key]
    return default if value is None else value


def split_settings(config) -> dict:
    """The validated ``multi_target_*`` settings, defaults filled in."""
    settings = {key: setting(config, key, default) for key, default in SPLIT_DEFAULTS.items()}
    split, n, fraction = settings["multi_target_split"], settings["multi_target_n"], settings["multi_target_fraction"]
    problems = []
    if split not in SPLITS:
        problems.append(f"multi_target_split={split!r} (one of {', '.join(SPLITS)})")
    if split == "last_n" and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        problems.append(f"multi_target_n={n!r} (an integer >= 1: items per period)")
    if split == "last_fraction" and not (
        isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 1
    ):
        problems.append(f"multi_target_fraction={fraction!r} (a number in (0, 1): the share of items per period)")
    if problems:
        raise ConfigValueError("invalid config value " + "; ".join(problems))
    return settings


def describe_split(config) -> str:
    """One phrase for reports, e.g. ``the dataset's last day (multi_target_split: day)``."""
    settings = split_settings(config)
    split = settings["multi_target_split"]
    text = {
        "day": "the dataset's last day with data; validation: the day with data before it",
        "user_day": "each user's last active day; validation: the user's active day before it",
        "last_n": f"the user's last {settings['multi_target_n']} items; validation: the {settings['multi_target_n']} "
        "before them",
        "last_fraction": f"the user's last {settings['multi_target_fraction']:g} of items; validation: the same "
        "share of what remains",
    }[split]
    return f"{text}; multi_target_split: {split}"


def user_groups(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each user's run of rows (rows grouped by user)."""
    if len(users) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    return starts, counts


def period_labels(users, times, split="day", n=5, fraction=0.2) -> np.ndarray:
    """TRAIN (0), VALID (1) or TEST (2) per row; rows sorted by user, then time.

    Labels never decrease along a user's rows, so each period's history is a prefix.
    """
    users = np.asarray(users)
    times = np.asarray(times, dtype=np.float64)
    starts, counts = user_groups(users)
    if split in ("day", "user_day"):
        days = np.floor(times / SECONDS_PER_DAY).astype(np.int64)
        if split == "day":
            distinct = np.unique(days)
            if len(distinct) < 3:
                raise DatasetError(
                    f"multi_target_split=day needs timestamps in seconds spanning at least 3 days with data "
                    f"(train, validation, test); these span {len(distinct)} (order-only timestamps, such as "
                    "MicroLens' positions, have none): use multi_target_split=last_n or last_fraction"
                )
            test_day, valid_day = distinct[-1], distinct[-2]
            return np.where(days == test_day, TEST, np.where(days == valid_day, VALID, TRAIN)).astype(np.int8)
        last_day = np.repeat(days[starts + counts - 1], counts)
        before_last = np.where(days == last_day, np.iinfo(np.int64).min, days)
        previous_day = np.repeat(np.maximum.reduceat(before_last, starts), counts) if len(users) else before_last
        return np.where(days == last_day, TEST, np.where(days == previous_day, VALID, TRAIN)).astype(np.int8)
    position = np.arange(len(users)) - np.repeat(starts, counts)
    length = np.repeat(counts, counts)
    if split == "last_n":
        test_cut = np.maximum(length - n, 0)
        valid_cut = np.maximum(length - 2 * n, 0)
    elif split == "last_fraction":
        test_cut = np.floor(length * (1 - fraction) + 1e-9).astype(np.int64)
        valid_cut = np.floor(test_cut * (1 - fraction) + 1e-9).astype(np.int64)
    else:
        raise ConfigValueError(f"multi_target_split={split!r} (one of {', '.join(SPLITS)})")
    return np.where(position >= test_cut, TEST, np.where(position >= valid_cut, VALID, TRAIN)).astype(np.int8)


@dataclass
class TargetSplit:
    """One evaluation split: per evaluated user its history (row indices into the sorted frame, in
    time order) and its deduplicated target items, both as CSR arrays (``ptr`` of length users + 1)."""

    users: np.ndarray  # [U] user ids
    history_ptr: np.ndarray  # [U + 1]
    history_rows: np.ndarray  # [H] indices into the sorted interaction arrays
    history_items: np.ndarray  # [H]
    target_ptr: np.ndarray  # [U + 1]
    target_items: np.ndarray  # [T]

    def __len__(self) -> int:
        return len(self.users)

    def history_of(self, index: int) -> list[int]:
        return self.history_items[self.history_ptr[index] : self.history_ptr[index + 1]].tolist()

    def targets_of(self, index: int) -> list[int]:
        return self.target_items[self.target_ptr[index] : self.target_ptr[index + 1]].tolist()


def build_split(users, items, labels, target_label: int) -> TargetSplit:
    """History (rows labelled before ``target_label``) and targets (rows labelled ``target_label``) per user;
    users without a target (after dropping targets already in the history) or without history are left out."""
    users, items, labels = np.asarray(users), np.asarray(items, dtype=np.int64), np.asarray(labels)
    starts, counts = user_groups(users)
    user_index = np.repeat(np.arange(len(starts)), counts)
    n_key = int(items.max()) + 1 if len(items) else 1
    history_mask = labels < target_label
    target_mask = labels == target_label
    history_keys = user_index[history_mask] * n_key + items[history_mask]
    target_keys = np.unique(user_index[target_mask] * n_key + items[target_mask])  # deduplicated, sorted
    target_keys = target_keys[~np.isin(target_keys, history_keys)]
    history_count = np.bincount(user_index[history_mask], minlength=len(starts))
    target_count = np.bincount(target_keys // n_key, minlength=len(starts))
    kept = (history_count > 0) & (target_count > 0)
    kept_rows = history_mask & np.repeat(kept, counts)
    history_rows = np.flatnonzero(kept_rows)
    target_keys = target_keys[kept[target_keys // n_key]]
    return TargetSplit(
        users=users[starts[kept]],
        history_ptr=np.r_[0, np.cumsum(history_count[kept])].astype(np.int64),
        history_rows=history_rows,
        history_items=items[history_rows],
        target_ptr=np.r_[0, np.cumsum(target_count[kept])].astype(np.int64),
        target_items=(target_keys % n_key).astype(np.int64),
    )


def history_lists(split: TargetSplit, values: np.ndarray, max_len: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``max_len`` history values per user, left-aligned and zero-padded (RecBole's layout),
    and their lengths."""
    counts = np.diff(split.history_ptr)
    lengths = np.minimum(counts, max_len)
    out = torch.zeros((len(split), max_len), dtype=dtype)
    if lengths.sum():
        rows = np.repeat(np.arange(len(split)), lengths)
        cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        source = np.repeat(split.history_ptr[1:] - lengths, lengths) + cols
        out[torch.from_numpy(rows), torch.from_numpy(cols)] = torch.as_tensor(
            values[split.history_rows[source]], dtype=dtype
        )
    return out, torch.from_numpy(lengths.astype(np.int64))
