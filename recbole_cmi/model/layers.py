"""Pieces shared by the multi-interest and contrastive models.

* :func:`max_over_interests` — the score of an item for a multi-interest user is the best of its
  interests' scores (docs/cmi.md §3.2, §4.1; docs/baselines.md §1.5). CMI and ComiRec use it in training and in
  ``full_sort_predict``, computed over item chunks so that memory stays ``B x K x chunk``.
* :func:`info_nce` — InfoNCE / NT-Xent between two views: CMI's symmetric cross-view form
  (docs/cmi.md §2.2) and CL4SRec's NT-Xent with in-view negatives (docs/baselines.md §2.1) are options of
  one function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def max_over_interests(interests: torch.Tensor, items: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """``scores[b, n] = max_k <interests[b, k], items[n]>``.

    Args:
        interests: ``[B, K, d]`` user interest vectors.
        items: ``[N, d]`` candidate item vectors shared by the batch.
        chunk_size: items per chunk (``None`` or ``<= 0``: all at once).

    Returns:
        ``[B, N]`` scores.
    """
    n_items = items.shape[0]
    if not chunk_size or chunk_size <= 0 or chunk_size >= n_items:
        return torch.einsum("bkd,nd->bkn", interests, items).amax(dim=1)
    out = interests.new_empty(interests.shape[0], n_items)
    for start in range(0, n_items, chunk_size):
        block = items[start : start + chunk_size]
        out[:, start : start + block.shape[0]] = torch.einsum("bkd,nd->bkn", interests, block).amax(dim=1)
    return out


def max_over_interests_paired(interests: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``scores[b] = max_k <interests[b, k], items[b]>`` for one candidate per row (``[B, d]``)."""
    return torch.einsum("bkd,bd->bk", interests, items).amax(dim=1)


