"""CMI: contrastive multiple interests (Li et al., SIGIR 2022, arXiv 2205.09593).

Follows the authors' code (libeibei95/CMI, class ``DevCL``, options ``--interest_type Plus
--sampler R``) as described in docs/cmi.md, whose sections the references below name.

* Item and m implicit category embeddings live on the unit sphere (docs/cmi.md §1.1): before
  each forward pass their rows are re-projected in place (``sphere_projection: True``, as run),
  or only normalised inside the forward pass (``False``: raw weights kept).
* Soft assignment p = softmax_l(cos(v, g_l) / ε), zero on padding (docs/cmi.md §1.2).
* Interest l: u^l = normalise(Σ_k p_k^l v_k) (docs/cmi.md §1.4). General interest
  h = normalise(ReLU(Linear(GRU(V)))[last valid]) with a 1-layer bias-free GRU (docs/cmi.md §1.5).
  Final ũ^l = normalise(u^l + h).
* Score of item j: max_l cos(ũ^l, v_j), per candidate, in training and inference alike
  (docs/cmi.md §3.2, §4.1).
* Losses (docs/cmi.md §3.3): recommendation + λ_cl·InfoNCE over (user, interest) pairs of two
  views (docs/cmi.md §2.2) + λ_orth·‖GGᵀ − I‖²_F/m² + λ_uni·std(p̄)/mean(p̄) (docs/cmi.md §1.3).
  ``loss_type``: ``SAMPLED`` — the authors' sampled softmax over the row's positive and the
  negatives of every row in the batch (docs/cmi.md §3.2); ``CE`` — RecBole's full softmax over all
  items;
  ``BPR`` — against RecBole's sampled negative. Logits are cosine scores / τ in all three.
* With the contrastive loss on, the recommendation loss is computed on the two views, both
  with the row's target as positive (docs/cmi.md §3.4: the authors train on the views; their ``O``
  sampler, the no-CL ablation, trains on the whole history). RecBole's pipeline supplies the
  target: the next item of an all-prefix expansion, not a random later item (docs/cmi.md §3.1).
  ``rec_loss_input: history`` (ours) scores the whole history against the target instead, as at
  inference, and keeps the views for the contrastive loss only (one more encoder pass per row).
* ``sparse_item_updates: True`` (ours, off by default): the item table gets sparse gradients and
  :class:`recbole_cmi.optim.LazyAdam` updates only the rows a step reads, which are also the only
  rows re-projected, so a step costs O(batch), not O(items); rows outside the batch skip the
  momentum and weight-decay moves that dense Adam gives them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from recbole_cmi import options
from recbole_cmi.data.augmentation import ContrastiveViews, view_fields
from recbole_cmi.data.sampler import SHARED_NEG_FIELD, SharedNegatives
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.model.layers import info_nce, max_over_interests, max_over_interests_paired

LOSS_TYPES = ("SAMPLED", "CE", "BPR")
REC_LOSS_INPUTS = ("views", "history")
CATEGORY_INITS = ("orthogonal", "uniform")


def _require(condition: bool, message: str):
    if not condition:
        raise ConfigValueError(message)


def orthogonality_loss(categories: torch.Tensor) -> torch.Tensor:
    """‖GGᵀ − I‖²_F / m² for unit-norm category rows G [m, d] (docs/cmi.md §1.3)."""
    m = categories.shape[0]
    gram = categories @ categories.T
    return ((gram - torch.eye(m, device=categories.device)) ** 2).sum() / m**2


def uniformity_loss(assignment: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """std(p̄) / mean(p̄), p̄ the mean assignment over all valid positions (docs/cmi.md §1.3)."""
    usage = assignment[valid].mean(dim=0)
    return usage.std() / usage.mean()


class CMI(SequentialRecommender):
    loss_names = ("rec", "cl", "orth", "uni")
    loss_weight_keys = {"cl": "cl_weight", "orth": "orth_weight", "uni": "uniform_weight"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = options.integer(config, "embedding_size", minimum=1)
        self.num_interest = options.integer(config, "num_interest", minimum=1)
        for key in ("assign_temperature", "temperature", "cl_temperature"):
            setattr(self, key, options.real(config, key, low=0, lower_open=True))
        for key in ("cl_weight", "orth_weight", "uniform_weight"):
            setattr(self, key, options.real(config, key, low=0))
        self.use_general_interest = options.flag(config, "use_general_interest")
        self.sphere_projection = options.flag(config, "sphere_projection")
        self.category_init = options.choice(config, "category_init", CATEGORY_INITS)
        self.loss_type = options.choice(config, "loss_type", LOSS_TYPES)
        self.rec_loss_input = options.choice(config, "rec_loss_input", REC_LOSS_INPUTS)
        self.score_chunk_size = options.integer(config, "score_chunk_size", minimum=0, default=0)
        self.sparse_item_updates = options.flag(config, "sparse_item_updates", default=False)
        self.cl_mask_same_user = options.flag(config, "cl_mask_same_user", default=True)
        _require(
            not (self.sparse_item_updates and self.loss_type == "CE"),
            "sparse_item_updates: True needs loss_type SAMPLED or BPR: CE scores every item, so its gradient is dense",
        )
        _require(
            not (self.sparse_item_updates and (int(config["world_size"] or 1) > 1 or int(config["nproc"] or 1) > 1)),
            "sparse_item_updates: True runs in one process only (DDP does not reduce the sparse item gradients); "
            "set it to False for a distributed run",
        )
        self.use_views = self.cl_weight > 0
        self.view_fields = view_fields(config)
        self.neg_item_field = self.NEG_ITEM_ID

        d = self.embedding_size
        # One extra row for CL4SRec's mask token when a mask augmentation is chosen for the views.
        self.item_embedding = nn.Embedding(self.n_items + 1, d, padding_idx=0, sparse=self.sparse_item_updates)
        self.category_embedding = nn.Embedding(self.num_interest, d)
        self.gru = nn.GRU(d, d, num_layers=1, bias=False, batch_first=True)
        self.general_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU())
        self._init_parameters()

    def _init_parameters(self):
        # The authors' init_parameter: U(-1/sqrt(d), 1/sqrt(d)) for every parameter; the
        # orthogonal init it meant for the categories never matched a parameter name (docs/cmi.md §1.6).
        bound = 1.0 / math.sqrt(self.embedding_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)
        if self.category_init == "orthogonal":
            nn.init.orthogonal_(self.category_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    @classmethod
    def train_batch_hooks(cls, config, dataset):
        hooks = []
        if (config["cl_weight"] or 0) > 0:
            hooks.append(ContrastiveViews(config, dataset))
        if config["loss_type"] == "SAMPLED":
            hooks.append(SharedNegatives(config, dataset))
        return hooks

    # ----------------------------------------------------------------- embeddings
    def _project_to_sphere(self, items: torch.Tensor | None = None):
        """Re-project the category rows and the item rows ``items`` (all when None) onto the unit sphere.

        Under sparse item updates only the batch's rows changed since they were last projected, so
        projecting the rows a step reads gives the same vectors as projecting the whole table."""
        if not self.sphere_projection:
            return
        with torch.no_grad():
            categories = self.category_embedding.weight
            categories.copy_(F.normalize(categories, dim=-1))
            table = self.item_embedding.weight
            if items is None:
                table.copy_(F.normalize(table, dim=-1))
            else:
                rows = items.unique()
                table[rows] = F.normalize(table[rows], dim=-1)

    def item_vectors(self, items=None) -> torch.Tensor:
        """Unit item vectors (row 0, padding, stays zero); all catalogue items when ``items`` is None."""
        weight = self.item_embedding.weight[: self.n_items] if items is None else self.item_embedding(items)
        return F.normalize(weight, dim=-1)

    def category_vectors(self) -> torch.Tensor:
        return F.normalize(self.category_embedding.weight, dim=-1)

    # ----------------------------------------------------------------- encoder
    def assignment(self, item_seq: torch.Tensor) -> torch.Tensor:
        """p[b, k, l] = softmax_l(cos(v_k, g_l)/ε), 0 on padding (docs/cmi.md §1.2). [B, L, m]."""
        vectors = self.item_vectors(item_seq)
        logits = vectors @ self.category_vectors().T / self.assign_temperature
        return torch.softmax(logits, dim=-1) * (item_seq > 0).unsqueeze(-1)

    def encode(self, item_seq, item_seq_len):
        """Final interests ũ [B, m, d] and the assignment p [B, L, m]."""
        item_seq = item_seq[:, : int(item_seq_len.max())]  # padding columns change nothing
        vectors = self.item_vectors(item_seq)
        assignment = self.assignment(item_seq)
        interests = F.normalize(torch.einsum("blm,bld->bmd", assignment, vectors), dim=-1)
        if self.use_general_interest:
            # Packed, the GRU stops at each row's last item, and its final hidden state is the
            # output at position len-1 that the authors' code gathers.
            packed = pack_padded_sequence(vectors, item_seq_len.cpu(), batch_first=True, enforce_sorted=False)
            _, last_state = self.gru(packed)
            general = F.normalize(self.general_mlp(last_state[-1]), dim=-1)
            interests = F.normalize(interests + general.unsqueeze(1), dim=-1)
        return interests, assignment

    def forward(self, item_seq, item_seq_len):
        return self.encode(item_seq, item_seq_len)[0]

    # ----------------------------------------------------------------- training
    def _items_read(self, interaction, item_seq) -> torch.Tensor:
        """Every item row a training step reads: the histories (views), the targets and the negatives."""
        negatives = interaction[SHARED_NEG_FIELD] if self.loss_type == "SAMPLED" else interaction[self.neg_item_field]
        return torch.cat([item_seq.flatten(), interaction[self.POS_ITEM_ID].flatten(), negatives.flatten()])

    def _rec_loss(self, interests, interaction, rows: int):
        """Recommendation loss of ``interests`` [R, m, d]; the batch's B rows are tiled R/B times."""
        repeat = rows // interaction[self.POS_ITEM_ID].shape[0]
        pos_items = interaction[self.POS_ITEM_ID].repeat(repeat)
        pos_scores = max_over_interests_paired(interests, self.item_vectors(pos_items))
        if self.loss_type == "SAMPLED":
            # Every view row carries its user's negative, so each negative is a candidate
            # `repeat` times (docs/cmi.md §3.2): adding log(repeat) to its logit is the same softmax.
            neg_scores = max_over_interests(interests, self.item_vectors(interaction[SHARED_NEG_FIELD]))
            logits = torch.cat([pos_scores.unsqueeze(1), neg_scores + self.temperature * math.log(repeat)], dim=1)
            logits = logits / self.temperature
            return F.cross_entropy(logits, torch.zeros_like(pos_items))
        if self.loss_type == "CE":
            logits = max_over_interests(interests, self.item_vectors(), self.score_chunk_size) / self.temperature
            return F.cross_entropy(logits, pos_items)
        neg_items = interaction[self.neg_item_field].repeat(repeat)
        neg_scores = max_over_interests_paired(interests, self.item_vectors(neg_items))
        return -F.logsigmoid((pos_scores - neg_scores) / self.temperature).mean()

    def calculate_loss(self, interaction):
        history = (interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        sequences = [history]
        if self.use_views:
            (seq1, len1), (seq2, len2) = self.view_fields
            views = [(interaction[seq1], interaction[len1]), (interaction[seq2], interaction[len2])]
            sequences = [history, *views] if self.rec_loss_input == "history" else views
        width = max(seq.shape[1] for seq, _ in sequences)
        item_seq = torch.cat([F.pad(seq, (0, width - seq.shape[1])) for seq, _ in sequences])
        item_seq_len = torch.cat([length for _, length in sequences])
        self._project_to_sphere(self._items_read(interaction, item_seq) if self.sparse_item_updates else None)
        interests, assignment = self.encode(item_seq, item_seq_len)

        # The rows scored against the targets: the whole histories, or both views (as run).
        batch_size = history[0].shape[0]
        rec_rows = batch_size if sequences[0] is history else interests.shape[0]
        rec = self._rec_loss(interests[:rec_rows], interaction, rec_rows)
        zero = rec.new_zeros(())
        if self.use_views:
            first, second = interests[-2 * batch_size :].chunk(2)
            exclude = self._same_user_pairs(interaction) if self.cl_mask_same_user else None
            cl = self.cl_weight * info_nce(
                first.flatten(0, 1),
                second.flatten(0, 1),
                self.cl_temperature,
                "cos",
                in_view_negatives=False,
                exclude=exclude,
            )
        else:
            cl = zero
        orth = self.orth_weight * orthogonality_loss(self.category_vectors()) if self.orth_weight > 0 else zero
        uni = (
            self.uniform_weight * uniformity_loss(assignment, item_seq[:, : assignment.shape[1]] > 0)
            if self.uniform_weight > 0 and self.num_interest > 1
            else zero
        )
        return rec, cl, orth, uni

    def _same_user_pairs(self, interaction) -> torch.Tensor | None:
        """``[B·m, B·m]``: True where two (history, interest) rows come from different histories of one user.

        RecBole trains on every prefix of a history, so a batch holds several prefixes of a user; their
        interests are false negatives for each other in the InfoNCE (docs/cmi.md §2.2). The m interests of
        one history stay negatives of each other, as the authors contrast them.
        """
        if self.USER_ID not in interaction:
            return None
        users = interaction[self.USER_ID]
        rows = torch.arange(users.shape[0], device=users.device)
        same_user = (users[:, None] == users[None, :]) & (rows[:, None] != rows[None, :])
        if not same_user.any():
            return None
        m = self.num_interest
        return same_user.repeat_interleave(m, dim=0).repeat_interleave(m, dim=1)

    # ----------------------------------------------------------------- inference
    def predict(self, interaction):
        self._project_to_sphere()
        interests = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return max_over_interests_paired(interests, self.item_vectors(interaction[self.ITEM_ID]))

    def full_sort_predict(self, interaction):
        self._project_to_sphere()
        interests = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return max_over_interests(interests, self.item_vectors(), self.score_chunk_size)

    # ----------------------------------------------------------------- interest-aware negatives
    def category_item_pools(self, pool_size: int) -> torch.Tensor:
        """Ids of the ``pool_size`` items most strongly assigned to each category. [m, pool]."""
        items = self.item_vectors()[1:]
        logits = items @ self.category_vectors().T / self.assign_temperature
        strength = torch.softmax(logits, dim=-1).T  # [m, n_items - 1]
        return strength.topk(min(pool_size, items.shape[0]), dim=1).indices + 1

    def dominant_category(self, item_seq, item_seq_len) -> torch.Tensor:
        """The category with the largest mean assignment over each history. [B]."""
        return self.assignment(item_seq).sum(dim=1).argmax(dim=1)
