"""One trial of a search, run in a Ray worker: the fixed config plus the trial's parameters, trained with
``run_recbole_cmi`` and reported to Ray Tune after every validation (:class:`EpochReporter`), with the trial's
RecBole checkpoints, so that a trial stopped by ASHA keeps its best model and a restored one continues exactly.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from recbole_cmi.files import plain, write_json


def best_key(metric: str) -> str:
    return f"best_{metric}"


class EpochReporter:
    """``Trainer.fit`` callback: reports every validation to Tune, with the trial's checkpoints.

    Improvement and early stopping mirror ``recbole.utils.early_stopping`` (ties count as
    improvements, as there), so the reported best epoch is the one the best checkpoint holds.
    The Ray checkpoint is the whole RecBole checkpoint folder (best model and ``-last`` state)
    plus this reporter's own state, so a restored trial continues exactly where it stopped.
    """

    STATE_FILE = "reporter.json"

    def __init__(self, metric: str, bigger: bool, stopping_step: int, checkpoint_dir: str, state: dict | None = None):
        self.metric = metric
        self.bigger = bigger
        self.stopping_step = stopping_step
        self.checkpoint_dir = checkpoint_dir
        state = state or {}
        self.best = state.get("best", -math.inf if bigger else math.inf)
        self.best_epoch = state.get("best_epoch")
        self.steps_without_gain = state.get("steps_without_gain", 0)

    @classmethod
    def restore(cls, metric, bigger, stopping_step, checkpoint_dir):
        """A reporter continuing from a restored checkpoint folder, and the best-model file to resume from."""
        state = json.loads(Path(checkpoint_dir, cls.STATE_FILE).read_text(encoding="utf-8"))
        reporter = cls(metric, bigger, stopping_step, checkpoint_dir, state)
        best_file = os.path.join(checkpoint_dir, state["best_file"]) if state.get("best_file") else None
        return reporter, best_file

    def best_model_file(self) -> str:
        names = [f for f in os.listdir(self.checkpoint_dir) if f.endswith(".pth") and not f.endswith("-last.pth")]
        return sorted(names)[0] if names else ""

    def __call__(self, epoch_idx: int, valid_score: float) -> None:
        import ray
        from ray import tune

        score = float(valid_score)
        if score >= self.best if self.bigger else score <= self.best:
            self.best, self.best_epoch, self.steps_without_gain = score, epoch_idx, 0
        else:
            self.steps_without_gain += 1
        best_file = self.best_model_file()
        state = {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "steps_without_gain": self.steps_without_gain,
            "best_file": best_file,
        }
        write_json(Path(self.checkpoint_dir, self.STATE_FILE), state)
        metrics = {
            self.metric: score,
            best_key(self.metric): self.best,
            "epoch": epoch_idx,
            "best_epoch": self.best_epoch,
            "early_stop": self.steps_without_gain > self.stopping_step,
            "checkpoint_file": best_file,
            "node_id": ray.get_runtime_context().get_node_id(),  # which machine of a cluster trained it
        }
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(self.checkpoint_dir))


def run_trial(params: dict, plan: dict) -> None:
    """One trial: the fixed config plus this trial's ``params``, trained with per-epoch reports.

    A trial Ray restarts from a checkpoint (``--resume``) resumes training from it.
    """
    import ray
    import torch
    from ray import tune

    from recbole_cmi.quick_start import run_recbole_cmi

    torch.set_num_threads(max(1, int(plan["cpus_per_trial"])))
    # Ray's per-trial working folder on the node that runs it: Ray copies every reported
    # checkpoint into the trial folder under --output, so RecBole's own files stay out of it.
    context = tune.get_context()
    checkpoint_dir = os.path.join(os.getcwd(), "recbole_checkpoint", context.get_trial_id())
    os.makedirs(checkpoint_dir, exist_ok=True)
    bigger = plan["mode"] == "max"
    reporter, resume = EpochReporter(plan["metric"], bigger, plan["stopping_step"], checkpoint_dir), None
    restored = tune.get_checkpoint()
    if restored is not None:
        restored.to_directory(checkpoint_dir)
        reporter, resume = EpochReporter.restore(plan["metric"], bigger, plan["stopping_step"], checkpoint_dir)
    config_dict = {
        **plan["fixed"],
        **{name: plain(value) for name, value in params.items()},
        "checkpoint_dir": checkpoint_dir,
        # The GPUs Ray gave this trial (it already set CUDA_VISIBLE_DEVICES to them); "" = CPU.
        "gpu_id": ",".join(str(i) for i in ray.get_gpu_ids()),
    }
    run_recbole_cmi(
        plan["model"],
        plan["dataset"],
        config_dict=config_dict,
        saved=True,
        read_argv=False,
        callback_fn=reporter,
        resume=resume,
        evaluate_test=False,
    )
