"""Negatives for CMI's sampled softmax, drawn as a train-only batch hook.

:class:`SharedNegatives` adds one negative item per training row under ``shared_neg_item_id``;
the model uses all of them as the candidate negatives of every row (docs/cmi.md §3.2: negatives
shared across the batch). Two strategies (``neg_sampler``):

* ``uniform`` (the authors' code, default): an item drawn uniformly from the catalogue, not in
  the row's history and not its target (vectorised rejection; rows still colliding after
  ``max_rounds`` get an exact draw among their allowed items; only a user who has seen every
  item keeps a collision).
* ``interest_aware`` (ours, asked for by the design card): a fraction ``hard_negative_ratio`` of
  the rows get a *hard* negative instead: an item among the ``hard_negative_pool`` items most
  strongly assigned to the user's dominant implicit category (the category with the largest
  mean assignment over the history), again excluding the history and the target. The pools
  are recomputed from the live model every batch (one ``n_items x m`` product under no_grad).
  Needs the model: the training loader binds it at ``fit`` (``bind_model``).
"""

from __future__ import annotations

import torch
from recbole.data.interaction import Interaction

from recbole_cmi import options

NEG_SAMPLERS = ("uniform", "interest_aware")
SHARED_NEG_FIELD = "shared_neg_item_id"


def collides(candidates: torch.Tensor, history: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rows whose candidate is in their history or equals their target."""
    return (history == candidates[:, None]).any(dim=1) | (candidates == targets)


def uniform_negatives(history, targets, n_items, max_rounds=10, generator=None):
    """One uniform item in [1, n_items) per row, avoiding the row's history and target."""
    negatives = torch.randint(1, n_items, targets.shape, generator=generator, device=targets.device)
    for _ in range(max_rounds):
        bad = collides(negatives, history, targets)
        if not bad.any():
            return negatives
        fresh = torch.randint(1, n_items, targets.shape, generator=generator, device=targets.device)
        negatives = torch.where(bad, fresh, negatives)
    bad = collides(negatives, history, targets).nonzero().squeeze(1)
    if len(bad):  # the few rows still colliding: an exact draw among their allowed items
        allowed = torch.ones(len(bad), n_items, dtype=torch.bool, device=targets.device)
        allowed[:, 0] = False
        allowed.scatter_(1, history[bad], False)
        allowed.scatter_(1, targets[bad, None], False)
        keys = torch.rand(allowed.shape, generator=generator, device=targets.device).masked_fill(~allowed, -1.0)
        exact = keys.argmax(dim=1)
        negatives[bad] = torch.where(allowed.any(dim=1), exact, negatives[bad])
    return negatives


def hard_negatives(history, lengths, targets, model, pool_size, generator=None):
    """Per row, an item from the top-``pool_size`` items of its dominant implicit category (or -1)."""
    with torch.no_grad():
        pools = model.category_item_pools(pool_size)  # [m, pool]
        dominant = model.dominant_category(history, lengths)  # [B]
    picks = torch.randint(pools.shape[1], targets.shape, generator=generator, device=targets.device)
    candidates = pools[dominant, picks]
    return torch.where(collides(candidates, history, targets), torch.full_like(candidates, -1), candidates)


class SharedNegatives:
    def __init__(self, config, dataset):
        self.strategy = options.choice(config, "neg_sampler", NEG_SAMPLERS, default="uniform")
        self.ratio = options.real(config, "hard_negative_ratio", 0.0, 1.0, default=0.5)
        self.pool_size = options.integer(config, "hard_negative_pool", minimum=1, default=50)
        self.seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        self.len_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.target_field = config["ITEM_ID_FIELD"]
        self.n_items = dataset.item_num
        self.model = None
        self.generator = None

    def bind_model(self, model):
        self.model = model

    def __call__(self, interaction):
        history = interaction[self.seq_field]
        targets = interaction[self.target_field]
        negatives = uniform_negatives(history, targets, self.n_items, generator=self.generator)
        if self.strategy == "interest_aware" and self.model is not None and self.ratio > 0:
            model_device = next(self.model.parameters()).device
            hard = hard_negatives(
                history.to(model_device),
                interaction[self.len_field].to(model_device),
                targets.to(model_device),
                self.model,
                self.pool_size,
            ).to(targets.device)
            chosen = torch.rand(targets.shape, generator=self.generator, device=targets.device) < self.ratio
            negatives = torch.where(chosen & (hard > 0), hard, negatives)
        interaction.update(Interaction({SHARED_NEG_FIELD: negatives}))
        return interaction
