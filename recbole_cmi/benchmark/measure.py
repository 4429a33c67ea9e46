"""What the benchmarks share to measure: counts like 100k, a fast synthetic log, peak memory, the machine, the report
file (``speed``, its ``--retrieval`` part and ``gpu`` all use them; none of them imports another benchmark).

The fast generator: the same latent-category process as :func:`recbole_cmi.data.synthetic.generate` (docs in
:mod:`recbole_cmi.benchmark.speed`) drawn with whole-array NumPy operations.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import re
import sys
import threading
from pathlib import Path

import numpy as np

from recbole_cmi.data.synthetic import SECONDS_PER_DAY, SyntheticConfig, SyntheticData

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


def fast_generate(cfg: SyntheticConfig, n_interactions: int | None = None) -> SyntheticData:
    """The micro-video simulation of :func:`~recbole_cmi.data.synthetic.generate`, vectorised (no drift).

    ``n_interactions``: draw users until the total reaches it (``cfg.n_users`` is then ignored; the
    result has at most that many interactions, fewer by less than ``cfg.max_len``); None: ``cfg.n_users``
    users. Deterministic for a given ``cfg.seed``.
    """
    cfg.validate()
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    n_items, n_cat = cfg.n_items, cfg.n_categories

    # Items: a category each (every category owns one at least), Zipf popularity inside the category.
    item_category = rng.integers(0, n_cat, size=n_items)
    item_category[:n_cat] = np.arange(n_cat)
    item_category = rng.permutation(item_category)
    by_category = np.lexsort((rng.random(n_items), item_category))  # items grouped by category, random order
    counts = np.bincount(item_category, minlength=n_cat)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n_items) - np.repeat(starts, counts) + 1  # popularity rank inside the category
    weights = rank.astype(np.float64) ** -cfg.zipf
    within = np.cumsum(weights) - np.repeat(np.cumsum(weights)[starts] - weights[starts], counts)
    totals = np.add.reduceat(weights, starts)
    cdf = np.repeat(np.arange(n_cat), counts) + within / np.repeat(totals, counts)  # category c spans (c, c+1]

    def draw_from(categories: np.ndarray) -> np.ndarray:
        position = np.searchsorted(cdf, categories + rng.random(len(categories)))
        low, high = starts[categories], starts[categories] + counts[categories] - 1
        return by_category[np.clip(position, low, high)]

    # Users: lengths, then as many users as the interaction budget allows.
    if n_interactions is None:
        n_users = cfg.n_users
        lengths = _lengths(rng, cfg, n_users)
    else:
        lengths = _lengths(rng, cfg, int(n_interactions / cfg.min_len) + 1)
        n_users = max(1, int(np.searchsorted(np.cumsum(lengths), n_interactions, side="right")))
        lengths = lengths[:n_users]
    total = int(lengths.sum())
    user = np.repeat(np.arange(n_users), lengths)
    user_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    position = np.arange(total) - user_start[user]

    # Interests: 2..max_interests distinct categories per user with Dirichlet(1) weights.
    n_interests = rng.integers(2, cfg.max_interests + 1, size=n_users)
    interests = np.argsort(rng.random((n_users, n_cat)), axis=1)[:, : cfg.max_interests]
    slot_weights = rng.exponential(size=(n_users, cfg.max_interests))
    slot_weights[np.arange(cfg.max_interests)[None, :] >= n_interests[:, None]] = 0.0
    cumulative = np.cumsum(slot_weights, axis=1) / slot_weights.sum(axis=1, keepdims=True)

    # Sessions: geometric lengths (a new session starts at each position with probability 1/mean),
    # each inside one interest; a fraction `explore` of the items comes from a random category.
    new_session = (position == 0) | (rng.random(total) < 1.0 / cfg.session_len)
    session = np.cumsum(new_session) - 1
    session_user = user[new_session]
    slot = (rng.random(len(session_user))[:, None] > cumulative[session_user]).sum(axis=1)
    slot = np.minimum(slot, n_interests[session_user] - 1)
    category = interests[session_user, slot][session]
    explore = rng.random(total) < cfg.explore
    category[explore] = rng.integers(0, n_cat, size=int(explore.sum()))
    items = draw_from(category)

    # No repeats: redraw every later occurrence of a (user, item) pair, first from its category, then
    # from the whole catalogue; validate() guarantees max_len <= n_items / 2, so this converges fast.
    for round_ in range(64):
        repeated = _repeated(user, items, n_items)
        if not repeated.any():
            break
        if round_ < 8:
            items[repeated] = draw_from(category[repeated])
        else:
            items[repeated] = rng.integers(0, n_items, size=int(repeated.sum()))
    else:
        keep = ~_repeated(user, items, n_items)
        user, items, position = user[keep], items[keep], position[keep]

    # Timestamps: sorted uniform times over n_days, made strictly increasing inside each user.
    stamps = rng.integers(0, cfg.n_days * SECONDS_PER_DAY, size=len(user))
    stamps = stamps[np.lexsort((stamps, user))] + position
    return SyntheticData(users=user + 1, items=items + 1, timestamps=stamps, item_category=item_category)


def _lengths(rng, cfg: SyntheticConfig, n_users: int) -> np.ndarray:
    drawn = np.rint(rng.lognormal(np.log(cfg.mean_len), 0.5, size=n_users))
    return np.clip(drawn, cfg.min_len, cfg.max_len).astype(np.int64)


def _repeated(user: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Positions whose (user, item) pair occurred at an earlier position."""
    keys = user.astype(np.int64) * n_items + items
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeated = np.zeros(len(keys), dtype=bool)
    repeated[order[1:]] = sorted_keys[1:] == sorted_keys[:-1]
    return repeated


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return _peak_rss_bytes() is not None
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", f.read(), flags=re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the next phase starts from a low RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak resident memory above the level at entry (bytes), and on a GPU the peak allocated CUDA memory."""

    def __init__(self, device=None):
        self.device = device
        self.rss_peak_delta = 0
        self.cuda_peak_delta = None
        self._sampled = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        import torch

        _release_memory()
        self.start = _rss_bytes()
        if not _reset_peak_rss():  # not Linux: sample the RSS every 5 ms instead
            self._sampled = self.start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_start = torch.cuda.memory_allocated(self.device)
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, _rss_bytes())

    def __exit__(self, *exc):
        import torch

        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._sampled, _rss_bytes())
        else:
            peak = _peak_rss_bytes() or _rss_bytes()
        self.rss_peak_delta = max(0, peak - self.start)
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak_delta = max(0, torch.cuda.max_memory_allocated(self.device) - self._cuda_start)
        return False


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
    print(message, file=sys.stderr, flush=True)


def machine_description(device_name: str | None = None) -> dict:
    import numpy
    import pandas
    import recbole
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), flags=re.M)
            cpu = match.group(1).strip() if match else cpu
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpu = None
    if torch.cuda.is_available() and device_name:
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "recbole": recbole.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }


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
