"""RecBole's Trainer with what our runs need on top.

* Checkpoints (:class:`~recbole_cmi.trainer_checkpoint.CheckpointMixin`, :mod:`recbole_cmi.trainer_checkpoint`):
  written in the safe format and atomically, two per run (the best model and ``-last``), holding the random
  number generator states, so that ``resume_checkpoint`` continues exactly where a run stopped.
* Train-batch hooks that need the live model (interest-aware negatives) get it at ``fit``.
* A non-finite loss stops training with :class:`NonFiniteLossError`, naming the loss component;
  the best and last checkpoints are left as they were.
* A model with sparse-gradient embeddings (CMI's ``sparse_item_updates: True``) is optimised by
  :class:`recbole_cmi.optim.LazyAdam` (``learner: adam`` only).
* Anomaly mode is off while we train (see ``recbole_cmi.compat``).
* ``trainer.epoch_observer`` (an :class:`EpochObserver`) is told the seconds of every training epoch and
  validation, and each validation's result (the accuracy benchmark's epoch times and validation curves).
* Distributed (DDP) runs (:mod:`recbole_cmi.distributed`): DDP works on the CPU too; every rank uses rank 0's
  checkpoint (:mod:`recbole_cmi.trainer_checkpoint`).
* ``exclude_history_items: True``: full-sort validation and test (``eval_protocol: loo``) give the items of
  each user's input history (``item_id_list``) the score -inf, as the CMI authors' retrieval drops them
  (docs/cmi.md §4.2); every sequential model is evaluated so. General models already have RecBole's own
  history mask.
* ``retrieval: faiss`` (:class:`RetrievalMixin`, :mod:`recbole_cmi.retrieval`): full-sort evaluation retrieves
  each user's top ``max(topk)`` items per interest from a faiss index of the item vectors, built once per
  evaluation, merged by the best interest's score, history items excluded as in the exact ranking; RecBole's
  collector and evaluator compute the metrics from a score matrix that holds the retrieved items.
* Under ``eval_protocol: multi_target`` validation and test use that protocol's evaluator
  (:mod:`recbole_cmi.data.protocol`), so early stopping follows its validation metric.
"""

from __future__ import annotations

import importlib
import os
import time

import torch
from recbole.trainer import Trainer as RecBoleTrainer

from recbole_cmi.compat import disable_anomaly_mode
from recbole_cmi.distributed import DeviceAwareDDP
from recbole_cmi.errors import ConfigValueError, NonFiniteLossError
from recbole_cmi.optim import LazyAdam, has_sparse_gradients
from recbole_cmi.trainer_checkpoint import CheckpointMixin

__all__ = [
    "CheckpointMixin",
    "EpochObserver",
    "EpochObserverMixin",
    "HistoryExclusionMixin",
    "NonFiniteLossError",
    "RetrievalMixin",
    "Trainer",
    "get_trainer",
]


class EpochObserver:
    """What a run reports while it trains, to whoever set it as the trainer's ``epoch_observer``.

    ``on_train_epoch`` follows every training epoch, ``on_validation`` every validation, right after it and before
    the epoch's checkpoints are written; ``seconds`` is the wall-clock time of that epoch or validation alone.
    The methods here do nothing: an observer overrides those it needs.
    """

    def on_train_epoch(self, epoch_idx: int, seconds: float) -> None:
        """Training epoch ``epoch_idx`` (0-based) took ``seconds``."""

    def on_validation(self, epoch_idx: int, seconds: float, valid_score, valid_result) -> None:
        """The validation after epoch ``epoch_idx`` took ``seconds`` and gave ``(valid_score, valid_result)``."""


class EpochObserverMixin:
    """Times each training epoch and validation and reports them to ``epoch_observer`` (None: nobody).

    In every trainer of a run (:data:`PLUGIN_TRAINER_MIXINS`): ours and core models' own trainers, whose ``fit``
    calls ``_train_epoch`` and ``_valid_epoch`` once per epoch and per validation.
    """

    epoch_observer: EpochObserver | None = None
    _observed_epoch = -1  # the last training epoch, which a validation follows

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if self.epoch_observer is None:
            return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        start = time.perf_counter()
        losses = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self._observed_epoch = epoch_idx
        self.epoch_observer.on_train_epoch(epoch_idx, time.perf_counter() - start)
        return losses

    def _valid_epoch(self, valid_data, *args, **kwargs):
        if self.epoch_observer is None:
            return super()._valid_epoch(valid_data, *args, **kwargs)
        start = time.perf_counter()
        outcome = super()._valid_epoch(valid_data, *args, **kwargs)
        valid_score, valid_result = outcome
        self.epoch_observer.on_validation(self._observed_epoch, time.perf_counter() - start, valid_score, valid_result)
        return outcome


