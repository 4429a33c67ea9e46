"""CL4SRec (Xie et al., ICDE 2022, "Contrastive Learning for Sequential Recommendation", arXiv 2010.14395).

A SASRec encoder (RecBole's ``TransformerEncoder`` over item + position embeddings; the user
vector is the output at the last valid position) trained with

    L = L_rec + λ · L_cl                                              (paper, Eq. 11)

``L_rec`` is the next-item loss (``loss_type`` CE over all items, or BPR against RecBole's
sampled negative). ``L_cl`` is NT-Xent over the 2N views of a batch of N sequences (Eq. 10):
each view's positive is the other view of its sequence, the other 2(N−1) views are negatives,
averaged over the 2N anchors — :func:`recbole_cmi.model.layers.info_nce` with
``in_view_negatives=True, combine="mean"``, the computation of the DuoRec / RecBole-DA lineage
(``sim`` dot or cos, ``tau`` 1.0, ``lmd`` 0.1; docs/baselines.md §2.2).

The views come from the shared train-only hook :class:`recbole_cmi.data.augmentation.ContrastiveViews`
(``cl_augmentation: random``: two different operations among crop / mask / reorder per
sequence, Eq. 5-7). It fixes the defects of the public code (docs/baselines.md §2.3): views are new
tensors (the batch is never edited in place), a crop keeps at least one item, the mask token is
the dedicated id ``n_items`` (the item table has ``n_items + 1`` rows, and the output layer and
``full_sort_predict`` use only the first ``n_items``), and NT-Xent builds its masks per call, so
a last batch smaller than ``train_batch_size`` needs nothing special.
"""

from __future__ import annotations

import numbers

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_cmi import options
from recbole_cmi.data.augmentation import ContrastiveViews, view_fields
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.model.layers import info_nce

HIDDEN_ACTS = ("gelu", "relu", "swish", "tanh", "sigmoid")  # RecBole's FeedForward.get_hidden_act


class CL4SRec(SequentialRecommender):
    """CL4SRec: SASRec + λ·NT-Xent between two augmented views of each sequence (see the module docstring)."""

    LOSS_TYPES = ("CE", "BPR")
    SIMILARITIES = ("dot", "cos")
    loss_names = ("rec", "cl")
    loss_weight_keys = {"cl": "cl_weight"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.n_layers = options.integer(config, "n_layers", minimum=1)
        self.n_heads = options.integer(config, "n_heads", minimum=1)
        self.hidden_size = options.integer(config, "hidden_size", minimum=1)
        if self.hidden_size % self.n_heads:
            raise ConfigValueError(f"n_heads must divide hidden_size={self.hidden_size}, got {self.n_heads!r}")
        self.inner_size = options.integer(config, "inner_size", minimum=1)
        self.hidden_dropout_prob = options.real(config, "hidden_dropout_prob", 0.0, 1.0, upper_open=True)
        self.attn_dropout_prob = options.real(config, "attn_dropout_prob", 0.0, 1.0, upper_open=True)
        self.hidden_act = options.choice(config, "hidden_act", HIDDEN_ACTS)
        self.layer_norm_eps = options.real(config, "layer_norm_eps", 0.0, None, lower_open=True)
        self.initializer_range = options.real(config, "initializer_range", 0.0, None)
        self.loss_type = options.choice(config, "loss_type", self.LOSS_TYPES)
        self.cl_weight = options.real(config, "cl_weight", 0.0, None)
        self.cl_temperature = options.real(config, "cl_temperature", 0.0, None, lower_open=True)
        self.cl_similarity = options.choice(config, "cl_similarity", self.SIMILARITIES)
        self.view_fields = view_fields(config)
        if options.integer(config, "cl_history_length", minimum=0, default=0):
            raise ConfigValueError(
                f"cl_history_length={config['cl_history_length']!r} (CL4SRec: 0; its views go through the "
                f"position table of MAX_ITEM_LIST_LENGTH={self.max_seq_length} positions)"
            )

        # Row n_items is the [mask] token of the mask augmentation (dataset.item_num, one past the
        # catalogue); it is an input only, never a candidate.
        self.item_embedding = nn.Embedding(self.n_items + 1, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.loss_fct = nn.CrossEntropyLoss() if self.loss_type == "CE" else BPRLoss()
        self.apply(self._init_weights)

    @classmethod
    def train_batch_hooks(cls, config, dataset):
        """The two contrastive views, on training batches only (none when ``cl_weight`` is 0)."""
        weight = config["cl_weight"]  # a bad value is left for __init__ to report
        positive = isinstance(weight, numbers.Real) and not isinstance(weight, bool) and weight > 0
        return [ContrastiveViews(config, dataset)] if positive else []

    def _init_weights(self, module):
        """SASRec's initialisation (RecBole ``SASRec._init_weights``): N(0, initializer_range), LayerNorm 1/0."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def forward(self, item_seq, item_seq_len):
        """SASRec encoder: ``[B, L]`` left-aligned ids -> ``[B, d]``, the output at position ``len - 1``."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device).unsqueeze(0).expand_as(item_seq)
        hidden = self.dropout(self.LayerNorm(self.item_embedding(item_seq) + self.position_embedding(positions)))
        output = self.trm_encoder(hidden, self.get_attention_mask(item_seq), output_all_encoded_layers=True)[-1]
        return self.gather_indexes(output, item_seq_len - 1)

    def item_table(self) -> torch.Tensor:
        """The candidate items' vectors ``[n_items, d]``: the item table without the mask row."""
        return self.item_embedding.weight[: self.n_items]

    def rec_loss(self, seq_output, interaction):
        """Next-item loss: softmax over the ``n_items`` candidates (CE) or BPR against the sampled negative."""
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            pos_score = (seq_output * self.item_embedding(pos_items)).sum(-1)
            neg_score = (seq_output * self.item_embedding(interaction[self.NEG_ITEM_ID])).sum(-1)
            return self.loss_fct(pos_score, neg_score)
        return self.loss_fct(seq_output @ self.item_table().T, pos_items)

    def calculate_loss(self, interaction):
        """``(L_rec, λ·L_cl)`` (Eq. 11); the original sequence and the two views share one encoder pass."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.cl_weight <= 0:
            rec = self.rec_loss(self.forward(item_seq, item_seq_len), interaction)
            return rec, rec.new_zeros(())
        (seq1, len1), (seq2, len2) = self.view_fields
        sequences = [item_seq, interaction[seq1], interaction[seq2]]
        width = max(seq.shape[1] for seq in sequences)
        stacked = torch.cat([nn.functional.pad(seq, (0, width - seq.shape[1])) for seq in sequences])
        lengths = torch.cat([item_seq_len, interaction[len1], interaction[len2]])
        seq_output, view1, view2 = self.forward(stacked, lengths).split(item_seq.shape[0])
        rec = self.rec_loss(seq_output, interaction)
        cl = info_nce(
            view1, view2, self.cl_temperature, similarity=self.cl_similarity, in_view_negatives=True, combine="mean"
        )
        return rec, self.cl_weight * cl

    def predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (seq_output * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        """``[B, n_items]`` scores; the mask token's row is never a candidate."""
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self.item_table().T
