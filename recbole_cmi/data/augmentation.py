"""Contrastive views of a training history, built as a train-only batch hook.

One mechanism serves CMI and CL4SRec: :class:`ContrastiveViews` adds two views of every
training sequence to the batch under explicit keys (``view1_item_id_list``,
``view1_item_length``, ``view2_...``; see :func:`view_fields`). Views are built on the training
loader only, never at evaluation, never in place (the source tensors are not modified), and
never empty.

What is split: by default (``cl_history_length: 0``) the row's model input, its last
``MAX_ITEM_LIST_LENGTH`` items. ``cl_history_length: N`` (N >= ``MAX_ITEM_LIST_LENGTH``) splits the last N
items before the row's target instead, read from the user's whole training sequence (:class:`LongHistories`;
the authors split the last 200, docs/cmi.md §2.1); the views are then up to N items wide, wider than the
model input, which a model without a position table (CMI) encodes as it is.

Operations, vectorised over the batch (sequences are left-aligned, 0 = padding):

* ``random_split`` (CMI, docs/cmi.md §2.1): the history is split at random into two disjoint halves;
  view 1 takes ⌊n/2⌋ random positions, view 2 the rest. Histories of at most
  ``cl_split_min_length`` items (6 in the authors' code) are not split: both views are the
  whole history. Both views keep time order by default; ``cl_shuffle_first_view: True``
  reproduces the authors' code, where view 1 comes out in random order (docs/cmi.md §2.3).
  ``cl_short_views`` (ours): ``whole`` keeps that rule, so a short history's two views are the same
  sequence and the InfoNCE has nothing to contrast; ``crop``, ``mask`` or ``reorder`` give such a
  history two independent views of that operation instead (longer histories are still split).
* ``crop`` (CL4SRec, docs/baselines.md §2.1): a random contiguous sub-sequence of max(1, ⌊η·n⌋) items.
* ``mask``: ⌊γ·n⌋ random positions replaced by a dedicated mask id (``dataset.item_num``,
  one past the catalogue; models that use it size their embedding table ``n_items + 1``).
* ``reorder``: a random contiguous sub-sequence of ⌊β·n⌋ items is shuffled.
* ``random`` (CL4SRec): per sequence, two different operations among crop / mask / reorder,
  one per view (as DuoRec's ``random.sample(range(3), k=2)``).
"""

from __future__ import annotations

import torch
from recbole.data.interaction import Interaction

from recbole_cmi import options
from recbole_cmi.data.dataloader import rows_by_user
from recbole_cmi.errors import ConfigValueError, DatasetError

AUGMENTATIONS = ("random_split", "crop", "mask", "reorder", "random")
SHORT_VIEWS = ("whole", "crop", "mask", "reorder")
VIEW_PREFIXES = ("view1_", "view2_")


def view_fields(config) -> list[tuple[str, str]]:
    """``[(sequence key, length key)]`` of the two views in a training batch."""
    seq = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    length = config["ITEM_LIST_LENGTH_FIELD"]
    return [(prefix + seq, prefix + length) for prefix in VIEW_PREFIXES]


def _positions(seq: torch.Tensor) -> torch.Tensor:
    return torch.arange(seq.shape[1], device=seq.device).expand_as(seq)


def _random_keys(seq: torch.Tensor, lengths: torch.Tensor, generator) -> torch.Tensor:
    """Uniform keys on valid positions, 2.0 on padding, so an argsort lists valid positions first."""
    keys = torch.rand(seq.shape, generator=generator, device=seq.device)
    return keys.masked_fill(_positions(seq) >= lengths[:, None], 2.0)


