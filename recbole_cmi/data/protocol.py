"""The CMI paper's multi-target evaluation protocol, for every model: ``eval_protocol: multi_target``.

``eval_protocol: loo`` (the default) is RecBole's: per user the last interaction is the test target,
the one before it the validation target, and all items are ranked, including (for sequential models)
the items already in the user's history. ``multi_target`` is the protocol of Li et al. (SIGIR 2022;
docs/cmi.md §4.3):

* **Periods.** Each user's interactions, in time order, fall into training, validation and test
  periods (``multi_target_split``; the periods and target sets are computed in :mod:`recbole_cmi.data.target_split`):

  - ``day`` (default; the paper's): day = floor(timestamp / 86400); the dataset's last day with data
    is the test period and the day with data before it the validation period (WeChat: days 1-12 /
    13 / 14). Needs at least 3 days with data: order-only timestamps (positions) have none, so use
    ``last_n`` or ``last_fraction`` there.
  - ``user_day``: the same with each user's own last active day and the active day before it.
  - ``last_n``: the user's last ``multi_target_n`` items are the test period, the ``multi_target_n``
    before them the validation period.
  - ``last_fraction``: the last ``multi_target_fraction`` of the user's items (the first
    floor(L x (1 - f)) items are the history, as ComiRec's 80/20 split) are the test period; the
    same rule on what remains gives the validation period.

* **Test**: history = everything before the test period, target = the set of items in it.
  **Validation**: history = everything before the validation period, target = its items.
  **Training**: everything before the validation period, expanded as RecBole expands sequences
  (every prefix -> next item; general models get the interactions as they are), so every model
  trains unchanged. Validation and test items are never trained on.
* **Evaluation** (:func:`evaluate_multi_target`): one row per user, whose model input is the last
  ``MAX_ITEM_LIST_LENGTH`` history items (``item_id_list``, ``item_length``; general models get the
  user id). ``model.full_sort_predict`` scores every item; items in the user's (whole) history and the
  padding id get -inf, as in the paper's code. Targets are deduplicated, and a target item that is
  already in the history is dropped (it can never be ranked). Only users with at least one target and
  a non-empty history count; each metric is averaged over them, by RecBole's own collector and metric
  classes (``recbole.evaluator``: the top-K hit matrix and the number of targets per user, ``rec.topk``):

  - Recall@K = |top-K ∩ targets| / |targets|. The paper's code divides by the length of the target
    day's list with repeats; on logs without repeated items (micro-video logs) the two agree;
  - Hit@K (HitRate@K) = 1 if top-K ∩ targets is non-empty;
  - NDCG@K = sum over hits at rank r of 1/log2(r + 1), divided by the same sum over ranks
    1..min(|targets|, K) (binary gains; ComiRec's NDCG, with its non-standard ideal DCG, is not
    comparable); also MRR@K (1 / rank of the first hit) and Precision@K (hits / K).

* The trainer validates with the same evaluator (``recbole_cmi.trainer``), so early stopping follows
  ``valid_metric`` under the protocol; the test set is evaluated once, with the best checkpoint.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from logging import getLogger

import numpy as np
import pandas as pd
import torch
from recbole.data.interaction import Interaction
from recbole.evaluator import Collector, Evaluator
from recbole.utils import ModelType

from recbole_cmi.data.target_split import (
    TEST,
    TRAIN,
    VALID,
    TargetSplit,
    build_split,
    describe_split,
    history_lists,
    period_labels,
    setting,
    split_settings,
    user_groups,
)
from recbole_cmi.errors import ConfigValueError, DatasetError

PROTOCOLS = ("loo", "multi_target")
METRICS = ("recall", "hit", "ndcg", "mrr", "precision")


def protocol_name(config) -> str:
    """``loo`` or ``multi_target``; anything else is a :class:`ConfigValueError`."""
    name = setting(config, "eval_protocol", "loo")
    if name not in PROTOCOLS:
        raise ConfigValueError(
            f"eval_protocol={name!r} (one of {', '.join(PROTOCOLS)}: 'loo' is RecBole's leave-one-out full sort, "
            "'multi_target' the CMI paper's protocol)"
        )
    return name


def _metric_names(config) -> list[str]:
    metrics = setting(config, "metrics", ["Recall", "Hit"])
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    names = [m.lower() for m in metrics]
    unknown = [m for m, name in zip(metrics, names) if name not in METRICS]
    if unknown:
        raise ConfigValueError(
            f"metrics={metrics!r}: eval_protocol multi_target computes {', '.join(METRICS)} "
            f"(case-insensitive), not {', '.join(map(repr, unknown))}"
        )
    return names


def _topk(config) -> list[int]:
    topk = setting(config, "topk", [10])
    return [topk] if isinstance(topk, int) else list(topk)


# ---------------------------------------------------------------- loaders


@dataclass
class MultiTargetBatch:
    interaction: Interaction  # the model's input, one row per user
    history: tuple[torch.Tensor, torch.Tensor]  # (row in batch, item) pairs to exclude from the ranking
    targets: tuple[torch.Tensor, torch.Tensor]  # (row in batch, item) pairs

    def __len__(self) -> int:
        return len(self.interaction)


class MultiTargetEvalLoader:
    """Validation or test users in fixed order, ``eval_batch_size`` users per batch.

    ``exclude_history`` (True, the paper's protocol) takes each user's history items out of the ranking; False
    ranks them too (RecBole's convention for sequential models): the targets stay the same new items, and
    history items compete with them for the top K. The benchmark sets it to score one checkpoint both ways.
    """

    def __init__(self, config, dataset, split: TargetSplit, interaction: Interaction, phase: str):
        self.config = config
        self.exclude_history = True
        self._dataset = dataset  # a copy of the training dataset holding the evaluation rows (or None)
        if len(split) and int(np.diff(split.target_ptr).min()) < 1:
            raise DatasetError(f"eval_protocol=multi_target: a user of the {phase} split has no target item")
        self.split = split
        self.interaction = interaction
        self.phase = phase
        self.batch_size = int(setting(config, "eval_batch_size", 4096))
        self.metrics = _metric_names(config)
        self.topk = _topk(config)
        self.decimals = int(setting(config, "metric_decimal_place", 4))
        self.transform = None
        if dataset is not None and setting(config, "transform") is not None:
            from recbole.data.transform import construct_transform

            self.transform = construct_transform(config)

    @property
    def n_users(self) -> int:
        return len(self.split)

    def __len__(self) -> int:
        return math.ceil(self.n_users / self.batch_size)

    def __iter__(self):
        for start in range(0, self.n_users, self.batch_size):
            yield self.batch(start, min(start + self.batch_size, self.n_users))

    def batch(self, start: int, end: int) -> MultiTargetBatch:
        interaction = self.interaction[torch.arange(start, end)]
        if self.transform is not None:
            interaction = self.transform(self._dataset, interaction)
        history = _csr_pairs(self.split.history_ptr, self.split.history_items, start, end)
        if not self.exclude_history:
            history = (history[0][:0], history[1][:0])  # no (row, item) pair to take out of the ranking
        return MultiTargetBatch(
            interaction=interaction,
            history=history,
            targets=_csr_pairs(self.split.target_ptr, self.split.target_items, start, end),
        )


def _csr_pairs(ptr: np.ndarray, values: np.ndarray, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.from_numpy(np.diff(ptr[start : end + 1]))
    rows = torch.repeat_interleave(torch.arange(end - start), counts)
    return rows, torch.from_numpy(values[ptr[start] : ptr[end]])


def _unsplit_frame(config, dataset) -> pd.DataFrame:
    """The dataset's interactions, checked for what the protocol needs: a sequential or general model, no
    ``benchmark_filename``, a dataset not split yet, a time field loaded."""
    model_type = config["MODEL_TYPE"]
    if model_type not in (ModelType.SEQUENTIAL, ModelType.GENERAL):
        raise ConfigValueError(
            f"eval_protocol=multi_target supports sequential and general models, not {config['model']} "
            f"({model_type.name.lower()})"
        )
    if config["benchmark_filename"] is not None:
        raise ConfigValueError("eval_protocol=multi_target makes its own splits: leave benchmark_filename unset")
    frame = dataset.inter_feat
    if not isinstance(frame, pd.DataFrame):
        raise DatasetError("eval_protocol=multi_target needs a dataset that has not been split yet")
    time_field = dataset.time_field
    if not time_field or time_field not in frame:
        raise DatasetError(
            f"eval_protocol=multi_target orders interactions by time: dataset '{config['dataset']}' has no "
            f"time field loaded (TIME_FIELD={time_field!r}; add it to load_col)"
        )
    return frame


def multi_target_preparation(config, dataset):
    """Training loader (RecBole's, on the training period) and the validation and test loaders."""
    from recbole.data.utils import create_samplers, get_dataloader

    settings = split_settings(config)
    _metric_names(config)
    frame = _unsplit_frame(config, dataset)
    uid, iid, time_field = dataset.uid_field, dataset.iid_field, dataset.time_field
    order = np.lexsort((frame[time_field].to_numpy(), frame[uid].to_numpy()))  # stable, like RecBole's sort
    frame = frame.iloc[order].reset_index(drop=True)
    users, items = frame[uid].to_numpy(), frame[iid].to_numpy()
    labels = period_labels(
        users,
        frame[time_field].to_numpy(dtype=np.float64),
        settings["multi_target_split"],
        settings["multi_target_n"],
        settings["multi_target_fraction"],
    )
    columns = {name: frame[name].to_numpy() for name in frame.columns}
    dataset.inter_feat = frame
    dataset._change_feat_format()  # Interaction; a sequential dataset expands every prefix -> next item
    dataset._drop_unused_col()
    sequential = getattr(dataset, "item_list_length_field", None) in dataset.inter_feat
    starts, _ = user_groups(users)
    has_history = np.ones(len(users), dtype=bool)
    if sequential:
        has_history[starts] = False  # RecBole's expansion makes no row for a user's first item
    expanded_users = dataset.inter_feat[uid].numpy()
    expanded_items = dataset.inter_feat[iid].numpy()
    if not (np.array_equal(expanded_users, users[has_history]) and np.array_equal(expanded_items, items[has_history])):
        raise RuntimeError("RecBole's sequence expansion did not keep the time order of the interactions")
    train_rows = torch.from_numpy(np.flatnonzero(labels[has_history] == TRAIN))
    train_dataset = dataset.copy(dataset.inter_feat[train_rows])
    if len(train_dataset) == 0:
        raise DatasetError(_empty_message(config, "training", labels, settings))
    train_sampler, _, _ = create_samplers(config, dataset, [train_dataset] * 3)
    train_data = get_dataloader(config, "train")(config, train_dataset, train_sampler, shuffle=config["shuffle"])
    loaders = []
    for phase, label in (("valid", VALID), ("test", TEST)):
        split = build_split(users, items, labels, label)
        if len(split) == 0 and (phase == "test" or (config["eval_step"] or 0) > 0):
            raise DatasetError(_empty_message(config, phase, labels, settings))
        interaction = _eval_interaction(config, train_dataset, split, columns, sequential)
        eval_dataset = train_dataset.copy(interaction)
        loaders.append(MultiTargetEvalLoader(config, eval_dataset, split, interaction, phase))
    counts = np.bincount(labels, minlength=3)
    getLogger().info(
        f"[eval_protocol multi_target] {describe_split(settings)}; interactions per period: train {counts[TRAIN]}, "
        f"valid {counts[VALID]}, test {counts[TEST]}; training rows {len(train_dataset)}; evaluated users: "
        f"valid {loaders[0].n_users}, test {loaders[1].n_users}"
    )
    return train_data, loaders[0], loaders[1]


def _eval_interaction(config, train_dataset, split: TargetSplit, columns: dict, sequential: bool) -> Interaction:
    uid = train_dataset.uid_field
    fields = {uid: torch.as_tensor(split.users, dtype=torch.int64)}
    if sequential:
        max_len = config["MAX_ITEM_LIST_LENGTH"]
        suffix = config["LIST_SUFFIX"]
        lengths = None
        for name, values in columns.items():
            list_field = name + suffix
            if name == uid or list_field not in train_dataset.inter_feat or values.dtype == object:
                continue
            dtype = train_dataset.inter_feat[list_field].dtype
            fields[list_field], lengths = history_lists(split, values, max_len, dtype)
        if lengths is None:
            lengths = torch.from_numpy(np.minimum(np.diff(split.history_ptr), max_len).astype(np.int64))
        fields[train_dataset.item_list_length_field] = lengths
    return Interaction(fields)


def _empty_message(config, phase: str, labels: np.ndarray, settings: dict) -> str:
    counts = np.bincount(labels, minlength=3)
    return (
        f"eval_protocol=multi_target: the {phase} split of dataset '{config['dataset']}' is empty "
        f"({describe_split(settings)}; interactions per period: train {counts[TRAIN]}, valid {counts[VALID]}, "
        f"test {counts[TEST]}; an evaluated user needs history before the period and a new item in it)"
    )


# ---------------------------------------------------------------- metrics (RecBole's)


def ranking_scores(scores: torch.Tensor, history) -> torch.Tensor:
    """The scores a batch is ranked by: a float32 copy of ``scores`` [B, n_items] (column 0 is the padding id)
    with the padding id and the ``history`` (row, item) pairs at -inf."""
    scores = scores.detach().to(torch.float32, copy=True)
    scores[:, 0] = -torch.inf
    scores[history[0].to(scores.device), history[1].to(scores.device)] = -torch.inf
    return scores


def _widen(rec_topk: torch.Tensor, max_k: int) -> torch.Tensor:
    """RecBole's ``rec.topk`` [B, k + 1] (hit at rank 1..k, then the number of targets) with misses at ranks
    k + 1..max_k: a catalogue of fewer than max(topk) items (padding included) has no more ranks."""
    missing = max_k + 1 - rec_topk.shape[1]
    if missing <= 0:
        return rec_topk
    return torch.cat([rec_topk[:, :-1], rec_topk.new_zeros(len(rec_topk), missing), rec_topk[:, -1:]], dim=1)


@torch.no_grad()
def evaluate_multi_target(model, loader: MultiTargetEvalLoader, show_progress: bool = False) -> OrderedDict:
    """Mean of every metric over the loader's users, computed by RecBole's collector and metric classes.

    Per batch RecBole's :class:`~recbole.evaluator.collector.Collector` takes the top max(topk) items of
    :func:`ranking_scores` (all items, if fewer) and builds ``rec.topk``: the hit matrix (is the item at rank r a
    target) and the number of (deduplicated) targets per user. RecBole's Recall, Hit, NDCG, MRR and Precision
    then average over all users and round to ``metric_decimal_place``; keys as RecBole's (``recall@10``).
    """
    model.eval()
    if loader.n_users == 0:
        return OrderedDict((f"{m}@{k}", 0.0) for m in loader.metrics for k in loader.topk)
    device = setting(loader.config, "device", torch.device("cpu"))
    settings = {"metrics": loader.metrics, "topk": loader.topk, "metric_decimal_place": loader.decimals}
    settings.update(device=device, eval_args={"mode": "full"})
    collector = None
    batches = loader
    if show_progress:
        from tqdm import tqdm

        batches = tqdm(loader, total=len(loader), ncols=100, desc=f"Evaluate {loader.phase}")
    for batch in batches:
        scores = model.full_sort_predict(batch.interaction.to(device)).reshape(len(batch), -1)
        scores = ranking_scores(scores, batch.history)
        if collector is None:  # RecBole's top-k cannot take more items than there are
            collector = Collector(dict(settings, topk=[min(max(loader.topk), scores.shape[1])]))
        rows, items = (t.to(scores.device) for t in batch.targets)
        collector.eval_batch_collect(scores, batch.interaction, rows, items)
    data = collector.get_data_struct()
    data["rec.topk"] = _widen(data["rec.topk"], max(loader.topk))
    result = Evaluator(settings).evaluate(data)
    return OrderedDict((key, float(value)) for key, value in result.items())
