"""Top-K items for one user of a trained model's dataset (``python -m recbole_cmi.recommend``).

The model sees the user's whole interaction sequence (train + valid + test, its last
``MAX_ITEM_LIST_LENGTH`` items) and recommends the next item; every item the user has
interacted with is excluded. Scores are the model's ``full_sort_predict``; for multi-interest
models (``forward`` returns ``[B, K, d]`` and the score is the best interest's) each item also
gets the interest it came from: the argmax over interests of its score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
def recommend(model, dataset, user: str, topk: int = 20) -> Recommendation:
    """Rank all items for ``user`` (original id) after their whole history; history items excluded."""
    if topk < 1:
        raise ToolError(f"--topk must be >= 1, got {topk}")
    uid = user_index(dataset, user)
    seq, length, known = user_history(dataset, uid)
    scores, per_interest = score_users(model, seq, length, torch.tensor([uid]))
    scores = scores[0].clone()
    scores[0] = -torch.inf
    scores[known] = -torch.inf
    k = min(topk, int(torch.isfinite(scores).sum()))
    if k == 0:
        raise ToolError(f"user {user!r} has interacted with every item: nothing left to recommend")
    values, items = scores.topk(k)
    iid = dataset.iid_field
    return Recommendation(
        user=user,
        history=tokens(dataset, iid, seq[0, : int(length[0])]),
        known=len(known),
        items=tokens(dataset, iid, items),
        scores=values.tolist(),
        interests=per_interest[0][:, items].argmax(dim=0).tolist() if per_interest is not None else None,
    )


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
