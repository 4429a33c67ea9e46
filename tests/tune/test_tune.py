"""Ray Tune search: .hyper parsing, a tiny local search (best pick, failed trial, outputs, resume),
ASHA early stopping and exact continuation of an interrupted trial."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, TINY_SETTINGS, unpadded

from recbole_cmi.errors import ConfigValueError
from recbole_cmi.tune import SearchSettings, parse_hyper_file, parse_hyper_text, run_search, to_search_space

ray = pytest.importorskip("ray")

HEADS_ERROR = re.compile("attention heads", re.IGNORECASE)  # RecBole's or our config check's wording


@pytest.mark.e2e
def test_importing_the_search_code_does_not_import_ray():
    code = "import sys, recbole_cmi, recbole_cmi.tune; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------- .hyper parsing


def test_parse_every_form_and_skip_comments():
    params = parse_hyper_text(
        "# a comment\n"
        "\n"
        "learning_rate loguniform -8, -4\n"
        "n_heads choice [1, 2, 'x', [3, 4]]\n"
        "hidden_size quniform 16,64,16\n"
        "dropout_prob uniform 0.1,0.5\n"
        "ratio quniform 0,1,0.25\n"
    )
    by_name = {p.name: p for p in params}
    assert [p.name for p in params] == ["learning_rate", "n_heads", "hidden_size", "dropout_prob", "ratio"]
    assert by_name["learning_rate"].values == (-8.0, -4.0) and by_name["learning_rate"].line == 3
    assert by_name["n_heads"].values == (1, 2, "x", [3, 4])

    lr = by_name["learning_rate"].to_ray()
    assert (lr.lower, lr.upper) == pytest.approx((math.exp(-8), math.exp(-4)))
    sizes = {by_name["hidden_size"].to_ray().sample() for _ in range(60)}
    assert sizes == {16, 32, 48, 64} and all(isinstance(v, int) for v in sizes)
    ratios = {by_name["ratio"].to_ray().sample() for _ in range(60)}
    assert ratios <= {0.0, 0.25, 0.5, 0.75, 1.0} and any(isinstance(v, float) for v in ratios)
    assert 0.1 <= by_name["dropout_prob"].to_ray().sample() <= 0.5


def test_grid_turns_only_choices_into_grid_search():
    params = parse_hyper_text("n_heads choice [1, 2]\nlearning_rate uniform 0.001,0.01\n")
    space = to_search_space(params, grid=True)
    assert space["n_heads"] == {"grid_search": [1, 2]}
    assert 0.001 <= space["learning_rate"].sample() <= 0.01
    assert set(to_search_space(params)["n_heads"].categories) == {1, 2}


def test_random_points_over_choices_are_distinct_and_cover_the_space():
    from recbole_cmi.tune.space import choice_combinations, distinct_choice_points

    params = parse_hyper_text("lr choice [0.001, 0.002, 0.004]\nm choice [2, 4]\ncl choice [0.0, 0.1]\n")
    assert choice_combinations(params) == 12
    points = distinct_choice_points(params, 6, seed=7)
    keys = [(p["lr"], p["m"], p["cl"]) for p in points]
    assert len(keys) == 6 == len(set(keys)) and list(points[0]) == ["lr", "m", "cl"]
    assert all(lr in (0.001, 0.002, 0.004) and m in (2, 4) and cl in (0.0, 0.1) for lr, m, cl in keys)
    assert distinct_choice_points(params, 6, seed=7) == points  # the search seed fixes them
    every = {(p["lr"], p["m"], p["cl"]) for p in distinct_choice_points(params, 50, seed=1)}
    assert len(every) == 12  # capped at the whole space, each point once
    continuous = parse_hyper_text("lr loguniform -8,-5\nm choice [2, 4]\n")
    assert choice_combinations(continuous) is None and distinct_choice_points(continuous, 3, 0) is None


def test_random_search_gives_ray_its_distinct_points():
    from recbole_cmi.tune.space import distinct_choice_points
    from recbole_cmi.tune.tuner import _search_algorithm

    params = parse_hyper_text("lr choice [0.001, 0.002]\nm choice [2, 4]\n")
    points = distinct_choice_points(params, 3, seed=0)
    generator = _search_algorithm("random", 0, 3, None, points)
    assert generator._points_to_evaluate == points  # each of the 3 samples is one of these points


def test_random_search_refuses_more_samples_than_points(tmp_path):
    from recbole_cmi.tune.search import make_plan

    hyper = tmp_path / "small.hyper"
    hyper.write_text("learning_rate choice [0.001, 0.002]\nnum_interest choice [2, 4]\n")
    settings = SearchSettings(model="CMI", dataset="micro_video", params_file=str(hyper), num_samples=5)
    with pytest.raises(ConfigValueError, match=r"--num_samples=5 is more than the 4 different points of small.hyper"):
        make_plan(settings)
    default = make_plan(SearchSettings(model="CMI", dataset="micro_video", params_file=str(hyper)))
    assert default["settings"]["num_samples"] == 4  # the default 10 is capped at the space


@pytest.mark.parametrize(
    "line, message",
    [
        ("learning_rate", "cannot parse"),
        ("learning_rate normal 0,1", "unknown type 'normal'"),
        ("n_heads choice [1, 2", "not a Python literal list"),
        ("n_heads choice []", "non-empty list"),
        ("n_heads choice 3", "non-empty list"),
        ("hidden_size quniform 16,64", "needs 3 finite numbers"),
        ("learning_rate loguniform -4,x", "needs 2 finite numbers"),
        ("learning_rate loguniform -4,-8", "needs a < b"),
        ("hidden_size quniform 16,64,0", "step q > 0"),
        ("data_path choice ['a']", "set by the search itself"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.hyper"
    path.write_text(f"# header\nlearning_rate_ok choice [0.1]\n{line}\n")
    with pytest.raises(ConfigValueError) as err:
        parse_hyper_file(path)
    assert f"{path}, line 3" in str(err.value) and message in str(err.value)


def test_duplicate_empty_and_missing_files_are_errors(tmp_path):
    with pytest.raises(ConfigValueError, match=r"line 2: parameter 'n_heads' is already defined on line 1"):
        parse_hyper_text("n_heads choice [1]\nn_heads choice [2]\n", "dup.hyper")
    with pytest.raises(ConfigValueError, match="no parameters to search"):
        parse_hyper_text("# only a comment\n", "empty.hyper")
    with pytest.raises(ConfigValueError, match="cannot read params file"):
        parse_hyper_file(tmp_path / "missing.hyper")


def _cli():
    spec = importlib.util.spec_from_file_location("run_hyper", REPO_ROOT / "run_hyper.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reports_a_misspelt_parameter_in_one_line(tmp_path, tiny_data_root, capsys):
    params = tmp_path / "typo.hyper"
    params.write_text("learning_rat choice [0.01]\n")
    code = _cli().main(["--model=SASRec", "--dataset=tiny", f"--params_file={params}", f"--data_path={tiny_data_root}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'learning_rat' (line 1) not a config key of SASRec" in err


def test_cli_rejects_unknown_search(tmp_path, capsys):
    params = tmp_path / "p.hyper"
    params.write_text("learning_rate choice [0.01]\n")
    code = _cli().main(["--model=SASRec", "--dataset=tiny", f"--params_file={params}", "--search=bayes"])
    assert code == 2 and "--search must be one of random, grid, hyperopt, optuna" in capsys.readouterr().err


SHIPPED_HYPER = sorted((REPO_ROOT / "properties" / "hyper").glob("*.hyper"))


@pytest.mark.parametrize("path", SHIPPED_HYPER, ids=[p.stem for p in SHIPPED_HYPER])
def test_shipped_hyper_files_search_keys_of_their_model(path):
    from recbole_cmi.errors import UnknownModelError
    from recbole_cmi.tune.search import make_plan

    try:
        plan = make_plan(SearchSettings(model=path.stem, dataset="micro_video", params_file=str(path)))
    except UnknownModelError:
        pytest.skip(f"model {path.stem} is not available yet")
    assert plan["model"] == path.stem and plan["metric"] == "ndcg@20" and plan["mode"] == "max"
    assert len(plan["searched"]) == len(parse_hyper_file(path)) >= 2
    assert Path(plan["fixed"]["data_path"], "micro_video").is_dir()


def test_the_plan_freezes_the_yaml_layers_under_the_user_values():
    from recbole_cmi.tune.search import make_plan

    path = REPO_ROOT / "properties" / "hyper" / "CMI.hyper"
    settings = SearchSettings(model="CMI", dataset="micro_video", params_file=str(path), config_dict={"epochs": 2})
    fixed = make_plan(settings)["fixed"]
    model_yaml = yaml.safe_load((REPO_ROOT / "properties" / "model" / "CMI.yaml").read_text(encoding="utf-8"))
    dataset_yaml = yaml.safe_load((REPO_ROOT / "properties" / "dataset" / "micro_video.yaml").read_text("utf-8"))
    assert fixed["cl_augmentation"] == model_yaml["cl_augmentation"]  # model layer
    assert fixed["exclude_history_items"] == dataset_yaml["exclude_history_items"]  # dataset layer
    assert fixed["train_batch_size"] == dataset_yaml["train_batch_size"]  # dataset beats model
    assert fixed["epochs"] == 2  # the user's value beats both


# ---------------------------------------------------------------- searches on a local Ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _settings(data_root, output, hyper_file, **overrides):
    fixed = dict(TINY_SETTINGS, data_path=str(data_root), epochs=2)
    fixed.update(overrides.pop("fixed", {}))
    values = dict(
        model="SASRec",
        dataset="tiny",
        params_file=str(hyper_file),
        config_dict=fixed,
        search="grid",
        scheduler="fifo",
        cpus_per_trial=1,
        output=str(output),
        verbose=0,
    )
    values.update(overrides)
    return SearchSettings(**values)


@pytest.fixture(scope="module")
def grid_search(local_ray, tiny_data_root, tmp_path_factory):
    """2 learning rates x n_heads 1 (works) or 3 (hidden_size 16 is not divisible: the model raises)."""
    root = tmp_path_factory.mktemp("grid")
    hyper = root / "sasrec.hyper"
    hyper.write_text("learning_rate choice [0.001, 0.01]\nn_heads choice [1, 3]\n")
    return run_search(_settings(tiny_data_root, root / "out", hyper))


@pytest.mark.e2e
def test_search_picks_the_best_validation_trial(grid_search):
    rows = grid_search.rows
    assert len(rows) == 4 and grid_search.metric == "ndcg@20" and grid_search.mode == "max"
    finished = [r for r in rows if r.status == "completed"]
    assert sorted(r.params["learning_rate"] for r in finished) == [0.001, 0.01]
    assert all(r.params["n_heads"] == 1 and r.epochs_run == 2 for r in finished)
    assert grid_search.best.score == max(r.score for r in finished)
    assert rows[0] is grid_search.best and Path(grid_search.best.saved_model_file).is_file()

    with open(grid_search.files["trials_csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["trial_id"] for row in table] == [r.trial_id for r in rows]
    assert float(table[0]["valid_ndcg@20"]) == grid_search.best.score
    scores = [float(row["valid_ndcg@20"]) for row in table if row["valid_ndcg@20"]]
    assert scores == sorted(scores, reverse=True)

    summary = json.loads(grid_search.files["best_test_result"].read_text())
    assert summary["trial_id"] == grid_search.best.trial_id and summary["params"] == grid_search.best.params
    assert set(summary["test_result"]) >= {"ndcg@20", "recall@20"}
    assert summary["test_result"] == grid_search.test_result
    assert summary["valid_result"]["ndcg@20"] == pytest.approx(grid_search.best.score, abs=1e-4)


@pytest.mark.e2e
def test_failed_trial_is_reported_and_does_not_stop_the_search(grid_search):
    failed = [r for r in grid_search.rows if r.status == "error"]
    assert sorted(r.params["learning_rate"] for r in failed) == [0.001, 0.01]
    assert all(r.params["n_heads"] == 3 and HEADS_ERROR.search(r.error) and r.score is None for r in failed)
    assert grid_search.rows[-2:] == failed  # unscored trials sort last
    markdown = grid_search.files["trials_md"].read_text()
    assert len(HEADS_ERROR.findall(markdown)) == 2 and f"Best trial: **{grid_search.best.trial_id}**" in markdown


@pytest.mark.e2e
def test_random_search_over_choices_never_repeats_a_point(local_ray, tiny_data_root, tmp_path):
    hyper = tmp_path / "small.hyper"
    hyper.write_text("learning_rate choice [0.001, 0.01]\nn_heads choice [1, 2]\n")
    settings = _settings(
        tiny_data_root, tmp_path / "out", hyper, search="random", num_samples=3, search_seed=3, fixed={"epochs": 1}
    )
    rows = run_search(settings).rows
    points = {(r.params["learning_rate"], r.params["n_heads"]) for r in rows}
    assert len(rows) == 3 == len(points)


@pytest.mark.e2e
def test_best_config_reproduces_the_best_trial(grid_search, tmp_path):
    from recbole_cmi.quick_start import run_recbole_cmi

    config = yaml.safe_load(grid_search.files["best_config"].read_text())
    assert config["model"] == "SASRec" and config["dataset"] == "tiny"
    assert {k: config[k] for k in grid_search.best.params} == grid_search.best.params
    result = run_recbole_cmi(
        config_file_list=[str(grid_search.files["best_config"])],
        config_dict={"checkpoint_dir": str(tmp_path / "saved")},
        evaluate_test=False,
    )
    assert result["best_valid_score"] == pytest.approx(grid_search.best.score, abs=1e-4)


@pytest.mark.e2e
def test_resume_of_a_finished_search_keeps_its_trials(grid_search, tiny_data_root):
    trial_dirs = sorted(p.name for p in (grid_search.output_dir / "ray").glob("*/run_trial_*"))
    resumed = run_search(SearchSettings(output=str(grid_search.output_dir), resume=True, verbose=0))
    assert [(r.trial_id, r.status, r.score) for r in resumed.rows] == [
        (r.trial_id, r.status, r.score) for r in grid_search.rows
    ]
    assert resumed.test_result == grid_search.test_result
    assert sorted(p.name for p in (grid_search.output_dir / "ray").glob("*/run_trial_*")) == trial_dirs


@pytest.mark.e2e
def test_asha_stops_a_bad_trial_and_keeps_its_checkpoint(local_ray, tiny_data_root, tmp_path):
    # One trial at a time, in grid order: the learning trial sets the bar at the first rung,
    # the one that cannot learn (learning_rate 1e-9) falls below it and is stopped after epoch 0.
    hyper = tmp_path / "asha.hyper"
    hyper.write_text("learning_rate choice [0.01, 1e-9]\n")
    outcome = run_search(_settings(tiny_data_root, tmp_path / "out", hyper, scheduler="asha", max_concurrent=1))
    good, bad = sorted(outcome.rows, key=lambda r: -r.params["learning_rate"])
    assert (good.status, good.epochs_run, bad.status, bad.epochs_run) == ("completed", 2, "stopped by ASHA", 1), [
        (r.params, r.status, r.epochs_run, r.score, r.error) for r in outcome.rows
    ]
    assert Path(bad.saved_model_file).is_file()
    assert outcome.best is good


# ---------------------------------------------------------------- a trial Ray restarts from its checkpoint


class _Killed(Exception):
    """Stands in for Ray stopping the trial's process right after a report."""


