"""The test loaders the robustness study (:mod:`recbole_cmi.tools.robustness`) evaluates: copies of a model's test
loader whose histories are perturbed (a fraction dropped, or replaced by random items), and copies holding only
the rows of one history-length bucket. Both rebuild RecBole's loaders on a copy of their dataset, or copy a loader
that holds its input itself (``eval_protocol: multi_target``).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from recbole_cmi.tools.common import ToolError

MODES = ("drop", "replace")


def perturb_histories(item_seq, item_seq_len, p: float, mode: str, generator: torch.Generator, n_items=None):
    """Drop or replace ``round(p * length)`` random items of each left-aligned history.

    Args:
        item_seq: ``[B, L]`` item ids, padding 0 after each history.
        item_seq_len: ``[B]`` lengths, 1..L.
        p: fraction in [0, 1].
        mode: ``"drop"`` (the kept items move left, in order; at least one is kept) or
            ``"replace"`` (by a uniformly drawn item id in 1..n_items-1 other than the original).
        generator: the source of randomness (CPU ``torch.Generator``).
        n_items: number of item ids including padding 0; needed for ``"replace"``.

    Returns new ``(item_seq, item_seq_len)``; the inputs are not modified.
    """
    if mode not in MODES:
        raise ToolError(f"perturbation mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
        raise ToolError(f"perturbation fraction p must be in [0, 1], got {p!r}")
    if mode == "replace" and (n_items is None or n_items < 3):
        raise ToolError(f"replacing items needs at least 2 items to draw from, got n_items={n_items}")
    device = item_seq.device
    rows, width = item_seq.shape
    length = item_seq_len.long().clamp(1, width)
    positions = torch.arange(width, device=device).unsqueeze(0)
    valid = positions < length.unsqueeze(1)
    count = torch.floor(p * length.double() + 0.5).long()
    if mode == "drop":
        count = torch.minimum(count, length - 1)
    keys = torch.rand(rows, width, generator=generator).to(device).masked_fill(~valid, 2.0)
    chosen = keys.argsort(dim=1).argsort(dim=1) < count.unsqueeze(1)
    if mode == "drop":
        keep = valid & ~chosen
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
        new_len = length - count
        new_seq = item_seq.gather(1, order).masked_fill(positions >= new_len.unsqueeze(1), 0)
        return new_seq, new_len.to(item_seq_len.dtype)
    draw = torch.randint(1, n_items - 1, (rows, width), generator=generator).to(device)
    draw = draw + (draw >= item_seq).long()  # skips the original id: uniform over the others
    return torch.where(chosen, draw, item_seq), length.to(item_seq_len.dtype)


def _test_input(test_data, config):
    """``(holds_input, Interaction of the model's input rows)`` of a test loader.

    RecBole's full-sort loader reads its rows from its dataset (``_dataset.inter_feat``); a loader that holds
    its model input as ``interaction`` (``eval_protocol: multi_target``) has them there.
    """
    holds_input = hasattr(test_data, "interaction") and not hasattr(test_data, "_sampler")
    inter = test_data.interaction if holds_input else test_data._dataset.inter_feat
    len_field = config["ITEM_LIST_LENGTH_FIELD"]
    if len_field not in inter.interaction:
        raise ToolError(f"the test data of {config['model']} has no '{len_field}': it holds no histories")
    return holds_input, inter


def _held_input_copy(test_data, config, interaction):
    loader = copy.copy(test_data)
    loader.interaction = interaction
    loader.metrics, loader.topk = ["recall", "ndcg"], list(config["topk"])  # read when it was built
    return loader


def perturbed_loader(test_data, config, p: float, mode: str, seed: int, n_items: int):
    """A copy of ``test_data`` whose histories (``item_id_list``, ``item_length``) are perturbed.

    RecBole's loaders are rebuilt (same class) on a copy of their dataset; a loader that holds its
    model input as ``interaction`` (``eval_protocol: multi_target``) is copied with a new one.
    """
    from recbole.data.interaction import Interaction

    seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    len_field = config["ITEM_LIST_LENGTH_FIELD"]
    holds_input, inter = _test_input(test_data, config)
    if seq_field not in inter.interaction:
        raise ToolError(f"the test data of {config['model']} has no '{seq_field}': only histories can be perturbed")
    generator = torch.Generator().manual_seed(int(seed))
    new_seq, new_len = perturb_histories(inter[seq_field], inter[len_field], p, mode, generator, n_items)
    fields = dict(inter.interaction)
    fields[seq_field], fields[len_field] = new_seq, new_len
    if holds_input:
        return _held_input_copy(test_data, config, Interaction(fields))
    dataset = test_data._dataset.copy(Interaction(fields))
    return type(test_data)(config, dataset, test_data._sampler, shuffle=False)


def length_buckets(edges) -> list[tuple[int, int | None]]:
    """``[6, 19]`` -> ``[(1, 6), (7, 19), (20, None)]``: inclusive bounds, the last one open."""
    buckets, low = [], 1
    for edge in edges:
        buckets.append((low, int(edge)))
        low = int(edge) + 1
    return buckets + [(low, None)]


def bucket_label(low: int, high: int | None) -> str:
    """``"1-6"``, ``"7"`` (a bucket of one length) or ``">=20"`` (open-ended)."""
    if high is None:
        return f">={low}"
    return str(low) if low == high else f"{low}-{high}"


def count_rows(loader, config) -> int:
    """The number of test rows (users) a loader evaluates."""
    return len(_test_input(loader, config)[1])


def length_loader(test_data, config, low: int, high: int | None = None):
    """A copy of ``test_data`` holding only the rows whose history length (``item_length``) is in ``[low, high]``.

    ``high=None``: no upper bound. Built as :func:`perturbed_loader` builds its copies: RecBole's loaders are
    rebuilt on a copy of their dataset holding those rows; a loader holding its input as ``interaction``
    (``eval_protocol: multi_target``) is copied with those rows and their users' histories and targets. An
    empty bucket gives a loader of 0 rows (:func:`count_rows`), which is not to be evaluated.
    """
    holds_input, inter = _test_input(test_data, config)
    length = inter[config["ITEM_LIST_LENGTH_FIELD"]].long()
    inside = length >= low
    if high is not None:
        inside &= length <= high
    index = inside.nonzero().flatten()
    rows = inter[index]
    if holds_input:
        loader = _held_input_copy(test_data, config, rows)
        loader.split = _split_rows(test_data.split, index.numpy())
        return loader
    dataset = test_data._dataset.copy(rows)
    return type(test_data)(config, dataset, test_data._sampler, shuffle=False)


def _split_rows(split, index):
    """The users ``index`` of a multi_target split (``recbole_cmi.data.protocol.TargetSplit``), in order."""
    history_ptr, history_take = _csr_take(split.history_ptr, index)
    target_ptr, target_take = _csr_take(split.target_ptr, index)
    return dataclasses.replace(
        split,
        users=split.users[index],
        history_ptr=history_ptr,
        history_rows=split.history_rows[history_take],
        history_items=split.history_items[history_take],
        target_ptr=target_ptr,
        target_items=split.target_items[target_take],
    )


def _csr_take(ptr, index):
    """``(new ptr, positions of the values)`` of the rows ``index`` of a CSR array."""
    ptr = np.asarray(ptr, dtype=np.int64)
    counts = ptr[1:][index] - ptr[:-1][index]
    new_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    take = np.repeat(ptr[:-1][index] - new_ptr[:-1], counts) + np.arange(new_ptr[-1])
    return new_ptr, take
