"""recbole_cmi.trainer and trainer_checkpoint: atomic checkpoints, RNG state, resume rules, non-finite losses (no full
runs)."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS

from recbole_cmi.checkpoint import atomic_torch_save, load_checkpoint
from recbole_cmi.data.dataloader import HookedTrainDataLoader
from recbole_cmi.errors import CheckpointError, NonFiniteLossError
from recbole_cmi.pipeline import prepare
from recbole_cmi.trainer import Trainer
from recbole_cmi.trainer_checkpoint import capture_rng_state, last_checkpoint_path, restore_rng_state


@pytest.fixture(scope="module")
def prepared(tiny_data_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trainer")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", sys.argv[:1])
        config, _, loaders, model = prepare(
            "SASRec", "tiny", config_dict=dict(TINY_SETTINGS, data_path=str(tiny_data_root))
        )
    return config, loaders, model


@pytest.fixture
def trainer(prepared, tmp_path):
    config, _, model = prepared
    config["checkpoint_dir"] = str(tmp_path / "saved")
    return Trainer(config, model)


def test_last_checkpoint_path():
    assert last_checkpoint_path("saved/SASRec-Nov-27-2026_12-00-00.pth") == "saved/SASRec-Nov-27-2026_12-00-00-last.pth"
    assert last_checkpoint_path("x") == "x-last.pth"


@pytest.mark.parametrize("failure", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_partial_file(trainer, monkeypatch, failure):
    trainer._save_checkpoint(0)
    trainer._save_last_checkpoint(0)
    folder = os.path.dirname(trainer.saved_model_file)
    before = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
    assert sorted(before) == sorted(os.path.basename(p) for p in (trainer.saved_model_file, trainer.last_model_file))

    def torch_save_dies_midway(obj, f, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise failure

    monkeypatch.setattr(torch, "save", torch_save_dies_midway)
    with pytest.raises(type(failure)):
        trainer._save_checkpoint(1)
    with pytest.raises(type(failure)):
        trainer._save_last_checkpoint(1)
    after = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
    assert after == before  # same files, same bytes: no temp file, no truncated target
    monkeypatch.undo()
    assert load_checkpoint(trainer.saved_model_file)["epoch"] == 0


def test_atomic_torch_save_replaces_the_target_in_one_step(tmp_path):
    target = tmp_path / "c.pth"
    atomic_torch_save({"v": 1}, target)
    atomic_torch_save({"v": 2}, target)
    assert torch.load(target)["v"] == 2
    assert os.listdir(tmp_path) == ["c.pth"]


def test_rng_states_round_trip(prepared):
    _, (train_data, _, _), _ = prepared

    def draw():
        return (
            random.random(),
            float(np.random.rand()),
            float(torch.rand(1)),
            torch.randperm(50, generator=train_data.generator).tolist(),
        )

    state = capture_rng_state(train_data)
    first = draw()
    restore_rng_state(state, train_data)
    assert draw() == first
    assert draw() != first


def test_hook_generators_are_part_of_the_loader_state(prepared):
    config, (train_data, _, _), _ = prepared

    class Hook:
        def __init__(self):
            self.generator = torch.Generator().manual_seed(1)

        def __call__(self, interaction):
            return interaction

    hook = Hook()
    loader = HookedTrainDataLoader(config, train_data._dataset, train_data._sampler, shuffle=True, hooks=[hook, len])
    state = loader.get_rng_state()
    first = (torch.rand(3, generator=hook.generator).tolist(), torch.rand(3, generator=loader.generator).tolist())
    loader.set_rng_state(state)
    again = (torch.rand(3, generator=hook.generator).tolist(), torch.rand(3, generator=loader.generator).tolist())
    assert again == first
    assert state["hooks"][1] is None  # a hook without a generator


def test_resuming_from_the_best_file_continues_from_the_newer_last_checkpoint(prepared, tmp_path):
    config, _, model = prepared
    config["checkpoint_dir"] = str(tmp_path / "saved")
    first = Trainer(config, model)
    first.best_valid_result = {"ndcg@20": 0.5}
    first.best_valid_score = 0.5
    first._save_checkpoint(0)
    first.cur_step = 2
    first._save_last_checkpoint(2)

    resumed = Trainer(config, model)
    resumed.resume_checkpoint(first.saved_model_file)
    assert resumed.start_epoch == 3 and resumed.cur_step == 2
    assert resumed.saved_model_file == first.saved_model_file  # new best models still go to the run's file
    assert resumed.best_valid_result == {"ndcg@20": 0.5} and resumed.best_valid_score == 0.5

    again = Trainer(config, model)
    again.resume_checkpoint(first.last_model_file)
    assert again.start_epoch == 3 and again.saved_model_file == first.saved_model_file

    os.remove(first.saved_model_file)
    with pytest.raises(CheckpointError, match="whose best checkpoint .* is missing"):
        Trainer(config, model).resume_checkpoint(first.last_model_file)


def test_a_finished_run_trains_nothing_more(prepared, tmp_path):
    config, (train_data, valid_data, _), model = prepared
    config["checkpoint_dir"] = str(tmp_path / "saved")
    assert config["epochs"] == 1
    first = Trainer(config, model)
    first._save_checkpoint(0)
    before = open(first.saved_model_file, "rb").read()
    resumed = Trainer(config, model)
    resumed.resume_checkpoint(first.saved_model_file)
    resumed._train_epoch = lambda *a, **k: pytest.fail("trained again")
    resumed.fit(train_data, valid_data)
    assert open(first.saved_model_file, "rb").read() == before  # RecBole would re-save it as epoch -1


def test_unusable_checkpoints_are_checkpoint_errors(trainer, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        trainer.resume_checkpoint(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*garbage.pth"):
        trainer.resume_checkpoint(garbage)
    not_ours = tmp_path / "weights.pth"
    torch.save({"weights": torch.zeros(2)}, not_ours)
    with pytest.raises(CheckpointError, match="not a RecBole/recbole_cmi checkpoint"):
        trainer.resume_checkpoint(not_ours)
    state = trainer.model.state_dict()
    for config, fragment in (
        ({"model": "GRU4Rec", "dataset": "tiny"}, "written for model 'GRU4Rec', not 'SASRec'"),
        ({"model": "SASRec", "dataset": "ml-100k"}, "written for dataset 'ml-100k', not 'tiny'"),
    ):
        path = tmp_path / "foreign.pth"
        torch.save({"config": config, "state_dict": state, "epoch": 0}, path)
        with pytest.raises(CheckpointError, match=fragment):
            trainer.resume_checkpoint(path)
    wrong_shape = dict(state, **{"item_embedding.weight": torch.zeros(3, 3)})
    torch.save({"config": {"model": "SASRec", "dataset": "tiny"}, "state_dict": wrong_shape, "epoch": 0}, path)
    with pytest.raises(CheckpointError, match="does not fit this model's settings"):
        trainer.resume_checkpoint(path)


def test_non_finite_loss_names_the_component(trainer, prepared, monkeypatch):
    _, (train_data, _, _), model = prepared
    finite = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(NonFiniteLossError, match=r"epoch 4: loss component 'loss' of SASRec is nan"):
        trainer._train_epoch(train_data, 4, loss_func=lambda interaction: finite * float("nan"))
    monkeypatch.setattr(model, "loss_names", ("rec", "cl"), raising=False)
    with pytest.raises(NonFiniteLossError, match=r"loss component 'cl' of SASRec is inf"):
        trainer._train_epoch(train_data, 0, loss_func=lambda interaction: (finite * 1.0, finite * float("inf")))
    monkeypatch.setattr(model, "loss_names", None, raising=False)
    with pytest.raises(NonFiniteLossError, match=r"loss component 'loss term 1'"):
        trainer._train_epoch(train_data, 0, loss_func=lambda interaction: (finite * 1.0, finite * float("nan")))


def test_save_last_checkpoint_false_skips_the_last_file(trainer, monkeypatch):
    monkeypatch.setitem(trainer.config.final_config_dict, "save_last_checkpoint", False)
    trainer._save_last_checkpoint(0)
    assert not os.path.exists(trainer.last_model_file)
    monkeypatch.setitem(trainer.config.final_config_dict, "save_last_checkpoint", True)
    trainer._save_last_checkpoint(0)
    assert load_checkpoint(trainer.last_model_file)["kind"] == "last"


@pytest.mark.parametrize("exclude", [False, True])
def test_exclude_history_items_masks_exactly_the_input_history(trainer, prepared, monkeypatch, exclude):
    config, (_, _, test_data), model = prepared
    model.eval()
    batch = next(iter(test_data))
    trainer.tot_item_num = test_data._dataset.item_num  # set by Trainer.evaluate
    monkeypatch.setitem(config.final_config_dict, "exclude_history_items", False)
    with torch.no_grad():
        _, plain, _, _ = trainer._full_sort_batch_eval(batch)
        monkeypatch.setitem(config.final_config_dict, "exclude_history_items", exclude)
        interaction, scores, _, _ = trainer._full_sort_batch_eval(batch)
    history = interaction[config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]]
    in_history = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, history, True)
    in_history[:, 0] = False  # padding: -inf either way
    assert in_history.any()
    if exclude:
        assert torch.isneginf(scores[in_history]).all()
    else:
        assert torch.equal(scores[in_history], plain[in_history]) and torch.isfinite(scores[in_history]).all()
    assert torch.equal(scores[~in_history], plain[~in_history])
