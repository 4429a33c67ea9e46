"""What the benchmarks share to measure: counts like 100k, the models' common settings, one training step, a
dataset built once, the progress lines and the report file (``speed``, its ``--retrieval`` part and ``gpu`` all
use them; none of them imports another benchmark). The synthetic logs come from
:func:`recbole_cmi.data.synthetic.generate` (``fast=True``), peak memory from :mod:`recbole_cmi.memory`, the
machine from :mod:`recbole_cmi.machine`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

REPORT_END_MARKER = "<!-- end of generated report -->"
_COUNT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmg]?)\s*$", re.IGNORECASE)
_MULTIPLIER = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_count(text: str) -> int:
    """``"100k"`` -> 100000, ``"1m"`` -> 1000000, ``"2.5m"`` -> 2500000, ``"5000"`` -> 5000."""
    match = _COUNT.match(str(text).replace("_", "").replace(",", ""))
    if not match:
        raise ValueError(f"not a count: {text!r} (use e.g. 100k, 1m, 2.5m or 5000)")
    value = float(match.group(1)) * _MULTIPLIER[match.group(2).lower()]
    if value < 1 or value != int(value):
        raise ValueError(f"not a positive whole count: {text!r}")
    return int(value)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def common_config(args, data_path: str) -> dict:
    """Settings shared by every model of a run (model-specific keys are ignored by the other models)."""
    settings = {
        "data_path": data_path,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "train_batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "embedding_size": args.d,
        "hidden_size": args.d,
        "num_interest": args.num_interest,
        "gpu_id": args.gpu_id,
        "seed": args.seed,
        "state": "ERROR",
        "show_progress": False,
        "log_wandb": False,
        "save_dataloaders": False,
        "checkpoint_dir": os.path.join(data_path, "saved"),
    }
    if args.score_chunk_size is not None:
        settings["score_chunk_size"] = args.score_chunk_size
    return settings


def _train_step(model, optimizer, interaction):
    optimizer.zero_grad()
    losses = model.calculate_loss(interaction)
    loss = sum(losses) if isinstance(losses, tuple) else losses
    loss.backward()
    optimizer.step()
    return loss


class BuiltOnce:
    """A RecBole dataset whose ``build()`` (split + the sequential prefix expansion, the expensive part of
    loading) runs once; every model's ``data_preparation`` then gets the same built splits."""

    def __init__(self, dataset):
        self._dataset = dataset
        self._built = None

    def build(self):
        if self._built is None:
            self._built = self._dataset.build()
        return self._built

    def __getattr__(self, name):
        return getattr(self._dataset, name)


def _say(message: str) -> None:
    """A note on what the benchmark is doing (stderr)."""
    print(message, file=sys.stderr, flush=True)


def say_finished(line: str) -> None:
    """The one line of a finished model or measurement (stdout, at once)."""
    print(line, flush=True)


def _mb(n_bytes) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**20:,.0f}"


def write_report(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, keeping whatever followed the end marker in the existing file."""
    kept = ""
    if path.is_file():
        old = path.read_text(encoding="utf-8")
        if REPORT_END_MARKER in old:
            kept = old.split(REPORT_END_MARKER, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n" + REPORT_END_MARKER + (kept or "\n"), encoding="utf-8")
