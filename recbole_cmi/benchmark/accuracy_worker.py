"""One run of the accuracy benchmark, in its own process (``python -m recbole_cmi.benchmark accuracy
--run_spec=<spec.json>``): train and test one model and write its csv row as json.

The epochs and validations are timed by :class:`RunRecorder` (the trainer's ``epoch_observer``), the best
checkpoint is tested under the configured ranking convention and, with ``conventions: both``, once more under the
other one (:func:`ranking_convention`); peak memory and the dataset's statistics complete the row.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from recbole_cmi.benchmark.report_runs import ALT_PREFIX, CURVE_METRIC, RESOLVED_CONFIG_KEYS, TEST_PREFIX
from recbole_cmi.errors import RecboleCmiError
from recbole_cmi.files import write_json
from recbole_cmi.memory import cuda_peak_mib, peak_rss_mib


def worker(spec_path: str) -> int:
    """Train and test one model; write its csv row as json (also when it fails). Exit status 0 or 1."""
    from recbole_cmi.cli import quiet_recbole_warnings

    quiet_recbole_warnings()
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    try:
        row = train_and_test(spec)
    except Exception as err:  # recorded in the csv; the traceback goes to run.log
        traceback.print_exc()
        if isinstance(err, RecboleCmiError):
            message = str(err)
        else:
            first = (str(err).strip().splitlines() or [""])[0]
            message = f"{type(err).__name__}: {first}"
        write_json(Path(spec["result"]), {"status": "failed", "error": message[:500]})
        print(f"error: {message}", file=sys.stderr)
        return 1
    write_json(Path(spec["result"]), row)
    return 0


class RunRecorder:
    """The trainer's ``epoch_observer`` (:class:`recbole_cmi.trainer.EpochObserver`) in a benchmark run: the seconds
    of every training epoch and validation, the validation curve, and the best epoch by RecBole's early-stopping
    rule. With ``progress_path``, all of it is written there after every validation, before the epoch's
    checkpoints, so that a resumed run (:meth:`resume`) drops what they do not hold."""

    def __init__(self, config, progress_path=None):
        self.train_seconds, self.valid_seconds = [], []
        self.valid_metric = config["valid_metric"].lower()
        self.bigger = config["valid_metric_bigger"]
        self.curve = {"epoch": [], "train_s": [], CURVE_METRIC: []}
        if self.valid_metric != CURVE_METRIC:
            self.curve[self.valid_metric] = []
        self.best_score = self.best_epoch = None
        self.progress_path = progress_path

    def on_train_epoch(self, epoch_idx: int, seconds: float) -> None:
        self.train_seconds.append(seconds)

    def on_validation(self, epoch_idx: int, seconds: float, valid_score, valid_result) -> None:
        self.valid_seconds.append(seconds)
        self.curve["epoch"].append(len(self.train_seconds))
        self.curve["train_s"].append(round(sum(self.train_seconds), 3))  # training seconds so far (no validations)
        for key, values in self.curve.items():
            if key not in ("epoch", "train_s"):
                value = (valid_result or {}).get(key)
                values.append(None if value is None else float(value))
        if self.progress_path:
            progress = {"train_seconds": self.train_seconds, "valid_seconds": self.valid_seconds, "curve": self.curve}
            write_json(Path(self.progress_path), progress)
        self._track_best(epoch_idx, valid_score)

    def _track_best(self, epoch_idx: int, score) -> None:
        """RecBole's early_stopping rule: ties move the best epoch forward."""
        if self.best_score is None or (score >= self.best_score if self.bigger else score <= self.best_score):
            self.best_score, self.best_epoch = score, epoch_idx + 1  # 1-based, like epochs_run

    def resume(self, progress_path, epochs: int) -> None:
        """Take the first ``epochs`` epochs (those the resumed checkpoint holds) from an interrupted run's record."""
        with open(progress_path, encoding="utf-8") as f:
            progress = json.load(f)
        self.train_seconds += progress["train_seconds"][:epochs]
        self.valid_seconds += progress["valid_seconds"][:epochs]
        for key, values in self.curve.items():
            values += progress["curve"].get(key, [None] * epochs)[:epochs]
        scores = self.curve[self.valid_metric if self.valid_metric in self.curve else CURVE_METRIC]
        for epoch_idx, score in enumerate(scores):
            if score is not None:
                self._track_best(epoch_idx, score)


