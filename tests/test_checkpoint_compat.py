"""Checkpoints written before 0.2 still load: refused without trust, read with it, and upgraded.

The fixtures in tests/fixtures/checkpoints/ were written by the old code (commit 46c6ba3; its README says how):
they pickle ``recbole_cmi.config.Config`` and the model class, so those import paths must stay where they are.
Evaluating them on the tiny data takes well under a second: not e2e.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import call, one_line_error, verb

from recbole_cmi.checkpoint import FORMAT, load_checkpoint
from recbole_cmi.config import Config
from recbole_cmi.errors import CheckpointError, DatasetError
from recbole_cmi.pipeline import evaluate_checkpoint, restore_pipeline

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"

# The test results the old code printed when it wrote each file (tests/fixtures/checkpoints/README.md).
BEFORE = {
    "cmi-before-0.2.pth": (
        "CMI",
        {
            "recall@10": 0.1167,
            "recall@20": 0.25,
            "recall@50": 0.6,
            "ndcg@10": 0.0493,
            "ndcg@20": 0.0837,
            "ndcg@50": 0.1526,
            "hit@10": 0.1167,
            "hit@20": 0.25,
            "hit@50": 0.6,
            "mrr@10": 0.0292,
            "mrr@20": 0.039,
            "mrr@50": 0.0499,
        },
    ),
    "sasrec-before-0.2.pth": (
        "SASRec",
        {
            "recall@10": 0.2167,
            "recall@20": 0.3667,
            "recall@50": 0.7333,
            "ndcg@10": 0.1181,
            "ndcg@20": 0.1562,
            "ndcg@50": 0.2288,
            "hit@10": 0.2167,
            "hit@20": 0.3667,
            "hit@50": 0.7333,
            "mrr@10": 0.0877,
            "mrr@20": 0.0982,
            "mrr@50": 0.1098,
        },
    ),
}
NAMES = sorted(BEFORE)


def assert_same_result(result, expected):
    assert set(result) == set(expected)
    for metric, value in expected.items():
        assert float(result[metric]) == pytest.approx(value, abs=1e-4), metric


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", NAMES)
def test_the_fixture_is_a_small_pickled_checkpoint_naming_the_config_class(name):
    path = FIXTURES / name
    assert path.stat().st_size < 200_000
    with zipfile.ZipFile(path) as archive:
        (pickled,) = [archive.read(n) for n in archive.namelist() if n.endswith("/data.pkl")]
    # What the old format pickled by reference: the config class and the model class, by their import paths.
    assert b"recbole_cmi.config" in pickled and b"Config" in pickled
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", NAMES)
def test_without_trust_an_old_checkpoint_is_refused_in_one_line_naming_the_file(name):
    path = FIXTURES / name
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert str(path) in message and "pickled Python objects" in message and "--trust_checkpoint" in message
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        evaluate_checkpoint(path)
    status, _, err = call(verb("recommend"), ["--checkpoint", str(path), "--user", "1"])
    one_line_error(status, err, str(path), "--trust_checkpoint")
    status, _, err = call(verb("checkpoint"), ["upgrade", str(path)])
    one_line_error(status, err, str(path), "--trust_checkpoint")


@pytest.mark.parametrize("name", NAMES)
def test_with_trust_the_config_is_ours_and_the_weights_load_into_todays_model(name, tiny_data_root):
    model_name, _ = BEFORE[name]
    path = FIXTURES / name
    checkpoint = load_checkpoint(path, trust=True)
    assert type(checkpoint["config"]) is Config
    assert checkpoint["config"]["model"] == model_name and checkpoint["config"]["dataset"] == "tiny"
    pipeline = restore_pipeline(path, trust=True, data_path=tiny_data_root)
    assert pipeline.config["data_path"] == str(tiny_data_root / "tiny")
    assert type(pipeline.model).__name__ == model_name
    restored = pipeline.model.state_dict()
    assert set(restored) == set(checkpoint["state_dict"])
    for key, tensor in checkpoint["state_dict"].items():
        assert torch.equal(restored[key], tensor), key


@pytest.mark.parametrize("name", NAMES)
def test_with_trust_todays_evaluation_equals_what_the_old_code_printed(name, tiny_data_root):
    _, expected = BEFORE[name]
    assert_same_result(evaluate_checkpoint(FIXTURES / name, trust=True, data_path=tiny_data_root), expected)


@pytest.mark.parametrize("name", NAMES)
def test_the_upgraded_fixture_loads_without_trust_and_evaluates_the_same(name, tiny_data_root, tmp_path):
    model_name, expected = BEFORE[name]
    path = FIXTURES / name
    before = sha256(path)
    target = tmp_path / "upgraded.pth"
    status, out, err = call(verb("checkpoint"), ["upgrade", str(path), "--out", str(target), "--trust_checkpoint"])
    assert status == 0, err
    assert out.strip() == f"safe checkpoint: {target}"
    assert sha256(path) == before  # the fixture itself is left alone
    assert torch.load(target, weights_only=True)["format"] == FORMAT
    upgraded = load_checkpoint(target)
    assert type(upgraded["config"]) is Config and upgraded["config"]["model"] == model_name
    assert_same_result(evaluate_checkpoint(target, data_path=tiny_data_root), expected)


def test_a_data_path_without_the_dataset_is_one_line_naming_the_folder(tmp_path):
    with pytest.raises(DatasetError) as caught:
        restore_pipeline(FIXTURES / NAMES[0], trust=True, data_path=tmp_path / "elsewhere")
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and str(tmp_path / "elsewhere" / "tiny") in message
