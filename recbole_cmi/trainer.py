"""RecBole's Trainer with what our runs need on top.

* Checkpoints are written in the safe format of :mod:`recbole_cmi.checkpoint` (plain data and
  tensors, so they load with ``torch.load(weights_only=True)``: loading never runs code) and
  atomically (temp file, fsync, rename), so a kill while saving never leaves a corrupt or partial
  checkpoint: the previous one stays. They record the user/item id mapping of the training data;
  resuming on data whose mapping differs is refused. A pickled (old or foreign) checkpoint is
  read only with ``resume_checkpoint(..., trust=True)`` (``--trust_checkpoint``).
* Two checkpoints per run: RecBole's best-model file ``<Model>-<time>.pth`` (written when the
  validation score improves; the test set is evaluated with it) and ``<Model>-<time>-last.pth``,
  rewritten after every validation. Both also hold the random number generator states (Python,
  NumPy, torch, CUDA, the training loader's shuffling generator and any hook generator) and the
  best validation result, so ``resume_checkpoint`` continues exactly where the run stopped: a run
  resumed from the last checkpoint ends with the same weights and metrics as one that was never
  interrupted. Given the best-model file, ``resume_checkpoint`` switches to its ``-last`` sibling
  when that one is newer; a plain RecBole checkpoint (no RNG states) resumes as RecBole does.
  ``save_last_checkpoint: False`` skips the ``-last`` file (one write less per epoch for very
  large models); resuming then restarts from the best epoch, as in RecBole.
  A checkpoint of another model or dataset, or a file that is no checkpoint, is a
  :class:`CheckpointError`.
* Train-batch hooks that need the live model (interest-aware negatives) get it at ``fit``.
* A non-finite loss stops training with :class:`NonFiniteLossError`, naming the loss component;
  the best and last checkpoints are left as they were.
* A model with sparse-gradient embeddings (CMI's ``sparse_item_updates: True``) is optimised by
  :class:`recbole_cmi.optim.LazyAdam` (``learner: adam`` only).
* Anomaly mode is off while we train (see ``recbole_cmi.compat``).
* ``trainer.epoch_observer`` (an :class:`EpochObserver`) is told the seconds of every training epoch and
  validation, and each validation's result (the accuracy benchmark's epoch times and validation curves).
* Distributed (DDP) runs (:mod:`recbole_cmi.distributed`): DDP works on the CPU too, every rank uses rank 0's
  checkpoint name and waits for rank 0 to have written it before loading it.
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

import contextlib
import importlib
import os
import random
import time

import numpy as np
import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import set_color

from recbole_cmi.checkpoint import (
    atomic_torch_save,
    check_id_mapping,
    checkpoint_payload,
    id_mapping_fingerprint,
    load_checkpoint,
)
from recbole_cmi.compat import disable_anomaly_mode
from recbole_cmi.data.protocol import MultiTargetEvalLoader, evaluate_multi_target
from recbole_cmi.distributed import DeviceAwareDDP, is_distributed, is_main_rank, same_on_all_ranks
from recbole_cmi.errors import CheckpointError, ConfigValueError, NonFiniteLossError
from recbole_cmi.optim import LazyAdam, has_sparse_gradients

__all__ = [
    "CheckpointMixin",
    "EpochObserver",
    "EpochObserverMixin",
    "HistoryExclusionMixin",
    "NonFiniteLossError",
    "RetrievalMixin",
    "Trainer",
    "get_trainer",
    "last_checkpoint_path",
]


def last_checkpoint_path(saved_model_file) -> str:
    """``saved/SASRec-<time>.pth`` -> ``saved/SASRec-<time>-last.pth``."""
    root, ext = os.path.splitext(str(saved_model_file))
    return f"{root}-last{ext or '.pth'}"


def capture_rng_state(train_data=None) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if train_data is not None:
        if hasattr(train_data, "get_rng_state"):
            state["train_data"] = train_data.get_rng_state()
        elif isinstance(getattr(train_data, "generator", None), torch.Generator):
            state["train_data"] = {"loader": train_data.generator.get_state()}
    return state


def restore_rng_state(state: dict, train_data=None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    loader_state = state.get("train_data")
    if loader_state is not None and train_data is not None:
        if hasattr(train_data, "set_rng_state"):
            train_data.set_rng_state(loader_state)
        elif isinstance(getattr(train_data, "generator", None), torch.Generator):
            train_data.generator.set_state(loader_state["loader"])


class _NoTensorboard:
    """RecBole's SummaryWriter for a DDP rank other than 0: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def _no_files_from_recbole_trainer():
    """RecBole's ``Trainer.__init__`` creates ``log_tensorboard/<run>/`` and the checkpoint folder in every process;
    a DDP rank other than 0 creates neither (the run's files are rank 0's)."""
    import recbole.trainer.trainer as recbole_trainer

    saved = recbole_trainer.get_tensorboard, recbole_trainer.ensure_dir
    recbole_trainer.get_tensorboard = lambda logger: _NoTensorboard()
    recbole_trainer.ensure_dir = lambda path: None
    try:
        yield
    finally:
        recbole_trainer.get_tensorboard, recbole_trainer.ensure_dir = saved


