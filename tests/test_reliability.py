"""End-to-end reliability: exact resume, determinism, NaN losses, foreign checkpoints, odd data."""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_cmi.checkpoint import load_checkpoint
from recbole_cmi.config import Config
from recbole_cmi.data.dataloader import data_preparation
from recbole_cmi.errors import CheckpointError, DatasetError
from recbole_cmi.pipeline import create_dataset
from recbole_cmi.quick_start import run_recbole_cmi
from recbole_cmi.trainer import NonFiniteLossError
from recbole_cmi.trainer_checkpoint import last_checkpoint_path
from recbole_cmi.utils import train_batch_hooks


def run(data_root, checkpoint_dir, model="SASRec", resume=None, callback_fn=None, **overrides):
    config = dict(TINY_SETTINGS, data_path=str(data_root), checkpoint_dir=str(checkpoint_dir), **overrides)
    return run_recbole_cmi(model, "tiny", config_dict=config, resume=resume, callback_fn=callback_fn)


@pytest.fixture(scope="module")
def runs(tiny_data_root, tmp_path_factory):
    """3 epochs straight; 1 epoch then resumed to 3; a second 1-epoch run with the same seed."""
    workdir = tmp_path_factory.mktemp("reliability")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", sys.argv[:1])
        straight = run(tiny_data_root, workdir / "straight", epochs=3)
        short = run(tiny_data_root, workdir / "resumed", epochs=1)
        short_copy = {k: short[k] for k in ("best_valid_result", "test_result", "saved_model_file")}
        short_state = load_checkpoint(short["saved_model_file"])["state_dict"]
        resumed = run(tiny_data_root, workdir / "resumed", epochs=3, resume=short["saved_model_file"])
        again = run(tiny_data_root, workdir / "again", epochs=1)
    return {"straight": straight, "short": short_copy, "short_state": short_state, "resumed": resumed, "again": again}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.e2e
