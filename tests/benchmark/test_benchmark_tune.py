"""python -m recbole_cmi.benchmark tune: the shipped equal-budget spaces, the checks before any search, the tuned
layer switched off while searching, and a tiny search whose tuned file ``accuracy --tuned`` then runs with."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, TINY_SETTINGS, unpadded

from recbole_cmi.benchmark import report_runs
from recbole_cmi.benchmark.__main__ import main as benchmark_main
from recbole_cmi.benchmark.accuracy import run_benchmark
from recbole_cmi.benchmark.accuracy_settings import DEFAULT_MODELS, BenchmarkSettings
from recbole_cmi.benchmark.tune import _check_settings, run_tuning
from recbole_cmi.benchmark.tune_settings import TuneSettings
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.tune import SearchSettings, parse_hyper_file

BENCHMARK_SPACES = sorted((REPO_ROOT / "properties" / "hyper" / "benchmark").glob("*.hyper"))
TINY_KEYS = ("train_batch_size", "MAX_ITEM_LIST_LENGTH", "n_heads", "inner_size", "user_inter_num_interval", "load_col")


def tiny_overrides(data_root) -> dict:
    overrides = {key: TINY_SETTINGS[key] for key in TINY_KEYS}
    return dict(overrides, data_path=str(data_root), embedding_size=16, hidden_size=16, state="ERROR")


def test_the_shipped_spaces_give_every_model_one_learning_rate_grid_and_a_fixed_embedding():
    assert sorted(p.stem for p in BENCHMARK_SPACES) == sorted(DEFAULT_MODELS)
    grids = set()
    for path in BENCHMARK_SPACES:
        params = {p.name: p for p in parse_hyper_file(path)}
        grids.add(params["learning_rate"].values)
        assert not {"embedding_size", "hidden_size"} & set(params), path.name  # d = 64 for every model
        assert 2 <= len(params) - 1 <= 4 and all(p.kind == "choice" for p in params.values()), path.name
    assert len(grids) == 1
    # Every space has at least 30 points, so 30 trials (each point at most once) fit every model.
    models, spaces = _check_settings(TuneSettings(dataset="micro_video", epochs=3, trials=30))
    assert models == list(DEFAULT_MODELS) and min(points for _, points in spaces.values()) == 30


@pytest.mark.parametrize("path", BENCHMARK_SPACES, ids=[p.stem for p in BENCHMARK_SPACES])
def test_each_space_searches_keys_of_its_model_from_the_published_defaults(path):
    from recbole_cmi.tune.search import make_plan

    config = {"use_tuned_values": False}
    plan = make_plan(SearchSettings(model=path.stem, dataset="micro_video", params_file=str(path), config_dict=config))
    assert plan["model"] == path.stem and len(plan["searched"]) == len(parse_hyper_file(path))
    if path.stem == "CMI":  # properties/tuned/micro_video/CMI.yaml (loss_type CE) is left out of the search
        assert plan["fixed"]["loss_type"] == "SAMPLED" and plan["fixed"]["use_tuned_values"] is False


def test_use_tuned_values_false_leaves_the_tuned_layer_out():
    from recbole_cmi.config import Config
    from recbole_cmi.config_yaml import tuned_layer_path

    tuned = yaml.safe_load(tuned_layer_path("CMI", "micro_video").read_text(encoding="utf-8"))
    published = yaml.safe_load((REPO_ROOT / "properties" / "model" / "CMI.yaml").read_text(encoding="utf-8"))
    on = Config("CMI", "micro_video", config_dict={}, read_argv=False)
    off = Config("CMI", "micro_video", config_dict={"use_tuned_values": False}, read_argv=False)
    assert on["learning_rate"] == tuned["learning_rate"] != published["learning_rate"] == off["learning_rate"]
    assert (on["loss_type"], off["loss_type"]) == (tuned["loss_type"], published["loss_type"])
    with pytest.raises(ConfigValueError, match="use_tuned_values='yes'"):
        Config("CMI", "micro_video", config_dict={"use_tuned_values": "yes"}, read_argv=False)


def test_bad_tune_options_fail_before_any_search(tmp_path, capsys):
    hyper = tmp_path / "hyper"
    hyper.mkdir()
    (hyper / "SASRec.hyper").write_text("learning_rate choice [0.001, 0.01]\nn_layers choice [1, 2]\n")
    (hyper / "GRU4Rec.hyper").write_text("learning_rate choice [0.001, 0.002]\nnum_layers choice [1, 2]\n")
    given = TuneSettings(dataset="micro_video", epochs=2, trials=2, models=["SASRec", "GRU4Rec"], hyper_dir=str(hyper))
    with pytest.raises(ConfigValueError, match="same grid for every model"):
        _check_settings(given)
    with pytest.raises(ConfigValueError, match="--trials=5 is more than the 4 points"):
        _check_settings(dataclasses.replace(given, models=["SASRec"], trials=5))
    with pytest.raises(ConfigValueError, match="no search space for ComiRecSA"):
        _check_settings(dataclasses.replace(given, models=["SASRec", "ComiRecSA"]))
    with pytest.raises(ConfigValueError, match="use --epochs"):
        _check_settings(dataclasses.replace(given, models=["SASRec"], overrides={"epochs": 3}))
    with pytest.raises(ConfigValueError, match="--grace=3 is more than --epochs=2"):
        _check_settings(dataclasses.replace(given, models=["SASRec"], grace=3))
    with pytest.raises(SystemExit) as stopped:
        benchmark_main(["tune", "--dataset=micro_video"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: --epochs is required")
    assert not list(tmp_path.glob("ray_results*"))


def test_accuracy_tuned_needs_every_models_file_and_no_option_that_overrides_it(tiny_data_root, tmp_path):
    (tmp_path / "tuned" / "tiny").mkdir(parents=True)
    (tmp_path / "tuned" / "tiny" / "SASRec.yaml").write_text("# a search\nlearning_rate: 0.01\nn_layers: 1\n")
    given = BenchmarkSettings(
        dataset="tiny",
        models=["SASRec", "GRU4Rec"],
        seeds=1,
        overrides=tiny_overrides(tiny_data_root),
        out=str(tmp_path / "results"),
        work_dir=str(tmp_path / "work"),
        tuned=str(tmp_path / "tuned"),
    )
    with pytest.raises(ConfigValueError, match="no tuned file for GRU4Rec"):
        run_benchmark(given)
    with pytest.raises(ConfigValueError, match=r"sets n_layers \(SASRec\), which would override the tuned value"):
        run_benchmark(dataclasses.replace(given, models=["SASRec"], overrides={**given.overrides, "n_layers": 2}))
    with pytest.raises(ConfigValueError, match="--use_tuned_values is set by --tuned"):
        run_benchmark(dataclasses.replace(given, overrides={**given.overrides, "use_tuned_values": True}))
    assert not (tmp_path / "work").exists()


@pytest.mark.e2e
def test_a_search_writes_the_tuned_file_that_accuracy_tuned_runs_with(tiny_data_root, tmp_path):
    """Ray, two 1-epoch trials and one benchmark run: 37 s on the shared 2 cores (mostly starting Ray), the
    price of testing the whole path, search to table, once."""
    pytest.importorskip("ray")
    hyper = tmp_path / "hyper"
    hyper.mkdir()
    (hyper / "SASRec.hyper").write_text("learning_rate choice [0.001, 0.01]\nhidden_dropout_prob choice [0.1, 0.5]\n")
    given = TuneSettings(
        dataset="tiny",
        epochs=1,
        models=["SASRec"],
        trials=2,
        hyper_dir=str(hyper),
        search_dir=str(tmp_path / "search"),
        tuned_dir=str(tmp_path / "tuned"),
        out=str(tmp_path / "results"),
        overrides=tiny_overrides(tiny_data_root),
        num_cpus=2,
        command="python -m recbole_cmi.benchmark tune (test)",
    )
    (result,) = run_tuning(given)
    assert result.error == "" and result.tuned_file == tmp_path / "tuned" / "tiny" / "SASRec.yaml"
    with open(tmp_path / "search" / "SASRec" / "trials.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 2 and trials[0]["rank"] == "1"
    text = result.tuned_file.read_text()
    values = yaml.safe_load(text)
    best = trials[0]
    assert values == {
        "learning_rate": float(best["learning_rate"]),
        "hidden_dropout_prob": float(best["hidden_dropout_prob"]),
    }
    # Every key documents its type, as in every yaml layer: the config checks the value against it.
    from recbole_cmi.options import documented_options

    options = documented_options([result.tuned_file])
    assert set(options) == set(values) and all(option.accepts(values[k]) for k, (option,) in options.items())
    assert "learning_rate: " in text and "# (float) searched over choice [0.001, 0.01]" in text
    header = " ".join(line[2:].strip() for line in text.splitlines() if line.startswith("#"))
    for part in (
        "SASRec on tiny: the best trial of the equal-budget validation search",
        "Command: python -m recbole_cmi.benchmark tune (test)",
        "random search, 2 trials (distinct points), ASHA on valid NDCG@20 (grace 1 epoch, reduction factor 2), at",
        "most 1 epochs per trial",
        f"valid ndcg@20 = {float(best['valid_ndcg@20'])} after 1 epochs",
        "training seed 2022, search seed 2022, embedding_size 16 / hidden_size 16",
    ):
        assert part in header, part
    summary = unpadded((tmp_path / "results" / "tiny" / "tune-loo.md").read_text())
    assert summary.count("| SASRec | 4 | ") == 1  # its row: the 4 points of its space
    assert "## Trials: SASRec" in summary and "use_tuned_values: false" in summary

    # --resume keeps the finished search (no Ray run) and writes the same values; other options are refused.
    experiments = sorted(p.name for p in (tmp_path / "search" / "SASRec" / "ray").iterdir())
    (again,) = run_tuning(dataclasses.replace(given, resume=True))
    assert yaml.safe_load(again.tuned_file.read_text()) == values
    assert sorted(p.name for p in (tmp_path / "search" / "SASRec" / "ray").iterdir()) == experiments
    with pytest.raises(ConfigValueError, match="is of another search"):
        run_tuning(dataclasses.replace(given, resume=True, epochs=2))
    with pytest.raises(ConfigValueError, match="already holds the searches of SASRec"):
        run_tuning(given)

    bench = BenchmarkSettings(
        dataset="tiny",
        models=["SASRec"],
        seeds=1,
        overrides=dict(tiny_overrides(tiny_data_root), epochs=1),
        out=str(tmp_path / "results"),
        work_dir=str(tmp_path / "work"),
        tuned=str(tmp_path / "tuned"),
    )
    outcome = run_benchmark(bench)
    (row,) = report_runs.read_runs(outcome.csv_path)
    assert row["status"] == "ok" and json.loads(row["tuned_values"]) == values
    assert float(row["learning_rate"]) == values["learning_rate"]  # resolved by the run itself
    assert Path(row["tuned_file"]).name == "SASRec.yaml" and len(row["tuned_sha"]) == 12
    table = unpadded(outcome.md_path.read_text())
    shown = ", ".join(f"{key}: {value}" for key, value in values.items())
    assert " ".join(row["tuned_header"].split()) == " ".join(
        header.split()
    )  # how the values were chosen, in the csv and (shortened) in the table
    chosen = "SASRec on tiny: the best trial of the equal-budget validation search every model got (python -m"
    assert f"| SASRec | {row['tuned_file']} | {shown} | {chosen}" in table and "(`--tuned`" in table
    # An edited tuned file makes the finished runs stale: --resume refuses to mix them.
    result.tuned_file.write_text(text.replace(f"learning_rate: {values['learning_rate']}", "learning_rate: 0.5"))
    with pytest.raises(ConfigValueError, match="the tuned file of SASRec changed"):
        run_benchmark(dataclasses.replace(bench, resume=True))