def train_and_test(spec: dict) -> dict:
    """``run_recbole_cmi``'s steps, with the epochs timed; returns the run's csv fields."""
    from recbole_cmi.pipeline import build_pipeline

    start = time.perf_counter()
    pipeline = build_pipeline(spec["model"], spec["dataset"], spec["config_files"] or None, spec["config_dict"])
    config, dataset, trainer = pipeline.config, pipeline.dataset, pipeline.trainer
    _, valid_data, test_data = pipeline.loaders
    recorder = RunRecorder(config, spec.get("progress"))
    train_seconds, valid_seconds = recorder.train_seconds, recorder.valid_seconds
    resumed_at = 0
    if spec.get("resume_from"):  # an interrupted run: its checkpoint and the epochs recorded up to it
        trainer.resume_checkpoint(spec["resume_from"])
        resumed_at = trainer.start_epoch  # epochs the checkpoint holds
        recorder.resume(spec["progress"], resumed_at)
    trainer.epoch_observer = recorder
    best_valid_score, _ = trainer.fit(pipeline.train_data, valid_data, saved=True, show_progress=False)
    tested = _evaluate_test(trainer, test_data, spec.get("conventions", "both") == "both")
    test_result, eval_seconds, excluded, alt_result, alt_seconds = tested
    row = {
        "status": "ok",
        "error": "",
        "valid_metric": config["valid_metric"],
        "best_valid_score": float(best_valid_score),
        "best_epoch": recorder.best_epoch,
        "epochs_run": len(train_seconds),
        "epochs": config["epochs"],
        "stopping_step": config["stopping_step"],
        # RecBole's rule: training stops once more than stopping_step validations in a row did not improve.
        "stopped_early": trainer.cur_step > config["stopping_step"],
        "resumed_at_epoch": resumed_at,
        "history_excluded": excluded,
        "train_s_per_epoch": round(sum(train_seconds) / len(train_seconds), 2) if train_seconds else None,
        "valid_s_per_epoch": round(sum(valid_seconds) / len(valid_seconds), 2) if valid_seconds else None,
        "eval_s": round(eval_seconds, 3),
        "alt_eval_s": None if alt_seconds is None else round(alt_seconds, 3),
        "peak_rss_mib": peak_rss_mib(),
        "cuda_peak_mib": cuda_peak_mib(config["device"]),
        "total_s": round(time.perf_counter() - start, 1),
        "device": str(config["device"]),
        "n_users": dataset.user_num - 1,  # id 0 is padding
        "n_items": dataset.item_num - 1,
        "n_interactions": _interaction_count(dataset),
        "n_valid_users": len(valid_data._dataset) if valid_data else 0,
        "n_test_users": len(test_data._dataset),
    }
    for key in RESOLVED_CONFIG_KEYS:
        row[key] = config[key]
    row["loadavg"] = _load_average()
    for key, value in (test_result or {}).items():
        row[f"{TEST_PREFIX}{key}"] = float(value)
    for key, value in (alt_result or {}).items():
        row[f"{ALT_PREFIX}{key}"] = float(value)
    row["valid_curve"] = json.dumps(recorder.curve, separators=(",", ":"))
    return row


def _evaluate_test(trainer, test_data, both: bool) -> tuple:
    """The best checkpoint's test result under the run's ranking convention and, with ``both``, the same weights'
    under the other one: ``(result, seconds, history excluded, other result, its seconds)`` (None, None without)."""
    from logging import getLogger

    eval_start = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    eval_seconds = time.perf_counter() - eval_start
    getLogger().info(f"test result: {test_result}")
    excluded = history_excluded(trainer, test_data)
    alt_result, alt_seconds = None, None
    if both:
        alt_start = time.perf_counter()
        with ranking_convention(trainer, test_data, exclude=not excluded):
            alt_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        alt_seconds = time.perf_counter() - alt_start
        getLogger().info(f"test result with history items {'ranked' if excluded else 'excluded'}: {alt_result}")
    return test_result, eval_seconds, excluded, alt_result, alt_seconds


def history_excluded(trainer, eval_data) -> bool:
    """Whether ``trainer.evaluate(eval_data)`` takes each user's history items out of the ranking now."""
    from recbole_cmi.data.protocol import MultiTargetEvalLoader

    if isinstance(eval_data, MultiTargetEvalLoader):  # the paper's protocol: excluded unless the loader says not
        return bool(eval_data.exclude_history)
    return bool(trainer.config["exclude_history_items"])  # loo: recbole_cmi.trainer.HistoryExclusionMixin


@contextlib.contextmanager
def ranking_convention(trainer, eval_data, exclude: bool):
    """Evaluate with history items excluded from (``exclude``) or ranked in the full sort, then restore the setting.

    Under ``loo`` this is the run's ``exclude_history_items``, which the trainer reads at every batch; under
    ``multi_target`` the evaluation loader's ``exclude_history``. The model's weights are not touched.
    """
    from recbole_cmi.data.protocol import MultiTargetEvalLoader

    if isinstance(eval_data, MultiTargetEvalLoader):
        before = eval_data.exclude_history
        eval_data.exclude_history = exclude
        try:
            yield
        finally:
            eval_data.exclude_history = before
        return
    before = trainer.config["exclude_history_items"]
    trainer.config["exclude_history_items"] = exclude
    try:
        yield
    finally:
        trainer.config["exclude_history_items"] = before


def _load_average() -> str:
    """The machine's 1/5/15-minute load averages when the run ended ('' where unknown): timings are wall-clock."""
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return ""


def _interaction_count(dataset) -> int:
    # A sequential dataset, once built, holds one row per interaction that has a history (every
    # interaction but each user's first); a general dataset one row per interaction.
    rows = dataset.inter_num
    if getattr(dataset, "item_list_length_field", None) in dataset.inter_feat:
        rows += dataset.user_num - 1
    return rows