class CheckpointMixin:
    """Checkpoint I/O and exact resumption, shared by our Trainer and any core model-specific trainer."""

    _train_data = None
    _pending_rng_state = None
    _resumed = False
    _id_mapping = None
    _trusted_files = frozenset()  # pickled checkpoints the user vouched for (--trust_checkpoint)
    _resumed_from = None  # (path, checkpoint) until fit has compared its id mapping with the data

    def __init__(self, config, model):
        if is_main_rank(config):
            # RecBole's ensure_dir checks, then creates: two DDP ranks can race into FileExistsError.
            os.makedirs(config["checkpoint_dir"], exist_ok=True)
            super().__init__(config, model)
        else:
            with _no_files_from_recbole_trainer():
                super().__init__(config, model)
        # DDP: every rank loads the checkpoint that rank 0 writes (RecBole names it after each process's clock).
        self.saved_model_file = same_on_all_ranks(self.saved_model_file, config)

    @property
    def last_model_file(self) -> str:
        return last_checkpoint_path(self.saved_model_file)

    def _checkpoint_state(self, epoch, kind) -> dict:
        return checkpoint_payload(
            {
                "config": self.config,
                "epoch": epoch,
                "cur_step": self.cur_step,
                "best_valid_score": self.best_valid_score,
                "best_valid_result": self.best_valid_result,
                "state_dict": self.model.state_dict(),
                "other_parameter": self.model.other_parameter(),
                "optimizer": self.optimizer.state_dict(),
                "rng_state": capture_rng_state(self._train_data),
                "kind": kind,
                "best_model_file": os.path.basename(self.saved_model_file),
                "id_mapping": self._id_mapping,
            }
        )

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not is_main_rank(self.config):  # global rank 0 writes; other ranks may be on other machines
            return
        target = kwargs.pop("saved_model_file", self.saved_model_file)
        atomic_torch_save(self._checkpoint_state(epoch, "best"), target)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {target}")

    def _save_last_checkpoint(self, epoch):
        if not is_main_rank(self.config):  # global rank 0 writes; other ranks may be on other machines
            return
        if self.config["save_last_checkpoint"] is False:  # unset (None) means on
            return
        atomic_torch_save(self._checkpoint_state(epoch, "last"), self.last_model_file)

    def _load_own_checkpoint(self, path, trust=False) -> dict:
        path = str(path)
        checkpoint = load_checkpoint(path, map_location=self.device, trust=trust)
        saved_config = checkpoint.get("config")
        for key in ("model", "dataset"):
            saved = _config_value(saved_config, key)
            if saved is not None and saved != self.config[key]:
                raise CheckpointError(f"checkpoint {path} was written for {key} '{saved}', not '{self.config[key]}'")
        return checkpoint

    def _load_model_state(self, checkpoint, path):
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as err:
            first_line = (str(err).strip().splitlines() or [""])[0]
            raise CheckpointError(
                f"checkpoint {path} does not fit this model's settings (was it trained with other "
                f"hyperparameters?): {first_line}"
            ) from err
        self.model.load_other_parameter(checkpoint.get("other_parameter"))

    def resume_checkpoint(self, resume_file, trust=False):
        """Continue training from ``resume_file``; ``trust=True`` also reads a pickled (old) checkpoint."""
        resume_file = str(resume_file)
        checkpoint = self._load_own_checkpoint(resume_file, trust)
        if checkpoint.get("kind") != "last":
            last_file = last_checkpoint_path(resume_file)
            if os.path.isfile(last_file):
                last = self._load_own_checkpoint(last_file, trust)
                if last["epoch"] >= checkpoint["epoch"]:
                    self.logger.info(
                        f"{resume_file} holds the best model (epoch {checkpoint['epoch']}); continuing from "
                        f"the run's last checkpoint {last_file} (epoch {last['epoch']})"
                    )
                    checkpoint, resume_file = last, last_file
        if checkpoint.get("kind") == "last":
            best_file = os.path.join(os.path.dirname(resume_file), checkpoint["best_model_file"])
            if not os.path.isfile(best_file):
                raise CheckpointError(f"{resume_file} belongs to a run whose best checkpoint {best_file} is missing")
            self.saved_model_file = best_file
        else:
            self.saved_model_file = resume_file
        self._load_model_state(checkpoint, resume_file)
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"checkpoint {resume_file}: the optimizer state does not fit (learner changed?): {err}"
            ) from err
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint.get("best_valid_result")
        self._pending_rng_state = checkpoint.get("rng_state")
        self._resumed = True
        self._resumed_from = (resume_file, checkpoint)
        if trust:  # the run may evaluate its best model from this file again, before it writes a new one
            self._trusted_files = frozenset({resume_file, self.saved_model_file})
        self.logger.info(f"Checkpoint {resume_file} loaded. Resume training from epoch {self.start_epoch}")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._train_data = train_data
        self._id_mapping = id_mapping_fingerprint(train_data._dataset)
        if self._resumed_from is not None:
            path, checkpoint = self._resumed_from
            check_id_mapping(checkpoint, train_data._dataset, path)
            self._resumed_from = None
        if self._pending_rng_state is not None:
            restore_rng_state(self._pending_rng_state, train_data)
            self._pending_rng_state = None
        if self._resumed and (self.start_epoch >= self.epochs or self.cur_step > self.stopping_step):
            self.logger.info(f"Nothing left to train: the resumed run had reached epoch {self.start_epoch - 1}")
            self.eval_collector.data_collect(train_data)  # as RecBole's fit does (popularity metrics need it)
            return self.best_valid_score, self.best_valid_result

        def after_validation(epoch_idx, valid_score):
            if saved:
                self._save_last_checkpoint(epoch_idx)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        return super().fit(train_data, valid_data, verbose, saved, show_progress, after_validation)

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            trust = checkpoint_file in self._trusted_files
            if is_distributed(self.config):
                # Only rank 0's machine has the file (DDP ranks may share no disk): rank 0 sends the weights.
                state = None
                if is_main_rank(self.config):
                    loaded = self._load_own_checkpoint(checkpoint_file, trust=trust)
                    state = {key: loaded.get(key) for key in ("state_dict", "other_parameter")}
                    state["state_dict"] = {name: t.cpu() for name, t in state["state_dict"].items()}
                checkpoint = same_on_all_ranks(state, self.config)
            else:
                checkpoint = self._load_own_checkpoint(checkpoint_file, trust=trust)
            self._load_model_state(checkpoint, checkpoint_file)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        if isinstance(eval_data, MultiTargetEvalLoader):  # eval_protocol: multi_target (validation and test)
            return evaluate_multi_target(self.model, eval_data, show_progress=show_progress) if eval_data else None
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)


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


def _config_value(config, key):
    final = getattr(config, "final_config_dict", None)
    if isinstance(final, dict):
        return final.get(key)
    if isinstance(config, dict):
        return config.get(key)
    return None


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