def info_nce(
    view_a: torch.Tensor,
    view_b: torch.Tensor,
    temperature: float,
    similarity: str = "cos",
    in_view_negatives: bool = False,
    combine: str = "sum",
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrastive loss between row-aligned views: row ``i`` of ``view_a`` and of ``view_b`` are positives.

    Args:
        view_a, view_b: ``[N, d]``.
        temperature: logits are similarities divided by this.
        similarity: ``"cos"`` (L2-normalise first) or ``"dot"``.
        in_view_negatives: False: the negatives of ``a_i`` are the other rows of ``view_b`` (CMI).
            True: also the other rows of its own view (SimCLR / NT-Xent, CL4SRec).
        combine: the two directions (a->b, b->a), each a mean over its N anchors, are summed
            (``"sum"``, CMI) or averaged (``"mean"``, NT-Xent's mean over 2N anchors).
        exclude: optional ``[N, N]`` bool: ``exclude[i, j]`` drops row ``j`` of the other view from the
            negatives of anchor ``i`` (and ``i`` from those of ``j`` in the other direction), e.g. rows of
            another history of the same user, which are false negatives. The diagonal (the positives)
            must be False. Cross-view negatives only (``in_view_negatives=False``).
    """
    if similarity == "cos":
        view_a, view_b = F.normalize(view_a, dim=-1), F.normalize(view_b, dim=-1)
    elif similarity != "dot":
        raise ValueError(f"similarity must be 'cos' or 'dot', got {similarity!r}")
    if combine not in ("sum", "mean"):
        raise ValueError(f"combine must be 'sum' or 'mean', got {combine!r}")
    if exclude is not None and in_view_negatives:
        raise ValueError("exclude applies to cross-view negatives only (in_view_negatives=False)")
    if exclude is not None and not exclude.any():
        exclude = None
    if similarity == "cos" and not in_view_negatives and 2.0 / temperature <= _FUSED_MAX_LOGIT_RANGE:
        total = _SymmetricCrossViewInfoNCE.apply(view_a, view_b, temperature, exclude)
        return total if combine == "sum" else total / 2
    n = view_a.shape[0]
    # Scaling one side by 1/τ costs N·d, not N²; the two directions share one logit matrix
    # (row- and column-wise log-sum-exp), so no transposed copy is materialised.
    cross = (view_a / temperature) @ view_b.T
    if exclude is not None:
        cross = cross.masked_fill(exclude, float("-inf"))
    positives = cross.diagonal()
    row_lse, col_lse = torch.logsumexp(cross, dim=1), torch.logsumexp(cross, dim=0)
    if in_view_negatives:
        self_mask = torch.eye(n, dtype=torch.bool, device=view_a.device)
        within_a = ((view_a / temperature) @ view_a.T).masked_fill(self_mask, float("-inf"))
        within_b = ((view_b / temperature) @ view_b.T).masked_fill(self_mask, float("-inf"))
        row_lse = torch.logaddexp(row_lse, torch.logsumexp(within_a, dim=1))
        col_lse = torch.logaddexp(col_lse, torch.logsumexp(within_b, dim=1))
    total = (row_lse - positives).mean() + (col_lse - positives).mean()
    return total if combine == "sum" else total / 2


# Cosine logits lie in [-1/τ, 1/τ]: while that range stays below ~80, exp() of the unshifted logits
# can neither overflow nor underflow a row's sum in float32, so one exp serves both directions.
_FUSED_MAX_LOGIT_RANGE = 60.0


class _SymmetricCrossViewInfoNCE(torch.autograd.Function):
    """CMI's symmetric cross-view InfoNCE on unit vectors with one N x N exponential.

    ``loss = mean_i(log r_i - S_ii) + mean_j(log c_j - S_jj)`` with ``S = A Bᵀ / τ``, ``E = exp(S)``,
    ``r = E 1`` and ``c = Eᵀ 1``; its gradient is ``dS = (E ⊙ (1/r ⊕ 1/c) - 2I) / N``. Autograd through
    two ``logsumexp`` calls computes four exponentials of the N x N matrix and keeps more of them.
    """

    @staticmethod
    def forward(ctx, view_a, view_b, temperature, exclude=None):
        exp_logits = ((view_a / temperature) @ view_b.T).exp_()
        if exclude is not None:  # an excluded pair adds nothing to r or c, and so gets no gradient
            exp_logits.masked_fill_(exclude, 0.0)
        row_sum, col_sum = exp_logits.sum(dim=1), exp_logits.sum(dim=0)
        positives = (view_a * view_b).sum(dim=1) / temperature
        ctx.save_for_backward(view_a, view_b, exp_logits, row_sum, col_sum)
        ctx.temperature = temperature
        n = view_a.shape[0]
        return (row_sum.log().sum() + col_sum.log().sum() - 2 * positives.sum()) / n

    @staticmethod
    def backward(ctx, grad_output):
        view_a, view_b, exp_logits, row_sum, col_sum = ctx.saved_tensors
        n, d = view_a.shape
        scale = grad_output / (n * ctx.temperature)  # d loss / d(a·b) = dS / τ
        row_weight, col_weight = (scale / row_sum).unsqueeze(1), (scale / col_sum).unsqueeze(1)
        # dA = (E ⊙ (w_r ⊕ w_c)) B - 2sB = w_r ⊙ (E B) + E (w_c ⊙ B) - 2sB, and dB likewise with Eᵀ:
        # two GEMMs with 2d columns and no N x N temporary (E is only read).
        e_b = exp_logits @ torch.cat([view_b, col_weight * view_b], dim=1)
        e_t_a = exp_logits.T @ torch.cat([row_weight * view_a, view_a], dim=1)
        grad_a = row_weight * e_b[:, :d] + e_b[:, d:] - 2.0 * scale * view_b
        grad_b = e_t_a[:, :d] + col_weight * e_t_a[:, d:] - 2.0 * scale * view_a
        return grad_a, grad_b, None, None
