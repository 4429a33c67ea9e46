"""Shared fixtures: a tiny synthetic dataset and tiny model settings, no network, CPU only."""

from __future__ import annotations

import contextlib
import io
import math
import re
import runpy
import sys
from pathlib import Path

import pytest

from recbole_cmi.data.synthetic import SyntheticConfig, generate, write_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_DATA = SyntheticConfig(
    n_users=60, n_items=80, n_categories=4, max_interests=3, min_len=6, max_len=16, mean_len=9, seed=7
)

# Small enough for a 1-epoch run in a few seconds; model-specific keys are ignored by other models.
TINY_SETTINGS = {
    "epochs": 1,
    "train_batch_size": 64,
    "eval_batch_size": 128,
    "MAX_ITEM_LIST_LENGTH": 10,
    "embedding_size": 16,
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 1,
    "gpu_id": "",
    "state": "ERROR",
    "show_progress": False,
    "seed": 2022,
    "reproducibility": True,
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "user_inter_num_interval": "[3,inf)",
}


@pytest.fixture(autouse=True)
def _isolated_run(tmp_path, monkeypatch):
    """RecBole writes log/, log_tensorboard/, saved/ under the cwd and reads --key=value from argv."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """A data_path holding ``tiny/tiny.inter`` and ``tiny/tiny.item``."""
    root = tmp_path_factory.mktemp("data")
    write_atomic(generate(TINY_DATA), root / "tiny")
    return root


@pytest.fixture
def tiny_config(tiny_data_root, tmp_path):
    """``tiny_config(**overrides)`` -> a config dict for ``run_recbole_cmi(model, "tiny", config_dict=...)``."""

    def make(**overrides):
        settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), checkpoint_dir=str(tmp_path / "saved"))
        settings.update(overrides)
        return settings

    return make


def call(main, argv):
    """main(argv) -> (exit status, stdout, stderr); argparse errors exit through SystemExit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
    return status, out.getvalue(), err.getvalue()


def script_main(script="run_recbole_cmi.py"):
    """The ``main(argv)`` of a script at the top of the repository (``run_recbole_cmi.py``, ``run_hyper.py``)."""
    return runpy.run_path(str(REPO_ROOT / script), run_name=Path(script).stem)["main"]


def flags(settings):
    """A settings dict as command-line flags: ``{"epochs": 1}`` -> ``["--epochs=1"]``."""
    return [f"--{key}={value}" for key, value in settings.items()]


def finite_metrics(result):
    """Every metric of a run's result is a finite number in [0, 1] (and there is at least one)."""
    values = list(result.values())
    return bool(values) and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)


def one_line_error(status, err, *expected):
    """A command's failure: exit status 2 and one line ``error: ...`` on stderr holding each of ``expected``."""
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]


def verb(name):
    """The front door's ``name`` verb as a ``main(argv)``: ``python -m recbole_cmi <name> argv...``."""
    from recbole_cmi.__main__ import main

    return lambda argv: main([name, *argv])


def unpadded(text):
    """Markdown with its pipe-table cells unpadded (``| a   |   1 |`` -> ``| a | 1 |``), so a test can match the
    cells as written whatever width their columns got; a list of lines gives a list of lines."""
    if isinstance(text, list):
        return [unpadded(line) for line in text]
    lines = text.split("\n")
    return "\n".join(
        re.sub(r" +(?=(?<!\\)\|)", " ", re.sub(r"(?<!\\)\| +", "| ", line)) if line.startswith("|") else line
        for line in lines
    )