def _run_fake_trial(workdir: Path, plan: dict, kill_after=None, restore_from=None):
    """``run_trial`` with Tune's session calls replaced: reports are recorded, checkpoints copied."""
    from ray import tune

    from recbole_cmi.tune.trial import run_trial

    workdir.mkdir()
    reports = []

    class Context:
        def get_trial_id(self):
            return "trial_0"

    def report(metrics, checkpoint=None):
        persisted = workdir / f"persisted_{len(reports)}"
        shutil.copytree(checkpoint.path, persisted)
        reports.append((dict(metrics), persisted))
        if kill_after is not None and len(reports) == kill_after:
            raise _Killed()

    restored = tune.Checkpoint.from_directory(str(restore_from)) if restore_from else None
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setattr(tune, "get_context", Context)
        patch.setattr(tune, "get_checkpoint", lambda: restored)
        patch.setattr(tune, "report", report)
        patch.setattr(ray, "get_gpu_ids", lambda: [])
        run_trial({"learning_rate": 0.01}, plan)
    return reports


@pytest.mark.e2e
def test_interrupted_trial_continues_exactly_from_its_checkpoint(tmp_path, tiny_data_root):
    plan = {
        "model": "SASRec",
        "dataset": "tiny",
        "fixed": dict(TINY_SETTINGS, data_path=str(tiny_data_root), epochs=3, stopping_step=1),
        "metric": "ndcg@20",
        "mode": "max",
        "stopping_step": 1,
        "cpus_per_trial": 1,
    }
    full = _run_fake_trial(tmp_path / "full", plan)
    with pytest.raises(_Killed):
        _run_fake_trial(tmp_path / "first", plan, kill_after=1)
    resumed = _run_fake_trial(tmp_path / "second", plan, restore_from=tmp_path / "first/persisted_0")

    def comparable(reports):
        return [{k: v for k, v in metrics.items() if k != "checkpoint_file"} for metrics, _ in reports]

    assert [m["epoch"] for m in comparable(full)] == [0, 1, 2]
    assert comparable(resumed) == comparable(full)[1:]
    assert all(
        metrics["checkpoint_file"] and not metrics["checkpoint_file"].endswith("-last.pth") for metrics, _ in full
    )


