"""The shared contrastive views (recbole_cmi.data.augmentation), used by CMI and CL4SRec.

Each operation is checked row by row against its definition (docs/cmi.md §2.1; CL4SRec, Xie et al.
ICDE 2022, Eq. 5-7; docs/baselines.md §2.1) on random batches, then the defects of the public CL4SRec
code (docs/baselines.md §2.3: aliasing, zero-length crops) and the train-only hook on real loaders.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recbole.data.interaction import Interaction

from recbole_cmi.data.augmentation import ContrastiveViews, crop, mask, random_split, reorder, view_fields
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.quick_start import prepare

MASK_ID = 50  # dataset.item_num: item ids are 1..49, 0 is padding
WIDTH = 12
VIEW_KEYS = {"view1_item_id_list", "view1_item_length", "view2_item_id_list", "view2_item_length"}
PROPERTY = settings(
    max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


class _Config(dict):
    """A dict that answers None for a missing key, as RecBole's Config does."""

    def __missing__(self, key):
        return None


class _Dataset:
    item_num = MASK_ID


def _config(**overrides):
    config = {"ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list", "ITEM_LIST_LENGTH_FIELD": "item_length"}
    config.update(overrides)
    return _Config(config)


def _batch(lengths, seed, distinct=True):
    """Left-aligned histories with the given lengths; ``distinct``: no item twice in a row."""
    generator = torch.Generator().manual_seed(seed)
    seq = torch.zeros(len(lengths), WIDTH, dtype=torch.long)
    for row, n in enumerate(lengths):
        if distinct:
            seq[row, :n] = torch.randperm(MASK_ID - 1, generator=generator)[:n] + 1
        else:
            seq[row, :n] = torch.randint(1, 4, (n,), generator=generator)
    return seq, torch.tensor(lengths)


def _rows(seq, lengths):
    return [seq[row, :n].tolist() for row, n in enumerate(lengths.tolist())]


def _padding_is_zero(seq, lengths):
    return bool(torch.all(seq.masked_select(torch.arange(seq.shape[1]) >= lengths[:, None]) == 0))


def _is_subsequence(sub, full):
    items = iter(full)
    return all(any(x == y for y in items) for x in sub)


lengths_strategy = st.lists(st.integers(1, WIDTH), min_size=1, max_size=8)


# --------------------------------------------------------------------------- random_split (CMI)


