"""ComiRec-DR (Cen et al., KDD 2020, "Controllable Multi-Interest Framework for Recommendation").

Follows the official TF code, THUDM/ComiRec ``src/model.py`` (``CapsuleNetwork`` with
``bilinear_type=2``, ``Model_ComiRec_DR``), as summarised in docs/baselines.md §1.3. The routing
softmax runs over the *interest* axis, as in the TF code and as the authors confirm
(THUDM/ComiRec#2); the popular PyTorch ports normalise over the sequence instead.
Training readout, losses and scoring are shared with ComiRec-SA (:class:`ComiRecBase`).
"""

from __future__ import annotations

import torch
from torch import nn

from recbole_cmi import options
from recbole_cmi.model.comirec_base import ComiRecBase


def squash(capsules):
    """Capsule squash ``v = |s|^2 / (1 + |s|^2) * s / sqrt(|s|^2 + 1e-9)`` over the last axis (official form)."""
    squared_norm = (capsules * capsules).sum(dim=-1, keepdim=True)
    return squared_norm / (1 + squared_norm) / torch.sqrt(squared_norm + 1e-9) * capsules


def dynamic_routing(item_hat, mask, routing_times, stop_gradient=True):
    """ComiRec-DR dynamic routing (docs/baselines.md §1.3).

    Args:
        item_hat: ``[B, K, L, d]`` the predictions ``ê_{j|t} = W_{t,j} e_t``.
        mask: ``[B, L]`` bool, True on valid positions.
        routing_times: iterations (the official code uses 3).
        stop_gradient: as in the official code, every iteration but the last routes with
            ``stop_gradient(ê)``, so gradients reach ``ê`` only through the final weighted sum.

    Returns:
        ``(interests [B, K, d], coupling [B, K, L])``: the squashed interest capsules and the
        coupling coefficients ``c = softmax_K(b)`` of the last iteration (0 on padded positions).
    """
    routing_logits = item_hat.new_zeros(item_hat.shape[:3])
    routed = item_hat.detach() if stop_gradient else item_hat
    valid = mask.unsqueeze(1)
    for iteration in range(routing_times):
        coupling = torch.softmax(routing_logits, dim=1).masked_fill(~valid, 0.0)
        last = iteration == routing_times - 1
        source = item_hat if last else routed
        interests = squash(torch.einsum("bkl,bkld->bkd", coupling, source))
        if not last:
            routing_logits = routing_logits + torch.einsum("bkld,bkd->bkl", source, interests)
    return interests, coupling


class CapsuleInterests(nn.Module):
    """ComiRec-DR's multi-interest extractor: per-position bilinear maps, then dynamic routing.

    ``bilinear[t]`` (``[K*d, d]``) maps the item at position t to its K predictions; it is drawn
    from N(0, 1) like the official ``tf.random_normal_initializer()``.
    """

    def __init__(self, embedding_size, num_interest, max_seq_length, routing_times=3):
        super().__init__()
        self.embedding_size = embedding_size
        self.num_interest = num_interest
        self.routing_times = routing_times
        self.bilinear = nn.Parameter(torch.empty(max_seq_length, num_interest * embedding_size, embedding_size))
        nn.init.normal_(self.bilinear, mean=0.0, std=1.0)

    def predictions(self, history):
        """``ê [B, K, L, d]`` with ``ê[b, j, t] = bilinear[t, j*d:(j+1)*d] @ history[b, t]``."""
        batch, length, _ = history.shape
        flat = torch.einsum("lmc,blc->blm", self.bilinear[:length], history)
        return flat.view(batch, length, self.num_interest, self.embedding_size).transpose(1, 2)

    def forward(self, history, mask):
        """``history [B, L, d]`` (already masked), ``mask [B, L]`` -> ``(V_u [B, K, d], c [B, K, L])``."""
        return dynamic_routing(self.predictions(history), mask, self.routing_times)


class ComiRecDR(ComiRecBase):
    """ComiRec-DR (Cen et al., KDD 2020): K capsule interests by dynamic routing, hard readout,
    max-over-interests scoring.

    Follows THUDM/ComiRec ``CapsuleNetwork(bilinear_type=2, relu_layer=False)``: routing logits
    start at zero, no ReLU projection; see :mod:`recbole_cmi.model.comirec_sa` for the loss.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.routing_times = options.integer(config, "routing_times", minimum=1)
        self.interest_extractor = CapsuleInterests(
            self.embedding_size, self.num_interest, self.max_seq_length, routing_times=self.routing_times
        )
        # Only the item table needs the Glorot default; the bilinear maps keep their N(0, 1) draw.
        self.apply(self._init_weights)

    def forward(self, item_seq, item_seq_len):
        history, mask = self._history(item_seq, item_seq_len)
        interests, _ = self.interest_extractor(history, mask)
        return interests