def compact(seq: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-align the kept items of each row, in their original order; returns (sequences, lengths)."""
    batch, width = seq.shape
    target = torch.where(keep, keep.long().cumsum(dim=1) - 1, torch.full_like(seq, width))
    out = seq.new_zeros(batch, width + 1)
    out.scatter_(1, target, torch.where(keep, seq, torch.zeros_like(seq)))
    return out[:, :width], keep.sum(dim=1)


def random_split(seq, lengths, min_split_length=6, shuffle_first_view=False, generator=None):
    """Two disjoint random halves of each history (docs/cmi.md §2.1); short histories are not split."""
    positions = _positions(seq)
    valid = positions < lengths[:, None]
    order = _random_keys(seq, lengths, generator).argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    half = lengths // 2
    split = (lengths > min_split_length)[:, None]
    in_first = torch.where(split, (rank < half[:, None]) & valid, valid)
    in_second = torch.where(split, valid & ~in_first, valid)
    first, first_len = compact(seq, in_first)
    second, second_len = compact(seq, in_second)
    if shuffle_first_view:  # the authors' code: random.sample order for view 1
        shuffled = torch.gather(seq, 1, order).masked_fill(positions >= half[:, None], 0)
        first = torch.where(split, shuffled, first)
    return (first, first_len), (second, second_len)


def crop(seq, lengths, eta, generator=None):
    """A random contiguous sub-sequence of max(1, ⌊eta·n⌋) items."""
    kept = torch.clamp((lengths.double() * eta).floor().long(), min=1)
    kept = torch.minimum(kept, lengths.clamp(min=1))
    room = (lengths - kept + 1).clamp(min=1)
    start = (torch.rand(lengths.shape, generator=generator, device=seq.device) * room).long()
    positions = _positions(seq)
    keep = (positions >= start[:, None]) & (positions < (start + kept)[:, None]) & (positions < lengths[:, None])
    return compact(seq, keep)


def mask(seq, lengths, gamma, mask_id, generator=None):
    """⌊gamma·n⌋ random positions replaced by ``mask_id``; lengths unchanged."""
    count = (lengths.double() * gamma).floor().long()
    order = _random_keys(seq, lengths, generator).argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, _positions(seq))
    return seq.masked_fill(rank < count[:, None], mask_id), lengths.clone()


def reorder(seq, lengths, beta, generator=None):
    """A random contiguous sub-sequence of ⌊beta·n⌋ items shuffled in place (of a copy)."""
    span = (lengths.double() * beta).floor().long()
    room = (lengths - span + 1).clamp(min=1)
    start = (torch.rand(lengths.shape, generator=generator, device=seq.device) * room).long()
    positions = _positions(seq)
    inside = (positions >= start[:, None]) & (positions < (start + span)[:, None])
    # Outside the window a position keeps its index as sort key; inside, keys are random values
    # within [start, start + span - 1], so the window's items are permuted among its own slots.
    noise = torch.rand(seq.shape, generator=generator, device=seq.device) * (span[:, None] - 1).clamp(min=0)
    keys = torch.where(inside, start[:, None].double() + noise.double(), positions.double())
    return torch.gather(seq, 1, keys.argsort(dim=1)), lengths.clone()


class LongHistories:
    """The last ``length`` training items before each training row's target, read from the user's whole
    training sequence rather than the row's truncated history (``cl_history_length``, docs/cmi.md §2.1).

    RecBole's training rows of a user are that user's prefixes in time order
    (``SequentialDataset.data_augmentation``), so the sequence is the first row's history followed by the
    targets of the user's rows; ``position[r]`` is the number of items before row r's target. Rows that
    do not chain this way are refused (each row's history must end the sequence up to its position).
    """

    def __init__(self, dataset, length: int):
        feat = dataset.inter_feat
        seq, lengths = feat[dataset.item_id_list_field], feat[dataset.item_list_length_field]
        order, starts, counts = rows_by_user(dataset)
        head = lengths[order[starts]]  # each user's first row: the history before its first target
        sizes = head + counts
        user_begin = torch.cumsum(sizes, 0) - sizes
        self.items = seq.new_zeros(int(sizes.sum()))
        columns = torch.arange(seq.shape[1])
        in_head = columns < head[:, None]
        self.items[(user_begin[:, None] + columns)[in_head]] = seq[order[starts]][in_head]
        rank = torch.arange(len(order)) - torch.repeat_interleave(starts, counts)
        self.begin, self.position = torch.empty_like(order), torch.empty_like(order)
        self.begin[order] = torch.repeat_interleave(user_begin, counts)
        self.position[order] = torch.repeat_interleave(head, counts) + rank
        self.items[self.begin[order] + self.position[order]] = feat[dataset.iid_field][order]
        self.length = length
        self._check(seq, lengths, dataset)

    def __call__(self, rows: torch.Tensor, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sequences [len(rows), length], lengths)``: left-aligned, 0-padded, like ``item_id_list``."""
        length = length or self.length
        position = self.position[rows]
        kept = position.clamp(max=length)
        columns = torch.arange(length)
        index = (self.begin[rows] + position - kept)[:, None] + columns
        valid = columns < kept[:, None]
        return torch.where(valid, self.items[index.clamp(max=len(self.items) - 1)], 0), kept

    def _check(self, seq, lengths, dataset):
        rebuilt, rebuilt_lengths = self(torch.arange(seq.shape[0]), seq.shape[1])
        if not (torch.equal(rebuilt_lengths, lengths) and torch.equal(rebuilt, seq)):
            raise DatasetError(
                f"cl_history_length: the training rows of dataset '{dataset.dataset_name}' are not each user's "
                "consecutive prefixes in time order, so their whole histories cannot be read; set it to 0"
            )


class ContrastiveViews:
    """Train-batch hook adding two views of every sequence (see the module docstring)."""

    def __init__(self, config, dataset, method=None):
        self.method = method or options.choice(config, "cl_augmentation", AUGMENTATIONS, default="random_split")
        self.seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        self.len_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.view_fields = view_fields(config)
        # 0 would split a 1-item history into an empty view and a full one.
        self.min_split_length = options.integer(config, "cl_split_min_length", minimum=1, default=6)
        self.shuffle_first_view = options.flag(config, "cl_shuffle_first_view", default=False)
        self.short_views = options.choice(config, "cl_short_views", SHORT_VIEWS, default="whole")
        self.eta = options.real(config, "crop_eta", 0.0, 1.0, default=0.6)
        self.gamma = options.real(config, "mask_gamma", 0.0, 1.0, default=0.3)
        self.beta = options.real(config, "reorder_beta", 0.0, 1.0, default=0.6)
        self.mask_id = dataset.item_num
        self.generator = None
        history_length = _history_length(config)
        self.histories = LongHistories(dataset, history_length) if history_length else None
        self.wants_rows = self.histories is not None

    def _single(self, name, seq, lengths):
        if name == "crop":
            return crop(seq, lengths, self.eta, self.generator)
        if name == "mask":
            return mask(seq, lengths, self.gamma, self.mask_id, self.generator)
        return reorder(seq, lengths, self.beta, self.generator)

    def make_views(self, seq, lengths):
        if self.method == "random_split":
            views = random_split(seq, lengths, self.min_split_length, self.shuffle_first_view, self.generator)
            short = lengths <= self.min_split_length
            if self.short_views == "whole" or not short.any():
                return views
            others = [self._single(self.short_views, seq, lengths) for _ in views]
            return tuple(
                (torch.where(short[:, None], other_seq, view_seq), torch.where(short, other_len, view_len))
                for (view_seq, view_len), (other_seq, other_len) in zip(views, others)
            )
        if self.method != "random":
            return self._single(self.method, seq, lengths), self._single(self.method, seq, lengths)
        ops = ("crop", "mask", "reorder")
        first_op = torch.randint(3, lengths.shape, generator=self.generator, device=seq.device)
        second_op = (first_op + 1 + torch.randint(2, lengths.shape, generator=self.generator, device=seq.device)) % 3
        views = []
        for chosen in (first_op, second_op):
            candidates = [self._single(name, seq, lengths) for name in ops]
            stacked_seq = torch.stack([c[0] for c in candidates])
            stacked_len = torch.stack([c[1] for c in candidates])
            rows = torch.arange(seq.shape[0], device=seq.device)
            views.append((stacked_seq[chosen, rows], stacked_len[chosen, rows]))
        return views[0], views[1]

    def __call__(self, interaction, rows=None):
        if self.histories is None:
            seq, lengths = interaction[self.seq_field], interaction[self.len_field]
        else:  # the batch may be RecBole's negative-sampling tiling of its rows
            seq, lengths = self.histories(rows.repeat(len(interaction) // len(rows)))
        views = self.make_views(seq, lengths)
        added = {}
        for (seq_key, len_key), (view_seq, view_len) in zip(self.view_fields, views):
            added[seq_key] = view_seq
            added[len_key] = view_len
        interaction.update(Interaction(added))
        return interaction


def _history_length(config) -> int:
    """``cl_history_length``: 0 (views of the model input) or at least ``MAX_ITEM_LIST_LENGTH``."""
    length = options.integer(config, "cl_history_length", minimum=0, default=0)
    longest = config["MAX_ITEM_LIST_LENGTH"] or 0
    if 0 < length < longest:
        raise ConfigValueError(
            f"cl_history_length={length!r} (0, or at least MAX_ITEM_LIST_LENGTH={longest}: the views then read "
            "more of the history than the model input, never less)"
        )
    return length
