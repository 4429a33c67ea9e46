"""train_sampling: per_user, the CMI authors' sampler, against brute force over RecBole's prefix rows."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import TINY_SETTINGS

from recbole_cmi.errors import ConfigValueError
from recbole_cmi.pipeline import prepare
from recbole_cmi.quick_start import run_recbole_cmi


@pytest.fixture(scope="module")
def per_user(tiny_data_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("per_user")
    settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), checkpoint_dir=str(workdir / "saved"))
    settings.update(num_interest=2, embedding_size=8, train_sampling="per_user", train_batch_size=16)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        config, _, (train, _, _), _ = prepare("CMI", "tiny", config_dict=settings)
    finally:
        os.chdir(cwd)
    return config, train


def _epoch(train):
    return [batch for batch in train]


def _prefix_rows(train, user):
    """RecBole's prefix rows of ``user``, shortest first: (history list, length, target)."""
    dataset = train._dataset
    feat = dataset.inter_feat
    rows = torch.nonzero(feat[dataset.uid_field] == user).flatten()
    seq_field, len_field = dataset.item_id_list_field, dataset.item_list_length_field
    return [(feat[seq_field][r].tolist(), int(feat[len_field][r]), int(feat[dataset.iid_field][r])) for r in rows]


def test_an_epoch_visits_every_user_once_with_a_prefix_history_and_a_later_target(per_user):
    config, train = per_user
    dataset = train._dataset
    batches = _epoch(train)
    users = torch.cat([b[dataset.uid_field] for b in batches])
    assert sorted(users.tolist()) == sorted(torch.unique(dataset.inter_feat[dataset.uid_field]).tolist())
    assert all(len(b) <= config["train_batch_size"] for b in batches)
    for batch in batches:
        for i in range(len(batch)):
            prefixes = _prefix_rows(train, int(batch[dataset.uid_field][i]))
            history = batch[dataset.item_id_list_field][i].tolist(), int(batch[dataset.item_list_length_field][i])
            cut = [k for k, (seq, n, _) in enumerate(prefixes) if (seq, n) == history]
            assert cut, "the history is none of the user's prefixes"
            later_targets = {target for _, _, target in prefixes[cut[0] :]}
            assert int(batch[dataset.iid_field][i]) in later_targets
    # The views of CMI's hook are built from the drawn history.
    assert "view1_item_id_list" in batches[0]


def test_targets_are_not_only_the_next_item_and_draws_are_reproducible(per_user):
    _, train = per_user
    dataset = train._dataset
    state = train.get_rng_state()
    first = _epoch(train)
    next_only = 0
    for batch in first:
        for i in range(len(batch)):
            prefixes = _prefix_rows(train, int(batch[dataset.uid_field][i]))
            history = batch[dataset.item_id_list_field][i].tolist(), int(batch[dataset.item_list_length_field][i])
            k = next(k for k, (seq, n, _) in enumerate(prefixes) if (seq, n) == history)
            next_only += int(batch[dataset.iid_field][i]) == prefixes[k][2]
    assert next_only < sum(len(b) for b in first)  # some targets lie further ahead
    train.set_rng_state(state)
    again = _epoch(train)
    for a, b in zip(first, again):
        assert torch.equal(a[dataset.iid_field], b[dataset.iid_field])
        assert torch.equal(a[dataset.item_id_list_field], b[dataset.item_id_list_field])


@pytest.mark.e2e
def test_per_user_trains_end_to_end_and_refuses_general_models(tiny_config):
    result = run_recbole_cmi("CMI", "tiny", config_dict=tiny_config(train_sampling="per_user", num_interest=2))
    assert result["test_result"]["recall@10"] >= 0
    with pytest.raises(ConfigValueError, match="per_user is for sequential models"):
        prepare("BPR", "tiny", config_dict=tiny_config(train_sampling="per_user"))
