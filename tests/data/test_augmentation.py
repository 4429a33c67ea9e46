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
from conftest import TINY_SETTINGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recbole.data.interaction import Interaction

from recbole_cmi.data.augmentation import ContrastiveViews, crop, mask, random_split, reorder, view_fields
from recbole_cmi.errors import ConfigValueError, DatasetError
from recbole_cmi.pipeline import prepare

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


@pytest.mark.parametrize("short_views", ["crop", "mask", "reorder"])
def test_short_histories_get_two_views_of_the_chosen_operation_and_long_ones_are_still_split(short_views):
    seq, lengths = _batch([3, 6, 7, 12, 2, 5], seed=3)
    hook = ContrastiveViews(_config(cl_short_views=short_views, crop_eta=0.5, mask_gamma=0.5), _Dataset())
    hook.generator = torch.Generator().manual_seed(0)
    (v1, l1), (v2, l2) = hook.make_views(seq, lengths)
    whole = ContrastiveViews(_config(), _Dataset())
    whole.generator = torch.Generator().manual_seed(0)
    (w1, wl1), (w2, wl2) = whole.make_views(seq, lengths)
    short = lengths <= 6
    # Long rows: the random split, the same draws as without the option.
    assert torch.equal(v1[~short], w1[~short]) and torch.equal(v2[~short], w2[~short])
    # Short rows: the default leaves both views whole; the option draws two views of its operation.
    assert torch.equal(w1[short], seq[short]) and torch.equal(w2[short], seq[short])
    history = _rows(seq, lengths)
    for view, length in ((v1, l1), (v2, l2)):
        for row in torch.nonzero(short).flatten().tolist():
            items, n = view[row, : int(length[row])].tolist(), int(lengths[row])
            if short_views == "crop":
                assert 1 <= len(items) <= n and _is_subsequence(items, history[row])
            elif short_views == "mask":
                assert len(items) == n and sum(i == MASK_ID for i in items) == n // 2
            else:
                assert sorted(items) == sorted(history[row])
    assert not (torch.equal(v1[short], v2[short]) and torch.equal(l1[short], l2[short]))


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
    assert hook.short_views == "whole"
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
        ("cl_short_views", "split", "one of 'whole', 'crop', 'mask', 'reorder'"),
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


# --------------------------------------------------------------------------- cl_history_length

# Hand-built histories (items in time order, no item twice per user). Leave-one-out keeps all but the
# last two for training: u1 trains on 10 items, so its rows have 1..9 items of true history, more than
# MAX_ITEM_LIST_LENGTH (3) and more than cl_history_length (5) for the later rows.
HAND = {"u1": [f"a{k}" for k in range(12)], "u2": ["b0", "b1", "b2", "b3", "b4"], "u3": [f"c{k}" for k in range(8)]}