def test_a_stopped_search_report_says_why_it_has_no_best_trial():
    from recbole_cmi.tune.report import TrialRow, trials_markdown

    plan = {
        "model": "CMI",
        "dataset": "tiny",
        "params_file": "x.hyper",
        "searched": ["choice [1, 2]"],
        "settings": {"search": "grid", "scheduler": "fifo"},
        "epochs": 2,
        "metric": "ndcg@20",
        "mode": "max",
    }
    done = TrialRow("a_00000", {"m": 1}, 0.25, 1, 2, "completed", rank=1)
    stopped = TrialRow("a_00001", {"m": 2}, None, None, None, "not started", rank=2)
    text = trials_markdown(plan, [done, stopped], None, None, {})
    assert "No best trial yet: 1 of 2 trials did not finish" in text and "`--resume` continues it" in text
    table = [line for line in unpadded(text).splitlines() if line.startswith("|")]
    assert table[0] == "| rank | trial | status | m | valid ndcg@20 | best epoch | epochs | error |"
    assert table[2:] == [
        "| 1 | a_00000 | completed | 1 | 0.25 | 1 | 2 | |",
        "| 2 | a_00001 | not started | 2 | | | | |",
    ]
    failed = TrialRow("a_00000", {"m": 1}, None, None, 1, "error", error="boom", rank=1)
    assert "no trial finished with a validation score" in trials_markdown(plan, [failed], None, None, {})