def test_resumed_run_ends_exactly_like_an_uninterrupted_one(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    assert resumed["saved_model_file"] == runs["short"]["saved_model_file"]  # the run keeps its file names
    assert resumed["best_valid_score"] == straight["best_valid_score"]
    assert resumed["best_valid_result"] == straight["best_valid_result"]
    assert resumed["test_result"] == straight["test_result"]
    last_straight = load_checkpoint(last_checkpoint_path(straight["saved_model_file"]))
    last_resumed = load_checkpoint(last_checkpoint_path(resumed["saved_model_file"]))
    assert last_straight["epoch"] == last_resumed["epoch"] == 2
    assert same_tensors(last_straight["state_dict"], last_resumed["state_dict"])
    assert same_tensors(
        load_checkpoint(straight["saved_model_file"])["state_dict"],
        load_checkpoint(resumed["saved_model_file"])["state_dict"],
    )
    assert last_straight["optimizer"]["state"].keys() == last_resumed["optimizer"]["state"].keys()


@pytest.mark.e2e
def test_resumed_run_really_trained_on(runs):
    last = load_checkpoint(last_checkpoint_path(runs["resumed"]["saved_model_file"]))
    assert not same_tensors(last["state_dict"], runs["short_state"])


@pytest.mark.e2e
def test_same_seed_gives_identical_metrics_and_weights(runs):
    short, again = runs["short"], runs["again"]
    assert again["best_valid_result"] == short["best_valid_result"]
    assert again["test_result"] == short["test_result"]
    assert same_tensors(load_checkpoint(again["saved_model_file"])["state_dict"], runs["short_state"])


@pytest.mark.e2e
def test_resuming_a_finished_run_changes_nothing(runs, tiny_data_root):
    straight = runs["straight"]
    best = Path(straight["saved_model_file"])
    digest = hashlib.sha256(best.read_bytes()).hexdigest()
    result = run(tiny_data_root, best.parent, epochs=3, resume=str(best))
    assert result["best_valid_result"] == straight["best_valid_result"]
    assert result["test_result"] == straight["test_result"]
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest


@pytest.mark.e2e
def test_checkpoint_of_another_model_is_refused(runs, tiny_data_root, tmp_path):
    with pytest.raises(CheckpointError, match="was written for model 'SASRec', not 'GRU4Rec'"):
        run(tiny_data_root, tmp_path / "saved", model="GRU4Rec", resume=runs["again"]["saved_model_file"])


@pytest.mark.e2e
def test_nan_loss_stops_training_and_keeps_the_best_checkpoint(tiny_data_root, tmp_path, monkeypatch):
    state = {"validated": False}
    original = SASRec.calculate_loss

    def loss_goes_nan_after_the_first_epoch(self, interaction):
        loss = original(self, interaction)
        return loss * float("nan") if state["validated"] else loss

    monkeypatch.setattr(SASRec, "calculate_loss", loss_goes_nan_after_the_first_epoch)
    callback = lambda epoch, score: state.update(validated=True)  # noqa: E731
    with pytest.raises(NonFiniteLossError) as err:
        run(tiny_data_root, tmp_path / "saved", epochs=3, callback_fn=callback)
    message = str(err.value)
    assert message.startswith("training stopped at epoch 1: loss component 'loss' of SASRec is nan")
    best_file = message.split("the best checkpoint so far is kept at ")[1].split(" (")[0]
    best = load_checkpoint(best_file)
    assert best["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in best["state_dict"].values() if t.is_floating_point())
    assert load_checkpoint(last_checkpoint_path(best_file))["epoch"] == 0
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted(
        [Path(best_file).name, Path(last_checkpoint_path(best_file)).name]
    )


# --- odd data ---------------------------------------------------------------------------------


def dataset_with(root: Path, rows: list[str], **config) -> Config:
    folder = root / "odd"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "odd.inter").write_text(
        "".join(line + "\n" for line in ["user_id:token\titem_id:token\ttimestamp:float", *rows]), encoding="utf-8"
    )
    settings = {"data_path": str(root), "gpu_id": "", "state": "ERROR", "topk": [5], "valid_metric": "NDCG@5"}
    return Config("SASRec", "odd", config_dict=dict(settings, **config), read_argv=False)


def regular_rows(users=6, items=8):
    return [f"u{u}\tv{(u + i) % items + 1}\t{i}" for u in range(users) for i in range(items - 2)]


def split_users(config):
    dataset = create_dataset(config)
    loaders = data_preparation(config, dataset, train_batch_hooks(config["model"]))
    tokens = dataset.field2id_token["user_id"]
    return dataset, [set(tokens[loader._dataset.inter_feat["user_id"].numpy()]) for loader in loaders]


def test_users_with_one_interaction_are_in_no_split(tmp_path):
    dataset, splits = split_users(dataset_with(tmp_path, regular_rows() + ["lonely\tv1\t3"]))
    assert "lonely" in set(dataset.field2id_token["user_id"])  # loaded ...
    assert all("lonely" not in users for users in splits)  # ... but it gives no sample at all
    dataset, _ = split_users(
        dataset_with(tmp_path, regular_rows() + ["lonely\tv1\t3"], user_inter_num_interval="[2,inf)")
    )
    assert "lonely" not in set(dataset.field2id_token["user_id"])


def test_nothing_left_after_filtering_is_a_clear_error(tmp_path):
    config = dataset_with(tmp_path, [f"x{i}\tv{i}\t{i}" for i in range(1, 9)], user_inter_num_interval="[2,inf)")
    with pytest.raises(DatasetError, match="no interactions left after filtering .*at most 1 per user"):
        create_dataset(config)


@pytest.mark.parametrize(
    ("per_user", "split"), [(1, "training"), (2, "valid"), (3, "valid")], ids=["1 each", "2 each", "3 each"]
)
def test_empty_splits_are_clear_errors(tmp_path, per_user, split):
    rows = [f"u{u}\tv{u + i}\t{i}" for u in range(1, 9) for i in range(per_user)]
    config = dataset_with(tmp_path, rows)
    with pytest.raises(DatasetError, match=f"the {split} split of dataset 'odd' is empty"):
        data_preparation(config, create_dataset(config), train_batch_hooks(config["model"]))


def test_topk_above_the_item_count_is_a_clear_error(tmp_path):
    config = dataset_with(tmp_path, regular_rows(items=8), topk=[5, 50], valid_metric="NDCG@5")
    with pytest.raises(DatasetError, match=r"topk=\[5, 50\]: dataset 'odd' has only 8 items"):
        data_preparation(config, create_dataset(config), train_batch_hooks(config["model"]))


def test_duplicate_rows_are_kept_unless_rm_dup_inter(tmp_path):
    rows = regular_rows() + regular_rows()[:5]
    assert create_dataset(dataset_with(tmp_path, rows)).inter_num == len(rows)
    assert create_dataset(dataset_with(tmp_path, rows, rm_dup_inter="first")).inter_num == len(rows) - 5


ODD = st.sampled_from(["", " ", '"q', 'a"b', "NULL", "nan", "1e400", "-0", "0x10", "1_000", "١٢", "x y", "#"])


@st.composite
def nearly_valid_inter_file(draw):
    rows = []
    for _ in range(draw(st.integers(1, 14))):
        user = draw(st.sampled_from(["u1", "u2", "u3"]) | ODD)
        item = draw(st.sampled_from(["v1", "v2", "v3", "v4"]) | ODD)
        stamp = draw(st.integers(0, 100).map(str) | st.floats(allow_nan=False).map(repr) | ODD)
        rows.append(f"{user}\t{item}\t{stamp}")
    return rows


@settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=nearly_valid_inter_file())
def test_nearly_valid_files_load_or_fail_with_a_dataset_error(rows):
    """Whatever passes our validation, RecBole loads and splits; the rest is a DatasetError."""
    root = Path(tempfile.mkdtemp(prefix="odd-"))
    try:
        config = dataset_with(root, rows, topk=[1], valid_metric="NDCG@1")
        try:
            data_preparation(config, create_dataset(config), train_batch_hooks(config["model"]))
        except DatasetError as err:
            assert "\n" not in str(err)
    finally:
        shutil.rmtree(root, ignore_errors=True)
