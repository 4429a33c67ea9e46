"""ComiRec-SA (Cen et al., KDD 2020, "Controllable Multi-Interest Framework for Recommendation").

Follows the official TF code, THUDM/ComiRec ``src/model.py`` (``Model`` and
``Model_ComiRec_SA``), as summarised in docs/baselines.md §1.1-§1.4. :class:`ComiRecBase`
(:mod:`recbole_cmi.model.comirec_base`) holds what ComiRec-SA and ComiRec-DR share: the item table, the hard
readout, the losses and the scoring.

One deliberate change: the official loss is TF's sampled softmax with ``10 x batch_size``
log-uniform negatives (docs/baselines.md §1.4). ``loss_type: CE`` uses the full softmax over the
catalogue instead, which that sampled softmax approximates: the official Book setting samples
1,280 classes per step, more than the bundled micro_video's 1,200 items. ``loss_type: BPR``
scores the readout against one sampled negative.
"""

from __future__ import annotations

import torch
from torch import nn

from recbole_cmi import options
from recbole_cmi.model.comirec_base import ComiRecBase

# The official code's value for padded attention logits; exp() of it underflows to exactly 0.
PADDING_LOGIT = -(2.0**32) + 1


class SelfAttentiveInterests(nn.Module):
    """ComiRec-SA's multi-interest extractor: ``A = softmax(W2 tanh(W1 (H + P)))``, ``V_u = A H``.

    The softmax runs over the valid positions of each of the K attention rows; the position
    embedding P only shapes the attention, the values are the plain masked H (docs/baselines.md §1.2).
    """

    def __init__(self, embedding_size, num_interest, max_seq_length, add_pos=True):
        super().__init__()
        self.position_embedding = nn.Embedding(max_seq_length, embedding_size) if add_pos else None
        self.hidden = nn.Linear(embedding_size, 4 * embedding_size)
        self.heads = nn.Linear(4 * embedding_size, num_interest)

    def forward(self, history, mask):
        """``history [B, L, d]`` (already masked), ``mask [B, L]`` bool -> ``(V_u [B, K, d], A [B, K, L])``."""
        keys = history
        if self.position_embedding is not None:
            keys = history + self.position_embedding.weight[: history.shape[1]]
        logits = self.heads(torch.tanh(self.hidden(keys))).transpose(1, 2)
        logits = logits.masked_fill(~mask.unsqueeze(1), PADDING_LOGIT)
        attention = torch.softmax(logits, dim=-1)
        return attention @ history, attention


class ComiRecSA(ComiRecBase):
    """ComiRec-SA (Cen et al., KDD 2020): K self-attentive interests, hard readout, max-over-interests scoring.

    Follows THUDM/ComiRec ``Model_ComiRec_SA`` (attention width ``4d``, learned positions with
    ``add_pos``); see the module docstring for the loss.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.add_pos = options.flag(config, "add_pos")
        self.interest_extractor = SelfAttentiveInterests(
            self.embedding_size, self.num_interest, self.max_seq_length, add_pos=self.add_pos
        )
        self.apply(self._init_weights)

    def forward(self, item_seq, item_seq_len):
        history, mask = self._history(item_seq, item_seq_len)
        interests, _ = self.interest_extractor(history, mask)
        return interests
