"""python -m recbole_cmi.benchmark accuracy: a tiny 2-model x 2-seed benchmark (table and chart from the csv) with a
third model that fails (recorded while the rest continue), --resume, timeouts, the paired t-test on hand-computed
numbers, the chart (and its absence without matplotlib), and the command line's one-line errors."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import statistics
import sys
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS, unpadded

from recbole_cmi.benchmark import report, report_charts, report_runs, report_sections, report_stats
from recbole_cmi.benchmark.__main__ import SUBCOMMANDS
from recbole_cmi.benchmark.__main__ import main as benchmark_main
from recbole_cmi.benchmark.accuracy import run_benchmark
from recbole_cmi.benchmark.accuracy_settings import BenchmarkSettings, config_sha, shared_config
from recbole_cmi.cli import OneLineArgumentParser, config_values
from recbole_cmi.errors import ConfigValueError, UnknownModelError
from recbole_cmi.memory import cuda_peak_mib, peak_rss_mib

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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk


@pytest.mark.e2e
def test_two_models_two_seeds_write_the_csv_and_the_table_from_it(two_by_two):
    outcome, given = two_by_two
    folder = Path(given.out) / "tiny"
    assert (outcome.csv_path, outcome.md_path, outcome.png_path) == (
        folder / "loo.csv", folder / "loo.md", folder / "loo.png",
    )  # fmt: skip
    assert sorted(os.listdir(folder)) == ["loo-curves.png", "loo.csv", "loo.md", "loo.png"]  # no temporary file
    rows = [r for r in report_runs.read_runs(outcome.csv_path) if r["status"] == "ok"]
    assert [(r["model"], r["seed"]) for r in rows] == [
        ("SASRec", "2022"), ("GRU4Rec", "2022"), ("SASRec", "2023"), ("GRU4Rec", "2023"),
    ]  # fmt: skip
    assert len({r["config_sha"] for r in rows}) == 1
    assert all(r["embedding_size"] == "16" and r["hidden_size"] == "16" for r in rows)  # one shared d
    assert all(r["valid_metric"] == "NDCG@20" and int(r["epochs_run"]) == 1 for r in rows)
    assert {r["n_test_users"] for r in rows} == {"60"}
    assert {r["exclude_history_items"] for r in rows} == {"False"}  # the tiny dataset keeps RecBole's ranking
    text = unpadded(outcome.md_path.read_text())
    assert "all items are ranked (history items included, as RecBole does for sequential models" in text
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
        eval_s = [float(r["eval_s"]) for r in runs]
        rss = [float(r["peak_rss_mib"]) for r in runs]
        assert all(0 < s < float(r["total_s"]) for s, r in zip(eval_s, runs))
        assert all(100 < mib < 64 * 1024 for mib in rss)  # Python + torch alone take well over 100 MiB
        assert all(r["cuda_peak_mib"] == "" for r in runs)  # CPU runs
        assert f"| {statistics.fmean(eval_s):.2f} ± {statistics.stdev(eval_s):.2f} | " in line
        assert f"| {statistics.fmean(rss):.0f} ± {statistics.stdev(rss):.0f} | 2/2 |" in line
        assert line.endswith("| 2/2 |")
    assert "| model | Recall@10 | Recall@20 | Recall@50 | NDCG@10 |" in text
    assert "| train s/epoch | eval s | peak RSS MiB | runs ok |" in text and "peak CUDA MiB |" not in text
    assert "![chart](loo.png)" in text
    assert png_size(outcome.png_path) == (500, 360)  # 2 models drawn (ComiRecSA has no number): 5 x 3.6 in, 100 dpi
    assert "embedding_size: 16" in text and "eval_protocol: loo" in text
    for package in ("torch", "recbole", "numpy", "recbole_cmi"):
        assert f"{package} " in text
    assert "logical CPUs usable, torch threads" in text and "- machine: " in text  # recbole_cmi.machine's line


@pytest.mark.e2e
def test_a_failing_model_is_recorded_and_the_others_continue(two_by_two):
    outcome, given = two_by_two
    tmp_path = Path(given.work_dir).parent
    rows = report_runs.read_runs(outcome.csv_path)
    assert [(r["model"], r["status"]) for r in rows] == [
        ("SASRec", "ok"), ("GRU4Rec", "ok"), ("ComiRecSA", "failed"),
        ("SASRec", "ok"), ("GRU4Rec", "ok"), ("ComiRecSA", "failed"),
    ]  # fmt: skip
    error = rows[2]["error"]
    assert "num_interest" in error and "\n" not in error
    text = unpadded(outcome.md_path.read_text())
    assert "## Failed runs" in text and "| ComiRecSA | 2022 |" in text and "| ComiRecSA | 2023 |" in text
    assert "| ComiRecSA | – |" in text and "| 0/2 |" in text  # no numbers for a model without a finished run
    assert (tmp_path / "work" / "ComiRecSA-seed2022" / "run.log").is_file()  # its log is kept
    assert rows[2]["eval_s"] == rows[2]["peak_rss_mib"] == ""  # measured only by a run that finished
    assert report_runs.hit_cap(rows[1]) and (tmp_path / "work" / "GRU4Rec-seed2022" / "saved").is_dir()  # at the cap


@pytest.mark.e2e
def test_resume_skips_finished_runs_and_refuses_another_config(two_by_two):
    outcome, given = two_by_two
    finished = [(r["model"], r["seed"]) for r in report_runs.read_runs(outcome.csv_path) if r["status"] == "ok"]
    # Only the failed runs run again (and fail again); the finished ones are kept as they were.
    again = run_benchmark(dataclasses.replace(given, resume=True))
    rows = report_runs.read_runs(again.csv_path)
    assert [(r["model"], r["seed"]) for r in rows if r["status"] == "ok"] == finished
    assert sorted((r["model"], r["seed"]) for r in rows if r["status"] != "ok") == [
        ("ComiRecSA", "2022"), ("ComiRecSA", "2023"),
    ]  # fmt: skip
    other = dataclasses.replace(given, resume=True, overrides={**given.overrides, "epochs": 2})
    with pytest.raises(ConfigValueError, match="another shared config"):
        run_benchmark(other)


@pytest.mark.e2e
def test_the_paired_comparison_of_the_real_runs(two_by_two):
    outcome, _ = two_by_two
    rows = report_runs.read_runs(outcome.csv_path)
    text = unpadded(outcome.md_path.read_text())
    # No CMI among the models: the first one listed (SASRec) is compared with the others, and the heading says so.
    assert "## Paired comparison (SASRec − baseline, paired by seed; CMI was not run" in text
    for key, label in (("recall@20", "Recall@20"), ("ndcg@20", "NDCG@20")):
        value = {(r["model"], r["seed"]): float(r[f"test_{key}"]) for r in rows if r["status"] == "ok"}
        diffs = [value["SASRec", seed] - value["GRU4Rec", seed] for seed in ("2022", "2023")]
        mean = statistics.fmean(diffs)
        if max(diffs) - min(diffs) <= report_stats.ZERO_SPREAD:
            p = "no p-value: all 2 differences are equal (zero variance)"
        else:  # two pairs: t has 1 degree of freedom, whose CDF is 1/2 + atan(t) / pi
            t = mean / (statistics.stdev(diffs) / math.sqrt(2))
            p = report_stats.format_p(1 - 2 * math.atan(abs(t)) / math.pi)
        assert f"| GRU4Rec | {label} | {mean:+.4f} | 2 | {p} |" in text
        assert f"| ComiRecSA | {label} | – | 0 | n/a (need ≥ 2 paired seeds) |" in text  # it never finished


def test_paired_t_test_on_hand_computed_numbers():
    test = report_stats.paired_t_test([0.11, 0.22, 0.33], [0.10, 0.20, 0.30])  # differences 0.01, 0.02, 0.03
    assert test.n == 3 and test.mean_diff == pytest.approx(0.02) and test.note == ""
    # t = mean / (sd / sqrt(n)) = 0.02 / (0.01 / sqrt(3)); with n - 1 = 2 degrees of freedom the t CDF is
    # 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p-value is 1 - t / sqrt(2 + t^2) (0.0742).
    t = 0.02 / (0.01 / math.sqrt(3))
    assert test.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert test.p_value == pytest.approx(0.07418, abs=1e-5)
    # The sign follows reference - baseline.
    assert report_stats.paired_t_test([0.10, 0.20, 0.30], [0.11, 0.22, 0.33]).mean_diff == pytest.approx(-0.02)
    one = report_stats.paired_t_test([0.3], [0.1])
    assert (one.n, one.p_value, one.note) == (1, None, "n/a (need ≥ 2 paired seeds)")
    assert one.mean_diff == pytest.approx(0.2)
    none = report_stats.paired_t_test([], [])
    assert (none.n, none.mean_diff, none.p_value) == (0, None, None)
    # Equal differences (up to float noise of a - b): no t-test rather than nan or a spurious tiny p.
    equal = report_stats.paired_t_test([0.11, 0.22, 0.33], [0.06, 0.17, 0.28])
    assert equal.p_value is None and equal.note == "no p-value: all 3 differences are equal (zero variance)"
    assert equal.mean_diff == pytest.approx(0.05)


def hand_rows() -> list[dict]:
    """CMI beats SASRec by 0.01, 0.02, 0.03 on seeds 2022-2024; GRU4Rec finished only seed 2022."""
    rows = []
    for seed, cmi, sasrec in ((2023, 0.22, 0.20), (2022, 0.11, 0.10), (2024, 0.33, 0.30)):  # out of order
        rows.append({"model": "CMI", "seed": str(seed), "status": "ok", "test_recall@20": cmi, "test_ndcg@20": cmi / 2})
        rows.append({"model": "SASRec", "seed": str(seed), "status": "ok", "test_recall@20": sasrec,
                     "test_ndcg@20": sasrec / 2})  # fmt: skip
    rows.append({"model": "GRU4Rec", "seed": "2022", "status": "ok", "test_recall@20": 0.05, "test_ndcg@20": 0.02})
    rows.append({"model": "GRU4Rec", "seed": "2023", "status": "failed", "test_recall@20": "", "test_ndcg@20": ""})
    return rows


def test_runs_are_paired_by_seed_where_both_finished():
    rows = hand_rows()
    assert report_stats.paired_values(rows, "CMI", "SASRec", "test_recall@20") == (
        ["2022", "2023", "2024"], [0.11, 0.22, 0.33], [0.10, 0.20, 0.30],
    )  # fmt: skip
    assert report_stats.paired_values(rows, "CMI", "GRU4Rec", "test_recall@20") == (["2022"], [0.11], [0.05])
    assert report_sections.paired_keys(["recall@10", "recall@20", "ndcg@20", "recall@50"], "Recall@50") == [
        "recall@20", "ndcg@20", "recall@50",
    ]  # fmt: skip
    assert report_sections.paired_keys(["hit@5", "mrr@5", "ndcg@5"], None) == ["hit@5", "mrr@5"]
    lines = unpadded(
        report_sections.paired_section(rows, ["SASRec", "CMI", "GRU4Rec"], ["recall@20", "ndcg@20"], "NDCG@20")
    )
    assert lines[0] == "## Paired comparison (CMI − baseline, paired by seed)"  # CMI, wherever it is listed
    t = 0.02 / (0.01 / math.sqrt(3))
    p = 1 - t / math.sqrt(2 + t * t)  # as in the test above: 0.0742
    assert f"| SASRec | Recall@20 | +0.0200 | 3 | {p:.4f} |" in lines
    assert f"| SASRec | NDCG@20 | +0.0100 | 3 | {p:.4f} |" in lines  # halved values: same t
    assert "| GRU4Rec | Recall@20 | +0.0600 | 1 | n/a (need ≥ 2 paired seeds) |" in lines
    assert "| GRU4Rec | NDCG@20 | +0.0350 | 1 | n/a (need ≥ 2 paired seeds) |" in lines
    assert not any("| CMI |" in line for line in lines)
    assert "NDCG@20 is the validation metric" in lines[2]
    other = unpadded(report_sections.paired_section(rows, ["SASRec", "GRU4Rec"], ["recall@20"], None))
    assert other[0].startswith("## Paired comparison (SASRec − baseline, paired by seed; CMI was not run")
    assert "| GRU4Rec | Recall@20 | +0.0500 | 1 | n/a (need ≥ 2 paired seeds) |" in other
    assert report_sections.paired_section(rows, ["CMI"], ["recall@20"], None) == []  # nothing to compare with


def test_the_chart_is_written_atomically_next_to_the_table(tmp_path):
    summaries = report_stats.summarize(hand_rows(), ["CMI", "SASRec", "GRU4Rec"])
    keys = report_charts.chart_keys(["recall@10", "recall@20", "ndcg@20"])
    assert keys == ["recall@20", "ndcg@20"] and report_charts.chart_keys(["hit@5", "mrr@5", "ndcg@5"]) == [
        "hit@5",
        "mrr@5",
    ]
    assert report_charts.write_chart(tmp_path / "loo.png", summaries, keys, "tiny, protocol loo") is None
    assert png_size(tmp_path / "loo.png") == (560, 360)  # 3 models: 1.2 * 3 + 2 inches wide at 100 dpi
    assert os.listdir(tmp_path) == ["loo.png"]  # the temporary file was renamed
    failed = report_stats.summarize([{"model": "A", "status": "failed"}], ["A"])
    assert report_charts.write_chart(tmp_path / "none.png", failed, keys) == "no chart yet: no finished run"
    assert not (tmp_path / "none.png").exists()


def test_without_matplotlib_the_benchmark_skips_the_chart_with_one_line(tiny_data_root, tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    given = settings(tiny_data_root, tmp_path, models=["SASRec", "GRU4Rec"], resume=True)
    folder = Path(given.out) / "tiny"
    folder.mkdir(parents=True)
    sha = config_sha(given, shared_config(given))
    rows = [{"model": m, "seed": s, "status": "ok", "config_sha": sha, "test_recall@20": v, "test_ndcg@20": v / 2}
            for m, s, v in (("SASRec", 2022, 0.3), ("GRU4Rec", 2022, 0.2), ("SASRec", 2023, 0.4), ("GRU4Rec", 2023, 0.25))]  # fmt: skip
    report_runs.write_runs(folder / "loo.csv", rows)
    # Every run finished in the csv at <out>/<dataset>/<protocol>.csv: --resume runs nothing, only rewrites.
    outcome = run_benchmark(given)
    assert outcome.png_path is None and not (folder / "loo.png").exists()
    assert not (tmp_path / "work").exists() or not os.listdir(tmp_path / "work")  # no run started
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "resuming: 4 finished runs in " + str(folder / "loo.csv") + " are kept",
        "no chart: matplotlib is not installed (pip install matplotlib to get one)",
    ]
    text = unpadded(outcome.md_path.read_text())
    assert "![chart]" not in text and "| SASRec | **0.3500 ± 0.0707** | **0.1750 ± 0.0354** |" in text
    # Differences 0.10 and 0.15: t = 0.125 / (0.0354 / sqrt(2)) = 5 with 1 degree of freedom, p = 1 - 2 atan(5) / pi.
    assert f"| GRU4Rec | Recall@20 | +0.1250 | 2 | {1 - 2 * math.atan(5) / math.pi:.4f} |" in text
    assert "| GRU4Rec | Recall@20 | +0.1250 | 2 | 0.1257 |" in text


def test_memory_of_this_process():
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; the peak only grows
    assert kib / 1024 - 0.1 <= peak_rss_mib() <= kib / 1024 + 1
    assert cuda_peak_mib("cpu") is None  # no CUDA column for CPU runs


@pytest.mark.e2e
def test_a_run_past_its_timeout_is_recorded(tiny_data_root, tmp_path):
    outcome = run_benchmark(settings(tiny_data_root, tmp_path, models=["GRU4Rec"], seeds=1, run_timeout=0.5))
    (row,) = report_runs.read_runs(outcome.csv_path)
    assert row["status"] == "failed" and row["error"] == "stopped after --run_timeout=0.5 s"


def test_mean_and_sample_std_of_the_summary():
    rows = [
        {"model": "A", "status": "ok", "test_recall@10": "0.1", "epochs_run": "3", "epochs": "3"},
        {"model": "A", "status": "ok", "test_recall@10": "0.3", "epochs_run": "2", "epochs": "3"},
        {"model": "A", "status": "failed", "test_recall@10": ""},
        {"model": "B", "status": "ok", "test_recall@10": "0.2", "epochs_run": "1", "epochs": "3"},
    ]
    a, b = report_stats.summarize(rows, ["A", "B"])
    assert a.metrics["recall@10"] == pytest.approx((0.2, statistics.stdev([0.1, 0.3])))
    assert (a.ok, a.runs, a.epochs_capped) == (2, 3, 1)
    assert b.metrics["recall@10"] == (0.2, None)
    assert report_stats.format_mean_std(b.metrics["recall@10"]) == "0.2000"


def test_option_values_are_read_like_recboles_command_line():
    def parse_value(text):
        return config_values([f"--key={text}"], OneLineArgumentParser())["key"]

    assert parse_value("0.001") == 0.001 and parse_value("1e-3") == 0.001
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
    with pytest.raises(ConfigValueError, match=r"--only_seeds=2023,2030: 2030 not among the --seeds=2 seeds"):
        run_benchmark(settings(tiny_data_root, tmp_path, only_seeds=[2023, 2030]))
    assert not (tmp_path / "work").exists()


def test_the_dispatcher_names_its_subcommands(capsys):
    assert {"accuracy", "speed"} <= set(SUBCOMMANDS)
    for name, module in SUBCOMMANDS.items():  # every subcommand resolves to a module with main(argv)
        assert callable(importlib.import_module(module).main), name
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
        "error: unrecognised arguments oops: config keys are given as --key=value (see --help)"
    ]
    assert benchmark_main(["accuracy", "--dataset=tiny", "--models=SASRec,NoSuchModel"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[0].startswith("error: unknown model 'NoSuchModel'")


def test_the_protocol_line_says_whether_history_items_are_ranked():
    assert "except the items of the input history" in report._history_rule(True)
    assert "except the items of the input history" in report._history_rule("True")  # as read back from the csv
    assert "history items included" in report._history_rule("False")
    assert report._history_rule("True / False") == "`exclude_history_items`: True / False"  # runs disagree


def test_the_seeds_line_names_the_seeds_of_every_run_in_the_table():
    rows = [
        {"model": "CMI", "seed": "2022", "status": "ok"},
        {"model": "CMI", "seed": "2023", "status": "ok"},  # kept from an earlier --seeds=2 invocation
        {"model": "SASRec", "seed": "2022", "status": "ok"},
        {"model": "SASRec", "seed": "2023", "status": "failed"},
        {"model": "GRU4Rec", "seed": "2025", "status": "ok"},  # kept from an invocation with other --models
        {"model": "ComiRecSA", "seed": "2022", "status": "failed"},  # no finished run: no seed to name
    ]
    assert report_stats.finished_seeds(rows) == {"CMI": [2022, 2023], "SASRec": [2022], "GRU4Rec": [2025]}
    assert report_stats.seeds_in_table(rows, [2022]) == [2022, 2023, 2025]
    assert report_stats.uneven_seeds(rows, [2022]) == " (CMI: 2022, 2023 only; SASRec: 2022 only; GRU4Rec: 2025 only)"
    assert report_stats.uneven_seeds(rows[:2], [2022, 2023]) == ""
    assert report_stats.kept_runs(rows, ["CMI", "SASRec"], [2022]) == ["CMI seed 2023", "GRU4Rec seed 2025"]
    assert report_stats.kept_runs(rows, ["CMI", "SASRec", "GRU4Rec"], [2022, 2023, 2025]) == []


@pytest.mark.e2e
def test_a_refresh_with_fewer_models_and_seeds_keeps_the_other_runs_and_says_so(two_by_two, tmp_path):
    outcome, given = two_by_two
    out = tmp_path / "results"
    (out / "tiny").mkdir(parents=True)
    (out / "tiny" / "loo.csv").write_text(outcome.csv_path.read_text())
    refresh = dataclasses.replace(given, models=["SASRec"], seeds=1, resume=True, out=str(out))
    again = run_benchmark(refresh)  # SASRec seed 2022 is finished: nothing runs, the table is rewritten
    assert report_runs.read_runs(again.csv_path) == report_runs.read_runs(outcome.csv_path)
    text = unpadded(again.md_path.read_text())
    assert "- **Seeds**: 2022, 2023; cells are" in text  # ComiRecSA never finished: not an uneven model
    assert text.count("| 2/2 |") == 2  # SASRec and GRU4Rec keep both seeds in the table
    assert "outside this command's `--models` × `--seeds`: SASRec seed 2023; GRU4Rec seeds 2022, 2023." in text


@pytest.mark.e2e
def test_only_seeds_runs_those_seeds_and_resume_publishes_the_split_benchmark_whole(two_by_two, tmp_path):
    outcome, given = two_by_two
    part = dataclasses.replace(given, models=["SASRec"], only_seeds=[2023], out=str(tmp_path / "b"))
    second = run_benchmark(dataclasses.replace(part, work_dir=str(tmp_path / "work_b")))
    assert [(r["model"], r["seed"], r["status"]) for r in report_runs.read_runs(second.csv_path)] == [
        ("SASRec", "2023", "ok")
    ]
    first = [r for r in report_runs.read_runs(outcome.csv_path) if r["model"] == "SASRec" and r["seed"] == "2022"]
    merged = tmp_path / "merged"
    (merged / "tiny").mkdir(parents=True)
    report_runs.write_runs(merged / "tiny" / "loo.csv", first + report_runs.read_runs(second.csv_path))
    whole = run_benchmark(dataclasses.replace(given, models=["SASRec"], resume=True, out=str(merged)))
    assert sorted(r["seed"] for r in report_runs.read_runs(whole.csv_path)) == ["2022", "2023"]  # nothing reran
    assert "| 2/2 |" in unpadded(whole.md_path.read_text())


@pytest.mark.e2e
def test_every_run_records_its_validation_curve_and_whether_it_hit_the_epoch_cap(two_by_two):
    outcome, given = two_by_two
    rows = [r for r in report_runs.read_runs(outcome.csv_path) if r["status"] == "ok"]
    for row in rows:
        curve = json.loads(row["valid_curve"])
        assert curve["epoch"] == [1] and set(curve) == {"epoch", "train_s", "ndcg@20"}  # NDCG@20 validates here
        assert curve["ndcg@20"] == [float(row["best_valid_score"])]
        assert curve["train_s"][0] == pytest.approx(float(row["train_s_per_epoch"]), abs=0.006)  # rounded to 0.01
        assert row["stopped_early"] == "False" and report_runs.hit_cap(row)  # 1 epoch of 1: the cap ended every run
    text = unpadded(outcome.md_path.read_text())
    assert "- **Epoch cap reached** by 4 of 4 finished runs (those runs may not have converged: flagged ⚠" in text
    assert text.count("| **2/2 ⚠** |") == 2  # the at-cap column of SASRec and GRU4Rec
    assert "![validation curves](loo-curves.png)" in text and "| SASRec | 2022 | 1 | 1 |" in text
    assert png_size(outcome.curves_path) == (700, 420)


@pytest.mark.e2e
def test_the_other_convention_is_the_number_of_a_run_configured_so(two_by_two, tiny_data_root, tmp_path):
    outcome, _ = two_by_two  # history ranked (the tiny dataset's default); one epoch, so one checkpoint per run
    ranked = next(r for r in report_runs.read_runs(outcome.csv_path) if (r["model"], r["seed"]) == ("SASRec", "2022"))
    given = settings(tiny_data_root, tmp_path, models=["SASRec"], seeds=1, overrides={"exclude_history_items": True})
    (excluded,) = report_runs.read_runs(run_benchmark(given).csv_path)
    assert (ranked["history_excluded"], excluded["history_excluded"]) == ("False", "True")
    metrics = [key[len("test_") :] for key in ranked if key.startswith("test_")]
    assert len(metrics) == 9
    for key in metrics:  # the same training, scored both ways by each run
        assert (
            excluded[f"alt_test_{key}"] == ranked[f"test_{key}"]
            and excluded[f"test_{key}"] == ranked[f"alt_test_{key}"]
        )
    assert any(excluded[f"test_{key}"] != ranked[f"test_{key}"] for key in metrics)
    assert "## Both ranking conventions" in unpadded(outcome.md_path.read_text())


@pytest.mark.e2e
def test_an_interrupted_run_continues_from_its_last_checkpoint_with_resume(tiny_data_root, tmp_path, monkeypatch):
    """Two benchmark runs of 4 epochs (the resumed one and a fresh one to compare) and one of 2 + 2 epochs (a raised
    cap): ~45 s on the shared cores."""
    from recbole_cmi import trainer as trainer_module
    from recbole_cmi.benchmark import accuracy_launch, accuracy_worker

    four_epochs = {"epochs": 4, "stopping_step": 10}
    given = settings(tiny_data_root, tmp_path / "a", models=["SASRec"], seeds=1, resume=True, overrides=four_epochs)
    spec = accuracy_launch.prepare_run(given, "SASRec", 2022, shared_config(given), Path(given.work_dir))
    original = trainer_module.Trainer._save_last_checkpoint

    def killed_after_two_epochs(self, epoch):
        original(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "_save_last_checkpoint", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        accuracy_worker.train_and_test(spec)  # the run's own steps, in this process, stopped after epoch 2
    monkeypatch.setattr(trainer_module.Trainer, "_save_last_checkpoint", original)
    assert len(json.loads(Path(spec["progress"]).read_text())["train_seconds"]) == 2

    (resumed,) = report_runs.read_runs(run_benchmark(given).csv_path)  # --resume: epochs 3 and 4 only
    fresh_settings = settings(tiny_data_root, tmp_path / "b", models=["SASRec"], seeds=1, overrides=four_epochs)
    (fresh,) = report_runs.read_runs(run_benchmark(fresh_settings).csv_path)
    assert (resumed["resumed_at_epoch"], fresh["resumed_at_epoch"]) == ("2", "0")
    assert resumed["epochs_run"] == fresh["epochs_run"] == "4" and resumed["best_epoch"] == fresh["best_epoch"]
    curves = [json.loads(row["valid_curve"]) for row in (resumed, fresh)]
    assert curves[0]["epoch"] == [1, 2, 3, 4] and curves[0]["ndcg@20"] == curves[1]["ndcg@20"]
    metrics = [key for key in fresh if key.startswith(("test_", "alt_test_"))]
    assert [resumed[key] for key in metrics] == [fresh[key] for key in metrics]  # the same training, exactly
    assert (Path(given.work_dir) / "SASRec-seed2022" / "saved").is_dir()  # at its cap (4): kept for a higher one

    # A run that reached a lower cap keeps its last checkpoint; raising --epochs trains it on from there.
    capped = settings(
        tiny_data_root, tmp_path / "c", models=["SASRec"], seeds=1, overrides={**four_epochs, "epochs": 2}
    )
    (low,) = report_runs.read_runs(run_benchmark(capped).csv_path)
    assert report_runs.hit_cap(low) and (Path(capped.work_dir) / "SASRec-seed2022" / "progress.json").is_file()
    raised = dataclasses.replace(capped, resume=True, overrides={**capped.overrides, "epochs": 4})
    (high,) = report_runs.read_runs(run_benchmark(raised).csv_path)
    assert (high["resumed_at_epoch"], high["epochs_run"]) == ("2", "4")
    assert [high[key] for key in metrics] == [fresh[key] for key in metrics]  # epochs 3 and 4 only, the same result


def test_resume_hashes_contents_not_folders_and_restamps_rows_of_the_older_path_sha(tiny_data_root, tmp_path):
    from recbole_cmi.benchmark.accuracy_launch import previous_rows
    from recbole_cmi.benchmark.accuracy_settings import legacy_config_sha

    for name in ("one", "two"):  # the same tuned file and shared config file, in two folders
        (tmp_path / name / "tiny").mkdir(parents=True)
        (tmp_path / name / "tiny" / "SASRec.yaml").write_text("learning_rate: 0.001\n")
        (tmp_path / name / "shared.yaml").write_text("train_batch_size: 64\n")
    first, second = (
        settings(tiny_data_root, tmp_path, resume=True, tuned=str(tmp_path / name), models=["SASRec"],
                 config_files=[str(tmp_path / name / "shared.yaml")])
        for name in ("one", "two")
    )  # fmt: skip
    shared = shared_config(first)
    assert shared == shared_config(second)
    assert config_sha(first, shared) == config_sha(second, shared)  # a copied folder is the same config
    assert legacy_config_sha(first, shared) != legacy_config_sha(second, shared)  # the old sha hashed the paths
    row = {"dataset": "tiny", "protocol": "loo", "model": "SASRec", "seed": "2022", "status": "ok", "epochs": "2"}
    csv_path = tmp_path / "loo.csv"
    report_runs.write_runs(csv_path, [{**row, "config_sha": legacy_config_sha(first, shared)}])
    (kept,) = previous_rows(csv_path, first, shared, {})
    assert kept["config_sha"] == config_sha(first, shared)  # an earlier version's row of this config is kept
    with pytest.raises(ConfigValueError, match="another shared config"):  # without --tuned it is another config
        previous_rows(csv_path, dataclasses.replace(first, tuned=None), shared, {})
    (tmp_path / "two" / "shared.yaml").write_text("train_batch_size: 32\n")  # same path, other contents
    assert config_sha(second, shared) != config_sha(first, shared)


def test_the_tuned_table_says_how_each_files_values_were_chosen(tmp_path):
    from recbole_cmi.benchmark.accuracy_launch import previous_rows
    from recbole_cmi.benchmark.accuracy_settings import tuned_header

    tuned_file = tmp_path / "GRU4Rec.yaml"
    text = "# GRU4Rec at RecBole's defaults (no search yet). A second sentence.\n#\n# More.\nlearning_rate: 0.001\n"
    tuned_file.write_text(text)
    assert tuned_header(tuned_file) == "GRU4Rec at RecBole's defaults (no search yet). A second sentence. More."
    given, shared, sha = BenchmarkSettings(dataset="tiny", models=["GRU4Rec"], seeds=1), {"epochs": 2}, "0123456789ab"
    row = {"model": "GRU4Rec", "seed": "2022", "status": "ok", "config_sha": config_sha(given, shared),
           "tuned_file": str(tuned_file), "tuned_values": '{"learning_rate": 0.001}', "tuned_sha": sha}  # fmt: skip
    csv_path = tmp_path / "loo.csv"
    report_runs.write_runs(csv_path, [row])  # a row of an earlier version: no tuned_header column
    (kept,) = previous_rows(csv_path, given, shared, {"GRU4Rec": (tuned_file, {}, sha)})  # the same file (sha)
    (other,) = previous_rows(csv_path, given, shared, {})  # no tuned file vouches for it: left empty
    assert kept["tuned_header"] == tuned_header(tuned_file) and not other.get("tuned_header")
    table = unpadded("\n".join(report_sections.tuned_section([kept], ["GRU4Rec"], str(tmp_path))))
    assert (
        f"| GRU4Rec | {tuned_file} | learning_rate: 0.001 | GRU4Rec at RecBole's defaults (no search yet). | 1 |"
        in table
    )
    long = {**kept, "tuned_header": "x" * 300}
    assert "| " + "x" * 199 + "… |" in unpadded("\n".join(report_sections.tuned_section([long], ["GRU4Rec"], "d")))


def test_a_higher_epoch_cap_keeps_the_runs_early_stopping_ended_and_reruns_the_capped(tiny_data_root, tmp_path, capsys):
    from recbole_cmi.benchmark.accuracy_launch import previous_rows

    low = settings(tiny_data_root, tmp_path, resume=True, overrides={"epochs": 2})
    sha = config_sha(low, shared_config(low))
    common = {"dataset": "tiny", "protocol": "loo", "config_sha": sha, "epochs": "2", "epochs_run": "2"}
    rows = [
        {**common, "model": "SASRec", "seed": "2022", "status": "ok", "stopped_early": "True", "test_ndcg@20": "0.2"},
        {**common, "model": "GRU4Rec", "seed": "2022", "status": "ok", "stopped_early": "False"},  # at the cap
        {**common, "model": "SASRec", "seed": "2023", "status": "failed"},
    ]
    csv_path = tmp_path / "loo.csv"
    report_runs.write_runs(csv_path, rows)
    high = dataclasses.replace(low, overrides={**low.overrides, "epochs": 5})
    kept = previous_rows(csv_path, high, shared_config(high), {})
    assert [(r["model"], r["seed"], r["test_ndcg@20"]) for r in kept] == [("SASRec", "2022", "0.2")]
    assert kept[0]["config_sha"] == config_sha(high, shared_config(high)) != sha
    assert "run again: GRU4Rec seed 2022, SASRec seed 2023" in capsys.readouterr().out
    lower = dataclasses.replace(low, overrides={**low.overrides, "epochs": 1})  # a lower cap is another config
    with pytest.raises(ConfigValueError, match="another shared config"):
        previous_rows(csv_path, lower, shared_config(lower), {})
    other = dataclasses.replace(high, overrides={**high.overrides, "train_batch_size": 32})  # and so is any other key
    with pytest.raises(ConfigValueError, match="another shared config"):
        previous_rows(csv_path, other, shared_config(other), {})


@pytest.mark.e2e
def test_a_variant_is_a_row_of_its_own_with_its_settings_and_its_best_checkpoint_kept(tiny_data_root, tmp_path):
    given = settings(
        tiny_data_root,
        tmp_path,
        models=["GRU4Rec,GRU4Rec:dropout_prob=0.5,num_layers=2,label=GRU4Rec_deep"],
        seeds=1,
        keep_checkpoints=True,
        conventions="config",
    )
    outcome = run_benchmark(given)
    rows = {row["model"]: row for row in report_runs.read_runs(outcome.csv_path)}
    assert set(rows) == {"GRU4Rec", "GRU4Rec_deep"} and all(r["status"] == "ok" for r in rows.values())
    assert (
        rows["GRU4Rec"]["variant"] == "" and rows["GRU4Rec_deep"]["variant"] == "GRU4Rec:dropout_prob=0.5,num_layers=2"
    )
    assert "| GRU4Rec_deep (`GRU4Rec:dropout_prob=0.5,num_layers=2`) |" in unpadded(outcome.md_path.read_text())
    spec = json.loads((Path(given.work_dir) / "GRU4Rec_deep-seed2022" / "spec.json").read_text())
    assert spec["model"] == "GRU4Rec" and spec["config_dict"]["num_layers"] == 2
    assert spec["config_dict"]["dropout_prob"] == 0.5
    from recbole_cmi.checkpoint import load_checkpoint

    for label in rows:  # the best checkpoint stays, of its settings (at the 1-epoch cap the -last one stays too)
        saved = sorted(p.name for p in (Path(given.work_dir) / f"{label}-seed2022" / "saved").glob("*.pth"))
        best = [name for name in saved if not name.endswith("-last.pth")]
        assert len(best) == 1 and saved == sorted([*best, best[0].replace(".pth", "-last.pth")])
    (kept,) = (
        p for p in (Path(given.work_dir) / "GRU4Rec_deep-seed2022" / "saved").glob("*.pth") if "-last" not in p.name
    )
    assert load_checkpoint(str(kept))["config"]["num_layers"] == 2


def test_variant_labels_are_checked_before_any_run(tiny_data_root, tmp_path):
    from recbole_cmi.benchmark.accuracy_settings import model_variants

    (plain, unlabelled) = model_variants(["SASRec,SASRec:n_layers=1"])
    assert (plain.label, plain.model, plain.overrides, plain.text) == ("SASRec", "SASRec", {}, "")
    assert (unlabelled.label, unlabelled.overrides) == ("SASRec:n_layers=1", {"n_layers": 1})
    with pytest.raises(ConfigValueError, match="SASRec more than once"):
        run_benchmark(settings(tiny_data_root, tmp_path, models=["SASRec,SASRec:n_layers=1,label=SASRec"]))
    with pytest.raises(ConfigValueError, match="sets seed"):
        model_variants(["SASRec:seed=3"])
    assert not (tmp_path / "work").exists()