def _hand_config(tmp_path, **overrides):
    folder = tmp_path / "hand"
    folder.mkdir(exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{user}\t{item}\t{t}" for user, items in HAND.items() for t, item in enumerate(items)]
    (folder / "hand.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = dict(TINY_SETTINGS, data_path=str(tmp_path), checkpoint_dir=str(tmp_path / "saved"))
    settings.update(MAX_ITEM_LIST_LENGTH=3, num_interest=2, embedding_size=8, train_batch_size=4, topk=[5])
    settings.update(valid_metric="Recall@5")
    settings.update(overrides)
    return settings


def _tokens(dataset, ids):
    return [str(token) for token in dataset.id2token(dataset.iid_field, ids.numpy())]


@pytest.mark.parametrize("sampling", ["prefixes", "per_user"])
def test_long_history_is_the_last_n_items_before_the_target_from_the_whole_training_sequence(tmp_path, sampling):
    # cl_split_min_length 5: a history of at most 5 items is not split, so both views are the long history.
    settings = _hand_config(tmp_path, cl_history_length=5, cl_split_min_length=5, train_sampling=sampling)
    _, _, (train, _, _), _ = prepare("CMI", "hand", config_dict=settings)
    dataset = train._dataset
    true_lengths = set()
    for _ in range(1 if sampling == "prefixes" else 30):  # per_user: one random cut per user and epoch
        for batch in train:
            for row in range(len(batch)):
                user = str(dataset.id2token(dataset.uid_field, int(batch[dataset.uid_field][row])))
                n = int(batch["item_length"][row])
                assert n <= 3  # the model input stays truncated
                if sampling == "prefixes":  # the history ends right before the target
                    position = HAND[user].index(_tokens(dataset, batch["item_id"][row : row + 1])[0])
                else:  # per_user: the history is the drawn prefix; the target is any later item
                    position = HAND[user].index(_tokens(dataset, batch["item_id_list"][row, n - 1 : n])[0]) + 1
                expected = HAND[user][max(0, position - 5) : position]
                for view in ("view1_", "view2_"):
                    length = int(batch[view + "item_length"][row])
                    assert _tokens(dataset, batch[view + "item_id_list"][row, :length]) == expected
                    assert torch.all(batch[view + "item_id_list"][row, length:] == 0)
                true_lengths.add(position)
    assert {1, 2, 3} & true_lengths and {4, 5} & true_lengths and {6, 7, 8, 9} & true_lengths
    assert batch["view1_item_id_list"].shape[1] == 5  # wider than the model input


def test_default_views_split_the_model_input_with_the_hook_generator(tiny_config):
    """cl_history_length 0: every batch's views are random_split of its item_id_list, the draws in order."""
    _, _, (train, _, _), _ = prepare("CMI", "tiny", config_dict=tiny_config())
    (hook,) = [h for h in train.batch_hooks if isinstance(h, ContrastiveViews)]
    assert hook.histories is None and not hook.wants_rows
    hook.generator = torch.Generator().manual_seed(3)
    reference = torch.Generator().manual_seed(3)
    for batch in train:
        (v1, l1), (v2, l2) = random_split(batch["item_id_list"], batch["item_length"], 6, generator=reference)
        assert torch.equal(batch["view1_item_id_list"], v1) and torch.equal(batch["view1_item_length"], l1)
        assert torch.equal(batch["view2_item_id_list"], v2) and torch.equal(batch["view2_item_length"], l2)


@pytest.mark.parametrize("sampling", ["prefixes", "per_user"])
def test_history_length_equal_to_the_input_gives_the_default_views(tiny_config, sampling):
    def epoch(history_length):
        settings = tiny_config(cl_history_length=history_length, train_sampling=sampling)
        _, _, (train, _, _), _ = prepare("CMI", "tiny", config_dict=settings)
        (hook,) = [h for h in train.batch_hooks if isinstance(h, ContrastiveViews)]
        hook.generator = torch.Generator().manual_seed(5)
        return [dict(batch.interaction) for batch in train]

    default, long = epoch(0), epoch(10)  # MAX_ITEM_LIST_LENGTH is 10
    assert len(default) == len(long)
    for first, second in zip(default, long, strict=True):
        assert first.keys() == second.keys() and VIEW_KEYS <= set(first)
        assert all(torch.equal(first[key], second[key]) for key in first)


class _Rows:
    """A training set with RecBole's columns: ``(user, history, target)`` per row."""

    uid_field, iid_field, item_id_list_field, item_list_length_field = (
        "user_id",
        "item_id",
        "item_id_list",
        "item_length",
    )
    dataset_name = "rows"
    item_num = MASK_ID

    def __init__(self, rows, width=3):
        seq = torch.zeros(len(rows), width, dtype=torch.long)
        for r, (_, history, _) in enumerate(rows):
            seq[r, : len(history)] = torch.tensor(history, dtype=torch.long)
        self.inter_feat = Interaction(
            {
                "user_id": torch.tensor([user for user, _, _ in rows]),
                "item_id_list": seq,
                "item_length": torch.tensor([len(history) for _, history, _ in rows]),
                "item_id": torch.tensor([target for _, _, target in rows]),
            }
        )


def test_long_histories_of_interleaved_users_and_tiled_batches():
    # u1: 1 2 3 4 5 6, u2: 7 8 9; RecBole's prefix rows (MAX 3), the users' rows interleaved.
    rows = [(1, [1], 2), (2, [7], 8), (1, [1, 2], 3), (1, [1, 2, 3], 4), (2, [7, 8], 9), (1, [2, 3, 4], 5)]
    rows.append((1, [3, 4, 5], 6))
    hook = ContrastiveViews(_config(cl_history_length=4, MAX_ITEM_LIST_LENGTH=3, cl_split_min_length=4), _Rows(rows))
    seq, lengths = hook.histories(torch.tensor([6, 5, 4, 0, 3]))
    assert seq.tolist() == [[2, 3, 4, 5], [1, 2, 3, 4], [7, 8, 0, 0], [1, 0, 0, 0], [1, 2, 3, 0]]
    assert lengths.tolist() == [4, 4, 2, 1, 3]
    batch = Interaction({"item_id_list": torch.zeros(4, 3, dtype=torch.long), "item_length": torch.ones(4)})
    out = hook(batch, torch.tensor([6, 1]))  # RecBole's negative sampling tiles a batch of two rows twice
    assert out["view1_item_id_list"].tolist() == [[2, 3, 4, 5], [7, 0, 0, 0]] * 2


def test_rows_that_are_not_consecutive_prefixes_are_refused():
    rows = [(1, [1], 2), (1, [1, 2], 3), (1, [2, 3, 9], 5)]  # the third history does not end with 4 = 3's target
    with pytest.raises(DatasetError, match="cl_history_length: the training rows of dataset 'rows'"):
        ContrastiveViews(_config(cl_history_length=4, MAX_ITEM_LIST_LENGTH=3), _Rows(rows))


@pytest.mark.parametrize(("value", "accepted"), [(-1, ">= 0"), (2.5, ">= 0"), (2, "at least MAX_ITEM_LIST_LENGTH=3")])
def test_a_history_length_below_the_model_input_is_refused(value, accepted):
    with pytest.raises(ConfigValueError) as err:
        ContrastiveViews(_config(cl_history_length=value, MAX_ITEM_LIST_LENGTH=3), _Rows([(1, [1], 2)]))
    message = str(err.value)
    assert message.startswith("cl_history_length") and repr(value) in message and accepted in message
