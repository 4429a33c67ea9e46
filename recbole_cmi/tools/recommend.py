"""Top-K items for one user of a trained model's dataset (``python -m recbole_cmi.recommend``).

The model sees the user's whole interaction sequence (train + valid + test, its last
``MAX_ITEM_LIST_LENGTH`` items) and recommends the next item; every item the user has
interacted with is excluded. Scores are the model's ``full_sort_predict``; for multi-interest
models (``forward`` returns ``[B, K, d]`` and the score is the best interest's) each item also
gets the interest it came from: the argmax over interests of its score.

With ``retrieval`` set to faiss (``--retrieval faiss``) the items come from the same per-interest search as
full-sort evaluation (:func:`recbole_cmi.retrieval.retrieve`): each interest's top items from a faiss index,
merged by the best interest's exact score, the known items excluded from the search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from recbole_cmi.retrieval import (
    ItemIndex,
    RetrievalSettings,
    build_item_index,
    interest_vectors,
    is_multi_interest,
    item_table,
    retrieve,
)
from recbole_cmi.tools.common import ToolError, score_users, tokens, user_history, user_index


@dataclass
class Recommendation:
    user: str
    history: list[str]  # the model's input, oldest first
    known: int  # items excluded: everything the user interacted with
    items: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    interests: list[int] | None = None


@torch.no_grad()
def recommend(
    model,
    dataset,
    user: str,
    topk: int = 20,
    retrieval: RetrievalSettings | None = None,
    index: ItemIndex | None = None,
) -> Recommendation:
    """Rank all items for ``user`` (original id) after their whole history; history items excluded.

    ``retrieval``: exact (None or mode ``exact``: every item scored by ``full_sort_predict``) or faiss; a
    faiss ``index`` already built for ``model`` may be passed to serve several users.
    """
    if topk < 1:
        raise ToolError(f"--topk must be >= 1, got {topk}")
    uid = user_index(dataset, user)
    seq, length, known = user_history(dataset, uid)
    if retrieval is not None and retrieval.mode == "faiss":
        items, values, interests = _retrieve(model, seq, length, known, topk, retrieval, index)
    else:
        items, values, interests = _rank_exactly(model, seq, length, known, topk, uid)
    if len(items) == 0:
        raise ToolError(f"user {user!r} has interacted with every item: nothing left to recommend")
    iid = dataset.iid_field
    return Recommendation(
        user=user,
        history=tokens(dataset, iid, seq[0, : int(length[0])]),
        known=len(known),
        items=tokens(dataset, iid, items),
        scores=values.tolist(),
        interests=interests,
    )


def _rank_exactly(model, seq, length, known, topk, uid):
    scores, per_interest = score_users(model, seq, length, torch.tensor([uid]))
    scores = scores[0].clone()
    scores[0] = -torch.inf
    scores[known] = -torch.inf
    values, items = scores.topk(min(topk, int(torch.isfinite(scores).sum())))
    interests = per_interest[0][:, items].argmax(dim=0).tolist() if per_interest is not None else None
    return items, values, interests


def _retrieve(model, seq, length, known, topk, retrieval, index):
    model.eval()
    index = index if index is not None else build_item_index(model, retrieval)
    found = retrieve(index, interest_vectors(model, seq, length), item_table(model), topk, known.unsqueeze(0))
    kept = torch.isfinite(found.scores[0])
    interests = found.interests[0][kept].tolist() if is_multi_interest(model) else None
    return found.items[0][kept], found.scores[0][kept], interests


def format_recommendation(rec: Recommendation, model_name: str) -> str:
    lines = [
        f"user {rec.user}: {model_name}, history of {len(rec.history)} items (model input, newest last: "
        f"... {' '.join(rec.history[-5:])}); {rec.known} known items excluded",
        "rank\titem\tscore" + ("\tinterest" if rec.interests is not None else ""),
    ]
    for rank, (item, score) in enumerate(zip(rec.items, rec.scores), start=1):
        row = f"{rank}\t{item}\t{score:.4f}"
        if rec.interests is not None:
            row += f"\t{rec.interests[rank - 1]}"
        lines.append(row)
    return "\n".join(lines)
