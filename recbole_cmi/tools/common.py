"""Helpers shared by the tools: errors, users' histories, item labels, scoring, plotting."""

from __future__ import annotations

import os

import numpy as np
import torch

from recbole_cmi.errors import RecboleCmiError
from recbole_cmi.retrieval import item_table


class ToolError(RecboleCmiError, ValueError):
    """Bad input to one of the tools (wrong model, unknown user, missing file)."""


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported only by the commands that draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load(checkpoint, trust: bool = False):
    """The checkpoint's :class:`recbole_cmi.pipeline.Pipeline` (config, dataset, loaders, trained model), read
    without running code in the file unless ``trust`` (``--trust_checkpoint``)."""
    from recbole_cmi.pipeline import restore_pipeline

    return restore_pipeline(str(checkpoint), trust=trust)


# --------------------------------------------------------------------------- histories
def all_histories(dataset):
    """Every user's whole interaction sequence, its last ``MAX_ITEM_LIST_LENGTH`` items left-aligned.

    Built from each user's last row of the sequential dataset (its history plus its target):
    the input a model sees to predict the item after all known interactions.
    Returns ``(user ids [U], item_seq [U, L], item_seq_len [U])``.
    """
    inter = dataset.inter_feat
    uid = inter[dataset.uid_field]
    _, counts = torch.unique_consecutive(uid, return_counts=True)
    last = counts.cumsum(0) - 1
    seq, length = _row_and_target(dataset, last)
    return uid[last], seq, length


def _row_and_target(dataset, rows):
    """The histories of ``rows`` with their targets appended; the oldest item of a full history drops out."""
    inter = dataset.inter_feat
    seq = inter[dataset.item_id_list_field][rows]
    length = inter[dataset.item_list_length_field][rows]
    target = inter[dataset.iid_field][rows]
    n, width = seq.shape
    length = length.long()
    extended = torch.cat([seq, seq.new_zeros(n, 1)], dim=1)
    extended[torch.arange(n), length] = target
    full = (length + 1 > width).unsqueeze(1)
    return torch.where(full, extended[:, 1:], extended[:, :width]), torch.clamp(length + 1, max=width)


def user_index(dataset, token: str) -> int:
    """Internal id of the user with original id ``token``; ToolError when unknown."""
    field = dataset.uid_field
    mapping = dataset.field2token_id[field]
    if token not in mapping or mapping[token] == 0:
        examples = ", ".join(repr(str(t)) for t in dataset.field2id_token[field][1:4])
        raise ToolError(
            f"unknown user {token!r} in dataset '{dataset.dataset_name}' "
            f"({len(mapping) - 1} users after filtering, e.g. {examples})"
        )
    return int(mapping[token])


def user_history(dataset, uid: int):
    """``(item_seq [1, L], item_seq_len [1], known items)`` of one user; known = every item they interacted with."""
    inter = dataset.inter_feat
    rows = (inter[dataset.uid_field] == uid).nonzero().flatten()
    if len(rows) == 0:
        raise ToolError(
            f"user {str(dataset.id2token(dataset.uid_field, uid))!r} has no interactions left after filtering"
        )
    first = rows[0]
    start = inter[dataset.item_id_list_field][first][: int(inter[dataset.item_list_length_field][first])]
    known = torch.unique(torch.cat([start, inter[dataset.iid_field][rows]]))
    seq, length = _row_and_target(dataset, rows[-1:])
    return seq, length, known


def tokens(dataset, field: str, ids) -> list[str]:
    return [str(t) for t in dataset.id2token(field, np.asarray(ids, dtype=np.int64))]


# --------------------------------------------------------------------------- item labels
def read_item_labels(config, dataset, field: str = "category"):
    """The ``field`` column of ``<data_path>/<dataset>/<dataset>.item`` per internal item id.

    ``config["data_path"]`` already ends in the dataset's folder (RecBole joins them).

    Returns ``(codes [n_items] with -1 where unknown, names)`` or ``None`` when the file or the
    column is absent. Read with pandas: the default config does not load the item file.
    """
    import pandas as pd

    name = config["dataset"]
    path = os.path.join(dataset.dataset_path, f"{name}.item")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split(config["field_separator"] or "\t")
    columns = {h.split(":")[0]: h for h in header}
    iid_field = dataset.iid_field
    if field not in columns or iid_field not in columns:
        return None
    frame = pd.read_csv(
        path,
        sep=config["field_separator"] or "\t",
        usecols=[columns[iid_field], columns[field]],
        dtype=str,
        keep_default_na=False,
        engine="python" if len(config["field_separator"] or "\t") > 1 else "c",
    )
    frame.columns = [iid_field, field]
    names = sorted(set(frame[field]), key=_natural_key)
    code_of = {n: i for i, n in enumerate(names)}
    token2id = dataset.field2token_id[iid_field]
    codes = np.full(dataset.item_num, -1, dtype=np.int64)
    for token, label in zip(frame[iid_field], frame[field]):
        item = token2id.get(token)
        if item:
            codes[item] = code_of[label]
    if (codes[1:] < 0).all():
        return None
    return codes, names


def _natural_key(text: str):
    digits = "".join(ch for ch in text if ch.isdigit())
    return (text.rstrip("0123456789"), int(digits) if digits else -1, text)


# --------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_users(model, item_seq, item_seq_len, user_ids=None):
    """``(scores [B, n_items], per-interest scores [B, K, n_items] or None)`` for sequential models.

    ``scores`` is the model's own ``full_sort_predict``; the per-interest scores are given for
    models whose ``forward`` returns ``[B, K, d]`` interests and whose score is their maximum.
    """
    from recbole.data.interaction import Interaction
    from recbole.utils import ModelType

    if getattr(model, "type", None) != ModelType.SEQUENTIAL:
        raise ToolError(f"{type(model).__name__} is not a sequential model: the tools score histories")
    model.eval()
    fields = {model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: item_seq_len}
    if user_ids is not None:
        fields[model.USER_ID] = user_ids
    interaction = Interaction(fields)
    scores = model.full_sort_predict(interaction).view(item_seq.shape[0], -1)
    per_interest = None
    try:
        interests = model.forward(item_seq, item_seq_len)
    except TypeError:
        interests = None
    if isinstance(interests, torch.Tensor) and interests.dim() == 3 and hasattr(model, "item_embedding"):
        candidate = torch.einsum("bkd,nd->bkn", interests, item_table(model))
        if candidate.shape[-1] == scores.shape[-1] and torch.allclose(
            candidate.amax(dim=1), scores, atol=1e-4, rtol=1e-4
        ):
            per_interest = candidate
    return scores, per_interest