@PROPERTY
@given(lengths=lengths_strategy, seed=st.integers(0, 10**6), min_split=st.integers(1, 8))
def test_random_split_gives_disjoint_ordered_halves_that_cover_the_history(lengths, seed, min_split):
    seq, lengths = _batch(lengths, seed)
    (v1, l1), (v2, l2) = random_split(seq, lengths, min_split, generator=torch.Generator().manual_seed(seed))
    assert _padding_is_zero(v1, l1) and _padding_is_zero(v2, l2)
    for history, first, second in zip(_rows(seq, lengths), _rows(v1, l1), _rows(v2, l2), strict=True):
        n = len(history)
        if n <= min_split:  # short histories are not split
            assert first == history and second == history
            continue
        assert (len(first), len(second)) == (n // 2, n - n // 2)
        assert not set(first) & set(second)
        assert Counter(first) + Counter(second) == Counter(history)
        assert _is_subsequence(first, history) and _is_subsequence(second, history)


def test_random_split_covers_a_history_with_repeated_items():
    seq, lengths = _batch([9, 12, 7], seed=1, distinct=False)
    for seed in range(20):
        (v1, l1), (v2, l2) = random_split(seq, lengths, 6, generator=torch.Generator().manual_seed(seed))
        for history, first, second in zip(_rows(seq, lengths), _rows(v1, l1), _rows(v2, l2), strict=True):
            assert Counter(first) + Counter(second) == Counter(history)
            assert _is_subsequence(first, history) and _is_subsequence(second, history)


def test_random_split_default_threshold_is_six_items():
    seq, lengths = _batch([6, 7], seed=0)
    (v1, l1), (v2, l2) = random_split(seq, lengths)
    assert l1.tolist() == [6, 3] and l2.tolist() == [6, 4]
    assert torch.equal(v1[0], seq[0]) and torch.equal(v2[0], seq[0])


def test_shuffled_first_view_is_a_permutation_of_the_same_positions():
    """``cl_shuffle_first_view`` (the authors' code): same items as the ordered split, in random order."""
    seq, lengths = _batch([12, 11, 8, 7, 5], seed=3)
    out_of_order = 0
    for seed in range(10):
        ordered = random_split(seq, lengths, 6, generator=torch.Generator().manual_seed(seed))
        shuffled = random_split(seq, lengths, 6, shuffle_first_view=True, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(shuffled[1][0], ordered[1][0]) and torch.equal(shuffled[1][1], ordered[1][1])
        assert torch.equal(shuffled[0][1], ordered[0][1])
        assert _padding_is_zero(*shuffled[0])
        for history, first, first_ordered in zip(
            _rows(seq, lengths), _rows(*shuffled[0]), _rows(*ordered[0]), strict=True
        ):
            assert sorted(first, key=history.index) == first_ordered
            out_of_order += first != first_ordered
    assert out_of_order > 0  # the shuffle does reorder


# --------------------------------------------------------------------------- crop / mask / reorder (CL4SRec)


@PROPERTY
@given(lengths=lengths_strategy, seed=st.integers(0, 10**6), eta=st.sampled_from([0.0, 0.2, 0.6, 0.9, 1.0]))
def test_crop_is_a_contiguous_piece_of_max_1_floor_eta_n_items(lengths, seed, eta):
    seq, lengths = _batch(lengths, seed)
    view, view_len = crop(seq, lengths, eta, generator=torch.Generator().manual_seed(seed))
    assert _padding_is_zero(view, view_len)
    for history, piece in zip(_rows(seq, lengths), _rows(view, view_len), strict=True):
        kept = max(1, math.floor(eta * len(history)))
        assert len(piece) == kept
        assert any(history[start : start + kept] == piece for start in range(len(history) - kept + 1))


def test_crop_never_empties_a_one_item_history_and_reaches_every_start():
    seq, lengths = _batch([1, 1, 5], seed=0)
    starts = set()
    for seed in range(60):
        view, view_len = crop(seq, lengths, 0.6, generator=torch.Generator().manual_seed(seed))
        assert view_len.tolist() == [1, 1, 3]
        assert torch.equal(view[:2, 0], seq[:2, 0])
        starts.add(seq[2].tolist().index(view[2, 0].item()))
    assert starts == {0, 1, 2}


@PROPERTY
@given(lengths=lengths_strategy, seed=st.integers(0, 10**6), gamma=st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_mask_replaces_exactly_floor_gamma_n_positions_with_the_mask_id(lengths, seed, gamma):
    seq, lengths = _batch(lengths, seed)
    view, view_len = mask(seq, lengths, gamma, MASK_ID, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(view_len, lengths) and view.shape == seq.shape
    assert _padding_is_zero(view, view_len)
    for history, masked in zip(_rows(seq, lengths), _rows(view, view_len), strict=True):
        assert sum(item == MASK_ID for item in masked) == math.floor(gamma * len(history))
        assert all(m == h for m, h in zip(masked, history, strict=True) if m != MASK_ID)


@PROPERTY
@given(lengths=lengths_strategy, seed=st.integers(0, 10**6), beta=st.sampled_from([0.0, 0.2, 0.6, 1.0]))
def test_reorder_shuffles_one_window_of_floor_beta_n_items(lengths, seed, beta):
    seq, lengths = _batch(lengths, seed)
    view, view_len = reorder(seq, lengths, beta, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(view_len, lengths)
    assert _padding_is_zero(view, view_len)
    for history, shuffled in zip(_rows(seq, lengths), _rows(view, view_len), strict=True):
        n, span = len(history), math.floor(beta * len(history))
        assert Counter(shuffled) == Counter(history)
        assert any(
            shuffled[:start] == history[:start]
            and shuffled[start + span :] == history[start + span :]
            and sorted(shuffled[start : start + span]) == sorted(history[start : start + span])
            for start in range(n - span + 1)
        )


def test_reorder_does_change_the_order():
    seq, lengths = _batch([12] * 8, seed=0)
    view, _ = reorder(seq, lengths, 0.6, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(view, seq)


def _operation(history, view):
    """Which CL4SRec operation made ``view``: crop changes the length, mask brings the mask id,
    reorder keeps length and multiset (rows of >= 4 items, so that crop and mask always show)."""
    if len(view) != len(history):
        return "crop"
    if MASK_ID in view:
        return "mask"
    assert Counter(view) == Counter(history)
    return "reorder"


def test_random_gives_two_different_operations_per_sequence():
    hook = ContrastiveViews(_config(cl_augmentation="random"), _Dataset())
    hook.generator = torch.Generator().manual_seed(0)
    seq, lengths = _batch([4, 5, 7, 9, 12, 12] * 10, seed=0)
    (v1, l1), (v2, l2) = hook.make_views(seq, lengths)
    pairs = Counter()
    for history, first, second in zip(_rows(seq, lengths), _rows(v1, l1), _rows(v2, l2), strict=True):
        ops = (_operation(history, first), _operation(history, second))
        assert ops[0] != ops[1]
        pairs[frozenset(ops)] += 1
    assert len(pairs) == 3  # every pair of operations is drawn


@pytest.mark.parametrize("method", ["crop", "mask", "reorder"])
def test_a_single_operation_draws_the_two_views_independently(method):
    hook = ContrastiveViews(_config(cl_augmentation=method), _Dataset())
    hook.generator = torch.Generator().manual_seed(0)
    seq, lengths = _batch([12] * 8, seed=0)
    (v1, _), (v2, _) = hook.make_views(seq, lengths)
    assert not torch.equal(v1, v2)


# --------------------------------------------------------------------------- the hook


def _interaction(seed=0):
    seq, lengths = _batch([1, 2, 4, 7, 9, 12], seed=seed)
    return Interaction(
        {"user_id": torch.arange(1, 7), "item_id_list": seq, "item_length": lengths, "item_id": torch.arange(11, 17)}
    )


@pytest.mark.parametrize("method", ["random_split", "crop", "mask", "reorder", "random"])
def test_views_are_new_tensors_and_the_batch_is_left_as_it_was(method):
    """DuoRec#8: ``seq[:]`` aliased the batch, so mask/reorder edited the source sequences."""
    hook = ContrastiveViews(_config(cl_augmentation=method, cl_shuffle_first_view=True), _Dataset())
    batch = _interaction()
    before = {key: batch[key].clone() for key in batch.columns}
    sources = {key: batch[key] for key in batch.columns}

    out = hook(batch)

    assert set(out.columns) == set(before) | VIEW_KEYS
    for key, value in before.items():
        assert out[key] is sources[key] and torch.equal(out[key], value)
    for key in VIEW_KEYS:
        storage = out[key].untyped_storage().data_ptr()
        assert all(storage != source.untyped_storage().data_ptr() for source in sources.values())
        assert out[key].shape[0] == len(batch)
    assert torch.all(out["view1_item_length"] >= 1) and torch.all(out["view2_item_length"] >= 1)
    assert out["view1_item_id_list"].max() <= MASK_ID


@pytest.mark.parametrize("method", ["random_split", "crop", "mask", "reorder", "random"])
def test_views_are_reproducible_from_the_hook_generator_or_the_global_seed(method):
    hook = ContrastiveViews(_config(cl_augmentation=method), _Dataset())

    def views(seed, own_generator):
        if own_generator:
            hook.generator = torch.Generator().manual_seed(seed)
        else:
            hook.generator = None
            torch.manual_seed(seed)
        out = hook(_interaction())
        return [out[key] for key in sorted(VIEW_KEYS)]

    for own_generator in (True, False):
        first, again, other = views(1, own_generator), views(1, own_generator), views(2, own_generator)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_view_fields_follow_the_configured_field_names():
    config = _Config(ITEM_ID_FIELD="song", LIST_SUFFIX="_seq", ITEM_LIST_LENGTH_FIELD="n")
    assert view_fields(config) == [("view1_song_seq", "view1_n"), ("view2_song_seq", "view2_n")]


def test_the_hook_defaults():
    hook = ContrastiveViews(_config(), _Dataset())
    assert hook.method == "random_split" and hook.min_split_length == 6 and hook.shuffle_first_view is False
    assert (hook.eta, hook.gamma, hook.beta) == (0.6, 0.3, 0.6) and hook.mask_id == MASK_ID
    assert ContrastiveViews(_config(cl_augmentation="crop"), _Dataset(), method="mask").method == "mask"


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("cl_augmentation", "shuffle", "one of 'random_split', 'crop', 'mask', 'reorder', 'random'"),
        ("crop_eta", -0.1, "[0, 1]"),
        ("mask_gamma", 1.5, "[0, 1]"),
        ("reorder_beta", "half", "[0, 1]"),
        ("reorder_beta", float("nan"), "[0, 1]"),
        ("cl_split_min_length", 0, ">= 1"),
        ("cl_split_min_length", 2.5, ">= 1"),
        ("cl_shuffle_first_view", "yes", "True or False"),
    ],
)
def test_bad_settings_name_key_value_and_range(key, value, accepted):
    with pytest.raises(ConfigValueError) as err:
        ContrastiveViews(_config(**{key: value}), _Dataset())
    message = str(err.value)
    assert message.startswith(key) and repr(value) in message and accepted in message


def test_training_loader_adds_views_and_evaluation_loaders_do_not(tiny_config):
    config, dataset, (train_data, valid_data, test_data), _ = prepare("CMI", "tiny", config_dict=tiny_config())
    (hook,) = [h for h in train_data.batch_hooks if isinstance(h, ContrastiveViews)]
    assert hook.mask_id == dataset.item_num and hook.method == config["cl_augmentation"] == "random_split"
    train_batch = next(iter(train_data))
    assert VIEW_KEYS <= set(train_batch.columns)
    total = train_batch["view1_item_length"] + train_batch["view2_item_length"]
    split = train_batch["item_length"] > 6
    assert torch.equal(total[split], train_batch["item_length"][split])
    for loader in (valid_data, test_data):
        batch = next(iter(loader))
        batch = batch[0] if isinstance(batch, tuple) else batch
        assert "item_id_list" in batch.columns and not VIEW_KEYS & set(batch.columns)
