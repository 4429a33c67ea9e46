"""recbole_cmi.compat: the NumPy-2 aliases, anomaly mode, and checkpoint loading."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, TINY_SETTINGS
from recbole.config.configurator import Config as RecBoleConfig
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_cmi import compat
from recbole_cmi.checkpoint import FORMAT, load_checkpoint
from recbole_cmi.quick_start import run_recbole_cmi
from recbole_cmi.utils import get_model

NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


@pytest.fixture
def restore_anomaly_mode():
    before = torch.is_anomaly_enabled()
    yield
    torch.autograd.set_detect_anomaly(before)


def test_apply_twice_is_idempotent():
    compat.apply()
    patched = RecBoleConfig.compatibility_settings
    compat.apply()
    assert RecBoleConfig.compatibility_settings is patched
    for name, value in compat._NUMPY_ALIASES.items():
        assert getattr(np, name) is value, name
    assert np.float is np.float64 and np.long is np.int_ and np.bool is np.bool_


@pytest.mark.skipif(not NUMPY_2, reason="NumPy 1 still has the names RecBole reads")
def test_numpy2_lacks_the_names_recbole_reads_and_the_patch_applies():
    assert not hasattr(np, "float_") and not hasattr(np, "unicode_")
    assert compat.patch_numpy_aliases() is True
    assert RecBoleConfig.compatibility_settings is compat._set_numpy_aliases


def test_numpy_patch_is_a_no_op_where_not_needed(monkeypatch):
    monkeypatch.setattr(compat, "_numpy_needs_aliases", lambda: False)  # as on NumPy 1
    untouched = RecBoleConfig.compatibility_settings
    monkeypatch.setattr(RecBoleConfig, "compatibility_settings", untouched)
    sentinel = object()
    monkeypatch.setattr(np, "float", sentinel, raising=False)
    assert compat.patch_numpy_aliases() is False
    assert np.float is sentinel
    assert RecBoleConfig.compatibility_settings is untouched


def test_recbole_config_builds_under_numpy2():
    config = RecBoleConfig(
        model=get_model("SASRec"),
        dataset="ml-100k",
        config_dict={"gpu_id": "", "train_neg_sample_args": None, "state": "ERROR"},
    )
    assert config["model"] == "SASRec"
    assert np.float is np.float64  # RecBole's own code (metrics, layers) reads these after a Config


def test_disable_anomaly_mode_reports_and_is_idempotent(restore_anomaly_mode):
    torch.autograd.set_detect_anomaly(True)
    assert compat.disable_anomaly_mode() is True
    assert torch.is_anomaly_enabled() is False
    assert compat.disable_anomaly_mode() is False
    assert torch.is_anomaly_enabled() is False


@pytest.mark.e2e
def test_recbole_sequential_import_turns_anomaly_on_and_our_lookup_turns_it_off():
    """In a fresh process; also checks that importing recbole_cmi sets no global torch.load switch."""
    code = textwrap.dedent(
        """
        import os
        import torch
        states = [torch.is_anomaly_enabled()]
        import recbole.model.sequential_recommender  # RecBole's sine.py: set_detect_anomaly(True)
        states.append(torch.is_anomaly_enabled())
        import recbole_cmi  # compat.apply()
        states.append(torch.is_anomaly_enabled())
        torch.autograd.set_detect_anomaly(True)
        from recbole_cmi.utils import get_model
        get_model("SASRec")
        states.append(torch.is_anomaly_enabled())
        print(states, os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[False, True, False, False] None"


@pytest.fixture(scope="module")
def anomaly_run(tiny_data_root, tmp_path_factory):
    """One tiny SASRec run started with anomaly mode ON; records the mode inside training."""
    workdir = tmp_path_factory.mktemp("compat_run")
    seen = {"loss": [], "callback": []}
    original_loss = SASRec.calculate_loss

    def spy_loss(self, interaction):
        seen["loss"].append(torch.is_anomaly_enabled())
        return original_loss(self, interaction)

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", sys.argv[:1])
        mp.setattr(SASRec, "calculate_loss", spy_loss)
        torch.autograd.set_detect_anomaly(True)
        try:
            result = run_recbole_cmi(
                "SASRec",
                "tiny",
                config_dict=dict(TINY_SETTINGS, data_path=str(tiny_data_root), checkpoint_dir=str(workdir / "saved")),
                callback_fn=lambda epoch, score: seen["callback"].append(torch.is_anomaly_enabled()),
            )
            after = torch.is_anomaly_enabled()
        finally:
            torch.autograd.set_detect_anomaly(False)
    return result, seen, after


@pytest.mark.e2e
def test_training_runs_with_anomaly_mode_off(anomaly_run):
    result, seen, after = anomaly_run
    assert seen["loss"] and not any(seen["loss"]), "anomaly mode was on during a training step"
    assert seen["callback"] == [False]
    assert after is False
    assert result["test_result"]["ndcg@10"] >= 0


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_our_checkpoints_load_with_torchs_safe_default(anomaly_run, monkeypatch):
    result, _, _ = anomaly_run
    path = result["saved_model_file"]
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    # Our package switches nothing off globally: torch.load is torch's own, with its safe default,
    # and our checkpoints hold only what that default accepts.
    assert torch.load is torch.serialization.load
    raw = torch.load(path)
    assert raw["format"] == FORMAT and raw["config"]["final"]["model"] == "SASRec"
    checkpoint = load_checkpoint(path)
    assert checkpoint["config"]["model"] == "SASRec"
    assert "item_embedding.weight" in checkpoint["state_dict"]
