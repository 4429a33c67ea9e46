"""What ComiRec-SA and ComiRec-DR share (Cen et al., KDD 2020, "Controllable Multi-Interest Framework for Recommendation").

Follows the official TF code, THUDM/ComiRec ``src/model.py`` (class ``Model``), as summarised in
docs/baselines.md §1.1, §1.4 and §1.5: one item table for the history and the targets, the hard readout, the
losses and the max-over-interests scoring. The interest extractors are in :mod:`recbole_cmi.model.comirec_sa`
and :mod:`recbole_cmi.model.comirec_dr`; the loss choice is explained in the former's docstring.
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_cmi import options
from recbole_cmi.model.layers import max_over_interests, max_over_interests_paired


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
