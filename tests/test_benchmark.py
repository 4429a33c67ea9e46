"""python -m recbole_cmi.benchmark accuracy: a tiny 2-model x 2-seed benchmark (table from the csv) with a third
model that fails (recorded while the rest continue), --resume, timeouts, and the command line's one-line errors."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS

from recbole_cmi.benchmark import report
from recbole_cmi.benchmark.__main__ import SUBCOMMANDS
from recbole_cmi.benchmark.__main__ import main as benchmark_main
from recbole_cmi.benchmark.accuracy import BenchmarkSettings, parse_value, run_benchmark
from recbole_cmi.errors import ConfigValueError, UnknownModelError

# Tiny models; keys a model does not read are ignored by it.
TINY_OVERRIDES = {
    key: TINY_SETTINGS[key]
    for key in ("epochs", "train_batch_size", "MAX_ITEM_LIST_LENGTH", "n_layers", "n_heads", "inner_size",
                "user_inter_num_interval", "load_col", "state")
}  # fmt: skip


def settings(tiny_data_root, tmp_path, **kwargs) -> BenchmarkSettings:
    overrides = dict(TINY_OVERRIDES, data_path=str(tiny_data_root), embedding_size=16, hidden_size=16)
    overrides.update(kwargs.pop("overrides", {}))
    values = dict(dataset="tiny", models=["SASRec", "GRU4Rec"], seeds=2, overrides=overrides)
    values.update(out=str(tmp_path / "results"), work_dir=str(tmp_path / "work"), command="pytest")
    values.update(kwargs)
    return BenchmarkSettings(**values)


@pytest.fixture(scope="module")
def two_by_two(tiny_data_root, tmp_path_factory):
    """SASRec and GRU4Rec x 2 seeds, plus ComiRecSA, which cannot have 0 interests and fails."""
    tmp_path = tmp_path_factory.mktemp("bench")
    given = settings(tiny_data_root, tmp_path, models=["SASRec", "GRU4Rec", "ComiRecSA"], overrides={"num_interest": 0})
    return run_benchmark(given), given


def test_two_models_two_seeds_write_the_csv_and_the_table_from_it(two_by_two):
    outcome, _ = two_by_two
    assert outcome.csv_path.name == "tiny-loo.csv" and outcome.md_path.name == "tiny-loo.md"
    rows = [r for r in report.read_runs(outcome.csv_path) if r["status"] == "ok"]
    assert [(r["model"], r["seed"]) for r in rows] == [
        ("SASRec", "2022"), ("GRU4Rec", "2022"), ("SASRec", "2023"), ("GRU4Rec", "2023"),
    ]  # fmt: skip
    assert len({r["config_sha"] for r in rows}) == 1
    assert all(r["embedding_size"] == "16" and r["hidden_size"] == "16" for r in rows)  # one shared d
    assert all(r["valid_metric"] == "NDCG@20" and int(r["epochs_run"]) == 1 for r in rows)
    assert {r["n_test_users"] for r in rows} == {"60"}
    text = outcome.md_path.read_text()
    columns = ["test_recall@10", "test_ndcg@20", "test_hit@50"]
    for model in ("SASRec", "GRU4Rec"):
        runs = [r for r in rows if r["model"] == model]
        line = next(line for line in text.splitlines() if line.startswith(f"| {model} |"))
        for column in columns:
            values = [float(r[column]) for r in runs]
            cell = f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"
            assert cell in line, (model, column, line)
        seconds = statistics.fmean(float(r["train_s_per_epoch"]) for r in runs)
        assert f"{seconds:.1f} ±" in line
        assert line.endswith("| 2/2 |")
    assert "| model | Recall@10 | Recall@20 | Recall@50 | NDCG@10 |" in text
    assert "embedding_size: 16" in text and "eval_protocol: loo" in text
    for package in ("torch", "recbole", "numpy", "recbole_cmi"):
        assert f"{package} " in text
    assert "nproc:" in text and "cpu:" in text


def test_a_failing_model_is_recorded_and_the_others_continue(two_by_two):
    outcome, given = two_by_two
    tmp_path = Path(given.work_dir).parent
    rows = report.read_runs(outcome.csv_path)
    assert [(r["model"], r["status"]) for r in rows] == [
        ("SASRec", "ok"), ("GRU4Rec", "ok"), ("ComiRecSA", "failed"),
        ("SASRec", "ok"), ("GRU4Rec", "ok"), ("ComiRecSA", "failed"),
    ]  # fmt: skip
    error = rows[2]["error"]
    assert "num_interest" in error and "\n" not in error
    text = outcome.md_path.read_text()
    assert "## Failed runs" in text and "| ComiRecSA | 2022 |" in text and "| ComiRecSA | 2023 |" in text
    assert "| ComiRecSA | – |" in text and "| 0/2 |" in text  # no numbers for a model without a finished run
    assert (tmp_path / "work" / "ComiRecSA-seed2022" / "run.log").is_file()  # its log is kept
    assert not (tmp_path / "work" / "GRU4Rec-seed2022" / "saved").exists()  # checkpoints are not


def test_resume_skips_finished_runs_and_refuses_another_config(two_by_two):
    outcome, given = two_by_two
    finished = [(r["model"], r["seed"]) for r in report.read_runs(outcome.csv_path) if r["status"] == "ok"]
    # Only the failed runs run again (and fail again); the finished ones are kept as they were.
    again = run_benchmark(dataclasses.replace(given, resume=True))
    rows = report.read_runs(again.csv_path)
    assert [(r["model"], r["seed"]) for r in rows if r["status"] == "ok"] == finished
    assert sorted((r["model"], r["seed"]) for r in rows if r["status"] != "ok") == [
        ("ComiRecSA", "2022"), ("ComiRecSA", "2023"),
    ]  # fmt: skip
    other = dataclasses.replace(given, resume=True, overrides={**given.overrides, "epochs": 2})
    with pytest.raises(ConfigValueError, match="another shared config"):
        run_benchmark(other)


def test_a_run_past_its_timeout_is_recorded(tiny_data_root, tmp_path):
    outcome = run_benchmark(settings(tiny_data_root, tmp_path, models=["GRU4Rec"], seeds=1, run_timeout=0.5))
    (row,) = report.read_runs(outcome.csv_path)
    assert row["status"] == "failed" and row["error"] == "stopped after --run_timeout=0.5 s"


def test_mean_and_sample_std_of_the_summary():
    rows = [
        {"model": "A", "status": "ok", "test_recall@10": "0.1", "epochs_run": "3", "epochs": "3"},
        {"model": "A", "status": "ok", "test_recall@10": "0.3", "epochs_run": "2", "epochs": "3"},
        {"model": "A", "status": "failed", "test_recall@10": ""},
        {"model": "B", "status": "ok", "test_recall@10": "0.2", "epochs_run": "1", "epochs": "3"},
    ]
    a, b = report.summarize(rows, ["A", "B"])
    assert a.metrics["recall@10"] == pytest.approx((0.2, statistics.stdev([0.1, 0.3])))
    assert (a.ok, a.runs, a.epochs_capped) == (2, 3, 1)
    assert b.metrics["recall@10"] == (0.2, None)
    assert report.format_mean_std(b.metrics["recall@10"]) == "0.2000"


def test_option_values_are_read_like_recboles_command_line():
    assert parse_value("0.001") == 0.001
    assert parse_value("[10,20]") == [10, 20]
    assert parse_value("True") is True and parse_value("false") is False
    assert parse_value("[3,inf)") == "[3,inf)"
    assert parse_value("CE") == "CE"


def test_bad_options_fail_before_any_run(tiny_data_root, tmp_path):
    with pytest.raises(UnknownModelError, match="NoSuchModel"):
        run_benchmark(settings(tiny_data_root, tmp_path, models=["SASRec", "NoSuchModel"]))
    with pytest.raises(ConfigValueError, match="--protocol"):
        run_benchmark(settings(tiny_data_root, tmp_path, protocol="leave_two_out"))
    with pytest.raises(ConfigValueError, match="use --seeds"):
        run_benchmark(settings(tiny_data_root, tmp_path, overrides={"seed": 1}))
    assert not (tmp_path / "work").exists()


def test_the_dispatcher_names_its_subcommands(capsys):
    assert "accuracy" in SUBCOMMANDS
    assert benchmark_main(["speedy"]) == 2
    assert (
        capsys.readouterr().err.strip() == f"error: unknown benchmark 'speedy' (choose from {', '.join(SUBCOMMANDS)})"
    )
    assert benchmark_main(["--help"]) == 0


def test_command_line_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        benchmark_main(["accuracy", "--dataset=tiny", "--models=SASRec", "oops"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: unrecognised argument oops: config keys are given as --key=value (see --help)"
    ]
    assert benchmark_main(["accuracy", "--dataset=tiny", "--models=SASRec,NoSuchModel"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[0].startswith("error: unknown model 'NoSuchModel'")
