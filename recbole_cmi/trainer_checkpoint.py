"""The trainer's checkpoints (:class:`CheckpointMixin`, in every trainer of a run: :mod:`recbole_cmi.trainer`).

* Checkpoints are written in the safe format of :mod:`recbole_cmi.checkpoint` (plain data and
  tensors, so they load with ``torch.load(weights_only=True)``: loading never runs code) and
  atomically (temp file, fsync, rename), so a kill while saving never leaves a corrupt or partial
  checkpoint: the previous one stays. They record the user/item id mapping of the training data;
  resuming on data whose mapping differs is refused. A pickled (old or foreign) checkpoint is
  read only with ``resume_checkpoint(..., trust=True)`` (``--trust_checkpoint``).
* Two checkpoints per run: RecBole's best-model file ``<Model>-<time>.pth`` (written when the
  validation score improves; the test set is evaluated with it) and ``<Model>-<time>-last.pth``
  (:func:`last_checkpoint_path`), rewritten after every validation. Both also hold the random number generator
  states (Python, NumPy, torch, CUDA, the training loader's shuffling generator and any hook generator) and the
  best validation result, so ``resume_checkpoint`` continues exactly where the run stopped: a run
  resumed from the last checkpoint ends with the same weights and metrics as one that was never
  interrupted. Given the best-model file, ``resume_checkpoint`` switches to its ``-last`` sibling
  when that one is newer; a plain RecBole checkpoint (no RNG states) resumes as RecBole does.
  ``save_last_checkpoint: False`` skips the ``-last`` file (one write less per epoch for very
  large models); resuming then restarts from the best epoch, as in RecBole.
  A checkpoint of another model or dataset, or a file that is no checkpoint, is a
  :class:`~recbole_cmi.errors.CheckpointError`.
* ``evaluate`` loads the best checkpoint that way (a pickled one only if it was trusted at ``resume_checkpoint``)
  and, under ``eval_protocol: multi_target``, evaluates with that protocol's evaluator
  (:func:`recbole_cmi.data.protocol.evaluate_multi_target`).
* Distributed (DDP) runs: every rank uses rank 0's checkpoint name; only rank 0 writes, and at evaluation rank 0
  sends the best checkpoint's weights to the others (ranks may share no disk).
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
from recbole.utils import set_color

from recbole_cmi.checkpoint import (
    atomic_torch_save,
    check_id_mapping,
    checkpoint_payload,
    id_mapping_fingerprint,
    load_checkpoint,
)
from recbole_cmi.data.protocol import MultiTargetEvalLoader, evaluate_multi_target
from recbole_cmi.distributed import is_distributed, is_main_rank, same_on_all_ranks
from recbole_cmi.errors import CheckpointError


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


def _config_value(config, key):
    final = getattr(config, "final_config_dict", None)
    if isinstance(final, dict):
        return final.get(key)
    if isinstance(config, dict):
        return config.get(key)
    return None
