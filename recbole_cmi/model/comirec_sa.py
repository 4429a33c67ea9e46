"""ComiRec-SA (Cen et al., KDD 2020, "Controllable Multi-Interest Framework for Recommendation").

Follows the official TF code, THUDM/ComiRec ``src/model.py`` (``Model`` and
``Model_ComiRec_SA``), as summarised in docs/baselines.md §1.1-§1.4. :class:`ComiRecBase` holds what
ComiRec-SA and ComiRec-DR share: the item table, the hard readout, the losses and the scoring.

One deliberate change: the official loss is TF's sampled softmax with ``10 x batch_size``
log-uniform negatives (docs/baselines.md §1.4). ``loss_type: CE`` uses the full softmax over the
catalogue instead, which that sampled softmax approximates: the official Book setting samples
1,280 classes per step, more than the bundled micro_video's 1,200 items. ``loss_type: BPR``
scores the readout against one sampled negative.
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_cmi import options
from recbole_cmi.model.layers import max_over_interests, max_over_interests_paired

# The official code's value for padded attention logits; exp() of it underflows to exactly 0.
PADDING_LOGIT = -(2.0**32) + 1


class ComiRecBase(SequentialRecommender):
    """The parts of ComiRec-SA and ComiRec-DR that do not depend on the interest extractor.

    Subclasses build their extractor and implement ``forward(item_seq, item_seq_len) -> [B, K, d]``.
    """

    LOSS_TYPES = ("CE", "BPR")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = options.integer(config, "embedding_size", minimum=1)
        self.num_interest = options.integer(config, "num_interest", minimum=1)
        self.score_chunk_size = options.integer(config, "score_chunk_size", minimum=0)
        self.loss_type = options.choice(config, "loss_type", self.LOSS_TYPES)

        # One table for history and targets (docs/baselines.md §1.1); row 0 is RecBole's padding id.
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size, padding_idx=0)
        self.loss_fct = nn.CrossEntropyLoss() if self.loss_type == "CE" else BPRLoss()

    @staticmethod
    def _init_weights(module):
        # TF's default initialiser for get_variable and tf.layers.dense is Glorot-uniform with zero
        # biases; xavier_uniform_ uses the same fan_in + fan_out for these shapes.
        if isinstance(module, nn.Embedding):
            nn.init.xavier_uniform_(module.weight)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def _history(self, item_seq, item_seq_len):
        """Masked history embeddings ``H * mask`` ``[B, L, d]`` and the validity mask ``[B, L]``."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        mask = positions.unsqueeze(0) < item_seq_len.unsqueeze(1)
        return self.item_embedding(item_seq) * mask.unsqueeze(-1), mask

    @staticmethod
    def readout(interests, target_embedding):
        """Hard readout (docs/baselines.md §1.4): the interest with the largest inner product with the target.

        ``interests [B, K, d]``, ``target_embedding [B, d]`` -> ``[B, d]``. The official
        ``argmax(softmax(score**1))`` equals ``argmax(score)``; ties go to the lowest index, as in TF.
        """
        choice = torch.einsum("bkd,bd->bk", interests, target_embedding).argmax(dim=1)
        return interests[torch.arange(interests.shape[0], device=interests.device), choice]

    def calculate_loss(self, interaction):
        interests = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        pos_items = interaction[self.POS_ITEM_ID]
        pos_embedding = self.item_embedding(pos_items)
        user = self.readout(interests, pos_embedding)
        if self.loss_type == "BPR":
            neg_embedding = self.item_embedding(interaction[self.NEG_ITEM_ID])
            return self.loss_fct((user * pos_embedding).sum(-1), (user * neg_embedding).sum(-1))
        return self.loss_fct(user @ self.item_embedding.weight.T, pos_items)

    def predict(self, interaction):
        interests = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return max_over_interests_paired(interests, self.item_embedding(interaction[self.ITEM_ID]))

    def full_sort_predict(self, interaction):
        """``[B, n_items]``: each item scored by its best interest (equals the official per-interest
        top-N merge, docs/baselines.md §1.5)."""
        interests = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return max_over_interests(interests, self.item_embedding.weight, self.score_chunk_size)


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
