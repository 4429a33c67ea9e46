"""The speed and scale benchmark (recbole_cmi.benchmark.speed): sizes, memory, report, a tiny run (the fast
synthetic generator it uses: tests/data/test_synthetic.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import unpadded

from recbole_cmi.benchmark import speed, speed_report, speed_run
from recbole_cmi.benchmark.measure import REPORT_END_MARKER, parse_count, write_report
from recbole_cmi.benchmark.speed import parse_sizes
from recbole_cmi.benchmark.speed_run import ModelResult, Size, SizeResult
from recbole_cmi.memory import PeakMemory


@pytest.mark.parametrize(
    ("text", "value"), [("100k", 100_000), ("1m", 1_000_000), ("2.5M", 2_500_000), ("5000", 5000), ("1_000", 1000)]
)
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["", "k", "1.5", "-3k", "10x", "0"])
def test_parse_count_rejects(text):
    with pytest.raises(ValueError):
        parse_count(text)


def test_parse_sizes():
    assert parse_sizes("100k:10k, 5m:1m") == [Size(100_000, 10_000, "100k:10k"), Size(5_000_000, 1_000_000, "5m:1m")]
    for bad in ("1m", "1m:100k:3", "500:10k", "1m:100", ","):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_peak_memory_sees_a_freed_allocation():
    with PeakMemory() as memory:
        block = np.ones(96 * 2**20 // 8)  # 96 MB, touched
        del block
    assert memory.rss_peak_delta >= 80 * 2**20
    assert memory.cuda_peak_delta is None


def _result(model, samples_per_s, users_per_s, rows=10_000):
    return ModelResult(
        model=model,
        size="1k:1k",
        train_rows=rows,
        steps=10,
        step_rows=int(samples_per_s),
        train_seconds=1.0,
        data_seconds=0.1,
        eval_users=int(users_per_s),
        eval_seconds=1.0,
    )


def _environment():
    machine = {"cpu": "test CPU", "usable_cpus": 2, "logical_cpus": 2, "torch_threads": 2, "memory": "8 GiB"}
    machine.update(gpu=None, os="Linux")
    versions = {"recbole_cmi": "0", "recbole": "1.2.1", "torch": "2", "numpy": "2", "pandas": "2", "python": "3"}
    return {"machine": machine, "versions": versions}


def test_report_ratios_targets_and_scaling():
    args = speed.build_parser().parse_args([])
    small = SizeResult(size=Size(1000, 1000, "1k:1k"), interactions=1000, users=40, items=1000)
    small.models = [_result("CMI", 400, 100), _result("SASRec", 100, 100), _result("GRU4Rec", 200, 300)]
    big = SizeResult(size=Size(10_000, 1000, "10k:1k"), interactions=10_000, users=400, items=1000)
    big.models = [_result("CMI", 100, 100, rows=100_000), _result("SASRec", 100, 50, rows=100_000)]
    big.models.append(ModelResult(model="GRU4Rec", size="10k:1k", error="RuntimeError: out of memory"))
    text = speed_report.format_report(
        [small, big], args, _environment(), "python -m recbole_cmi.benchmark speed", "now", 60
    )
    assert "-:|" in text and "|:-" in text  # numbers right-aligned, names left
    text = unpadded(text)

    assert "| CMI | 0 | 400 | 25.0 | 0.25x | 100 | 1.00x |" in text  # 4x SASRec's speed: a quarter of its epoch
    assert "| 1k:1k | CMI | 0.25x met | 0.50x met | 1.00x met |" in text
    assert "| 10k:1k | CMI | 1.00x MISSED | - | 0.50x met |" in text
    assert "| GRU4Rec | failed: RuntimeError: out of memory |" in text
    # us/sample 2500 -> 10000: the epoch grows 40x for 10x the rows.
    assert "| CMI | 2,500.0 | 10,000.0 | 4.00 |" in text
    assert "- Machine: test CPU, 2 of 2 logical CPUs usable, torch threads 2, memory 8 GiB; no GPU; Linux" in text
    assert "- Versions: recbole_cmi 0, recbole 1.2.1, torch 2, numpy 2, pandas 2, python 3" in text


def test_write_report_keeps_the_hand_written_part(tmp_path):
    out = tmp_path / "results" / "speed.md"
    write_report(out, "# first\n")
    assert out.read_text() == f"# first\n\n{REPORT_END_MARKER}\n"
    out.write_text(out.read_text() + "\n## Analysis\nkept\n")
    write_report(out, "# second\n")
    assert out.read_text() == f"# second\n\n{REPORT_END_MARKER}\n\n## Analysis\nkept\n"


def test_model_entries_carry_config_overrides():
    assert speed_run.parse_model_spec("CMI") == ("CMI", {})
    assert speed_run.parse_model_spec("CMI:sparse_item_updates=True:num_interest=4") == (
        "CMI",
        {"sparse_item_updates": True, "num_interest": 4},
    )
    with pytest.raises(ValueError, match="Model:key=value"):
        speed_run.parse_model_spec("CMI:sparse_item_updates")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "CMI:oops"], "expected Model:key=value"),
        (["--models", "CMI", "--profile", "SASRec"], "--profile names entries that --models does not run: SASRec"),
    ],
)
def test_bad_model_entries_are_one_line_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        speed.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_unknown_model_is_a_one_line_error(capsys):
    assert speed.main(["--models", "CMI,NoSuchModel"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'NoSuchModel'" in err[0]


@pytest.mark.e2e
def test_tiny_benchmark_run(tmp_path, capsys):
    out, raw = tmp_path / "speed.md", tmp_path / "speed.json"
    argv = [
        "--sizes", "3k:300", "--models", "CMI,SASRec,GRU4Rec,CMI:sparse_item_updates=True", "--steps", "2",
        "--warmup", "1", "--batch-size", "32", "--max-len", "10", "--d", "16", "--num-interest", "4",
        "--eval-users", "64", "--eval-batch-size", "32", "--profile", "CMI:sparse_item_updates=True",
        "--profile-steps", "1",
        "--out", str(out), "--json", str(raw),
    ]  # fmt: skip
    assert speed.main(argv) == 0
    # One line per finished model on stdout, before the report.
    finished = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[3k:300] ")]
    models = [line.removeprefix("[3k:300] ").split(": ")[0] for line in finished]
    assert models == ["CMI", "SASRec", "GRU4Rec", "CMI:sparse_item_updates=True"]
    assert all(" samples/s (" in line and " MB eval" in line for line in finished), finished

    text = unpadded(out.read_text())
    assert "python -m recbole_cmi.benchmark speed --sizes 3k:300 --models CMI,SASRec,GRU4Rec,CMI:sparse" in text
    assert "## Results at 3k:300" in text
    assert "## Profile of CMI:sparse_item_updates=True's training step at 3k:300" in text
    assert "## Profile of CMI:sparse_item_updates=True's full-sort evaluation at 3k:300" in text
    assert "full_sort_predict + history mask" in text
    assert "| 3k:300 | CMI | " in text and "| 3k:300 | CMI:sparse_item_updates=True | " in text
    assert "| SASRec |" in text and "1.00x |" in text and text.rstrip().endswith(REPORT_END_MARKER)
    payload = json.loads(raw.read_text())
    assert set(payload["machine"]) >= {"cpu", "usable_cpus", "gpu"} and "torch" in payload["versions"]
    (size,) = payload["sizes"]
    assert size["interactions"] > 2900 and size["items"] <= 300
    assert [m["model"] for m in size["models"]] == ["CMI", "SASRec", "GRU4Rec", "CMI:sparse_item_updates=True"]
    for m in size["models"]:
        assert m["error"] is None
        assert m["steps"] == 2 and m["step_rows"] == 64 and m["samples_per_s"] > 0
        assert m["epoch_seconds"] == pytest.approx(m["train_rows"] / m["samples_per_s"])
        assert 64 <= m["eval_users"] <= 96 and m["users_per_s"] > 0
        assert m["train_rows"] > 2000 and m["params"] > 0 and m["train_peak_rss"] >= 0