class HistoryExclusionMixin:
    """Full-sort evaluation that, with ``exclude_history_items: True``, never ranks an input-history item."""

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        history_field = self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"]
        if self.config["exclude_history_items"] and history_field in interaction:
            # Padding is item 0, which RecBole already scores -inf.
            scores.scatter_(1, interaction[history_field].to(scores.device), float("-inf"))
        return interaction, scores, positive_u, positive_i


class RetrievalMixin:
    """``retrieval: faiss``: full-sort scores from a faiss search per interest instead of ``full_sort_predict``.

    The index is built at the first batch of every evaluation (the model may have changed since the last one)
    and kept in ``item_index`` for the rest of it. The items excluded from the ranking (padding, and the input
    history with ``exclude_history_items``) are excluded from the search, which asks each interest for
    ``max(topk)`` + their number (:func:`recbole_cmi.retrieval.retrieve`), so the exact path's history mask is
    not needed. RecBole's collector and evaluator then compute the metrics from a score matrix:

    * top-k metrics only (Recall, NDCG, Hit, MRR, Precision, MAP): a compact one, ``[users, max(topk) +
      positives]``: the retrieved items' exact scores (a slot left empty: the lowest finite float), then one
      -inf column per positive item that was not retrieved, and the positives mapped to their columns. The
      collector's top-k and hits are those of the full ranking, at a cost that does not grow with the catalogue.
    * metrics that read item ids (``rec.items``: ItemCoverage, AveragePopularity, ...): the full
      ``[users, items]`` matrix, retrieved items scored, every other item -inf.
    """

    item_index = None

    def __init__(self, config, model):
        super().__init__(config, model)
        from recbole_cmi.retrieval import RetrievalSettings, check_model_supported, import_faiss

        self.retrieval = RetrievalSettings.from_config(config)
        if self.retrieval.mode != "faiss":
            return
        import_faiss()
        check_model_supported(model)
        if config["eval_protocol"] == "multi_target":
            raise ConfigValueError("retrieval: faiss applies to eval_protocol loo; multi_target ranks exactly")
        unranked = [need for need in ("rec.score", "rec.meanrank") if self.eval_collector.register.need(need)]
        if unranked:
            raise ConfigValueError(
                f"retrieval: faiss ranks only each user's top max(topk) items; metrics {config['metrics']} need "
                f"every item's score or rank ({', '.join(unranked)}): use top-k metrics or retrieval: exact"
            )

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        self.item_index = None  # rebuilt from the weights this evaluation uses
        return super().evaluate(eval_data, load_best_model, model_file, show_progress)

    def retrieve_batch(self, interaction):
        """:class:`recbole_cmi.retrieval.Retrieved` top ``max(topk)`` items of a batch of users."""
        from recbole_cmi.retrieval import build_item_index, interest_vectors, item_table, retrieve

        model = self.model.module if hasattr(self.model, "module") else self.model  # DDP wraps the model
        if self.item_index is None:
            self.item_index = build_item_index(model, self.retrieval, self.device)
            self.logger.info(
                f"retrieval: {self.retrieval.describe()} index over {self.item_index.ntotal} items built in "
                f"{self.item_index.build_seconds:.1f} s"
            )
        history_field = self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"]
        excluded = interaction[history_field] if self.config["exclude_history_items"] else None
        interests = interest_vectors(model, interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
        topk = self.config["topk"]
        return retrieve(
            self.item_index, interests, item_table(model), max(topk) if isinstance(topk, list) else topk, excluded
        )

    def _full_sort_batch_eval(self, batched_data):
        if self.retrieval.mode != "faiss":
            return super()._full_sort_batch_eval(batched_data)
        interaction, history_index, positive_u, positive_i = batched_data
        if history_index is not None:
            raise ConfigValueError("retrieval: faiss is for sequential models (their full sort has no history index)")
        interaction = interaction.to(self.device)
        found = self.retrieve_batch(interaction)
        if self.eval_collector.register.need("rec.items"):
            scores = torch.full((len(interaction), self.tot_item_num), -torch.inf, device=self.device)
            scores.scatter_(1, found.items, found.scores)  # empty slots point at item 0 with -inf
            return interaction, scores, positive_u, positive_i
        scores, rows, columns = compact_scores(found, positive_u.to(self.device), positive_i.to(self.device))
        return interaction, scores, rows, columns


def compact_scores(found, positive_u: torch.Tensor, positive_i: torch.Tensor):
    """Score matrix ``[B, k + P]`` and the positives' columns in it (see :class:`RetrievalMixin`).

    Column ``c < k`` of row ``b`` is the ``c``-th retrieved item; ``P`` is the most positives of one row, and a
    row's positives that were not retrieved take its columns ``k, k + 1, ...`` (score -inf), so that the
    collector counts them in the row's number of positives and never among its top k.
    """
    batch, k = found.items.shape
    slots = found.scores.masked_fill(torch.isinf(found.scores), torch.finfo(found.scores.dtype).min)
    pairs = torch.unique(torch.stack([positive_u, positive_i], dim=1), dim=0)  # sorted by row; duplicates once
    rows, items = pairs[:, 0], pairs[:, 1]
    match = found.items[rows] == items.unsqueeze(1)
    counts = torch.bincount(rows, minlength=batch)
    ordinal = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    columns = torch.where(match.any(dim=1), match.int().argmax(dim=1), k + ordinal)
    extra = int(counts.max()) if len(rows) else 0
    scores = torch.cat([slots, slots.new_full((batch, extra), -torch.inf)], dim=1)
    return scores, rows, columns


#: What every trainer of a recbole_cmi run has on top of RecBole's (ours and core models' own trainers).
PLUGIN_TRAINER_MIXINS = (EpochObserverMixin, CheckpointMixin, RetrievalMixin, HistoryExclusionMixin)


class Trainer(*PLUGIN_TRAINER_MIXINS, RecBoleTrainer, DeviceAwareDDP):  # DeviceAwareDDP: DDP on CPU as well
    def _build_optimizer(self, **kwargs):
        """RecBole's optimizer; a model with sparse-gradient embeddings gets :class:`LazyAdam` instead of Adam."""
        if not has_sparse_gradients(self.model):
            return super()._build_optimizer(**kwargs)
        learner = kwargs.get("learner", self.learner)
        if str(learner).lower() != "adam":
            raise ConfigValueError(
                f"{type(self.model).__name__} has sparse item gradients (sparse_item_updates: True), which only "
                f"learner: adam supports (as a lazy Adam); got learner: {learner}"
            )
        return LazyAdam(
            kwargs.get("params", self.model.parameters()),
            lr=kwargs.get("learning_rate", self.learning_rate),
            weight_decay=kwargs.get("weight_decay", self.weight_decay) or 0.0,
        )

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        disable_anomaly_mode()
        if hasattr(train_data, "bind_model"):
            train_data.bind_model(self.model)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss_func = loss_func or self.model.calculate_loss
        names = getattr(self.model, "loss_names", None)
        weight_keys = getattr(self.model, "loss_weight_keys", {})
        first_step = [epoch_idx == self.start_epoch and not self._resumed]

        def checked(interaction):
            losses = loss_func(interaction)
            before_any_update, first_step[0] = first_step[0], False
            terms = losses if isinstance(losses, tuple) else (losses,)
            for index, term in enumerate(terms):
                if not torch.isfinite(term).all():
                    if names and index < len(names):
                        name = names[index]
                    else:
                        name = "loss" if len(terms) == 1 else f"loss term {index}"
                    kept = (
                        f"; the best checkpoint so far is kept at {self.saved_model_file}"
                        if os.path.exists(self.saved_model_file)
                        else ""
                    )
                    raise NonFiniteLossError(
                        f"training stopped at epoch {epoch_idx}: loss component '{name}' of "
                        f"{type(self.model).__name__} is {term.detach().float().sum().item()}{kept} "
                        f"({self._non_finite_hint(name, weight_keys.get(name), before_any_update)})"
                    )
            return losses

        return super()._train_epoch(train_data, epoch_idx, checked, show_progress)

    def _non_finite_hint(self, name, weight_key, before_any_update) -> str:
        weight = f"{weight_key}={self.config[weight_key]}" if weight_key else None
        if before_any_update:  # no optimiser step yet: the learning rate cannot be the cause
            cause = f"the weight {weight}" if weight else "a setting of the model"
            return f"it is not finite before the first update, so the cause is {cause}, not the learning rate"
        return f"try a lower learning_rate{f', or a smaller {weight}' if weight else ''}"


def get_trainer(model_type, model_name: str):
    """Our :class:`recbole_cmi.trainer.Trainer`, or a model's own trainer from either package.

    A core-specific trainer (``recbole.trainer.<Model>Trainer``) gets our checkpoint handling and
    evaluation options mixed in, so every run loads checkpoints and ranks items the same way.
    """
    own = globals().get(f"{model_name}Trainer")
    if isinstance(own, type):
        return own
    core = getattr(importlib.import_module("recbole.trainer"), f"{model_name}Trainer", None)
    if core is None:
        return Trainer
    return type(core.__name__, (*PLUGIN_TRAINER_MIXINS, core), {})
