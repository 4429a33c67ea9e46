"""run_recbole_cmi.py: a tiny run, --resume, and one clear stderr line for every bad input."""

from __future__ import annotations

import sys

import pytest
from conftest import TINY_SETTINGS, call, flags, script_main

from recbole_cmi.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def main():
    return script_main()


def cli_args(data_root, checkpoint_dir, **overrides):
    settings = dict(TINY_SETTINGS, data_path=str(data_root), checkpoint_dir=str(checkpoint_dir))
    settings.update(overrides)
    return ["--model=SASRec", "--dataset=tiny", *flags(settings)]


@pytest.fixture(scope="module")
def first_run(main, tiny_data_root, tmp_path_factory):
    """One 1-epoch SASRec run through the command line, shared by the tests below."""
    workdir = tmp_path_factory.mktemp("cli_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["run_recbole_cmi.py"])
        status, out, err = call(main, cli_args(tiny_data_root, workdir / "saved") + ["--lerning_rate=0.01"])
    return status, out, err, workdir


@pytest.mark.e2e
def test_one_epoch_run_exits_0_and_prints_the_test_result(first_run):
    status, out, err, workdir = first_run
    assert status == 0, err
    lines = out.splitlines()
    assert any(line.startswith("test result: {'recall@10': ") for line in lines), out
    checkpoint = next(line.split(": ", 1)[1] for line in lines if line.startswith("checkpoint: "))
    assert load_checkpoint(checkpoint)["epoch"] == 0
    last = next(line.split(": ", 1)[1] for line in lines if line.startswith("last checkpoint: "))
    assert last == checkpoint.replace(".pth", "-last.pth")
    # The misspelt key gave exactly one warning line, on stderr and in the log file.
    assert err.strip().splitlines() == [
        "warning: unknown config key 'lerning_rate' (did you mean 'learning_rate'?): "
        "neither RecBole nor recbole_cmi reads it"
    ]
    logs = list((workdir / "log").rglob("*.log"))
    assert logs and "unknown config key 'lerning_rate'" in logs[0].read_text(encoding="utf-8")


def test_main_restores_sys_argv(main, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog"])
    status, _, _ = call(main, ["--model=NoSuchModel", "--epochs=2"])
    assert status == 2
    assert sys.argv == ["prog"]  # RecBole reads --key=value from sys.argv only while main runs


@pytest.mark.e2e
def test_resume_continues_the_run_through_the_cli(main, first_run, tiny_data_root, tmp_path):
    _, out, _, workdir = first_run
    checkpoint = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("checkpoint: "))
    status, out, err = call(
        main, cli_args(tiny_data_root, workdir / "saved", epochs=2, state="INFO") + [f"--resume={checkpoint}"]
    )
    assert status == 0, err
    assert "test result: {'recall@10'" in out
    assert load_checkpoint(checkpoint.replace(".pth", "-last.pth"))["epoch"] == 1
    log = max((tmp_path / "log").rglob("*.log"), key=lambda p: p.stat().st_mtime).read_text(encoding="utf-8")
    assert "Resume training from epoch 1" in log
    assert "epoch 0 training" not in log and "epoch 1 training" in log


@pytest.mark.e2e
def test_resume_with_another_models_checkpoint_is_refused(main, first_run, tiny_data_root, tmp_path):
    _, out, _, workdir = first_run
    checkpoint = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("checkpoint: "))
    argv = cli_args(tiny_data_root, tmp_path / "saved") + [f"--resume={checkpoint}"]
    argv[0] = "--model=GRU4Rec"
    status, out, err = call(main, argv)
    assert status == 2
    assert err.strip().splitlines() == [f"error: checkpoint {checkpoint} was written for model 'SASRec', not 'GRU4Rec'"]


# --- bad inputs: one line each ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_data_root(tmp_path_factory, tiny_data_root):
    """Malformed variants of the tiny dataset, one folder each."""
    root = tmp_path_factory.mktemp("bad_data")
    good = (tiny_data_root / "tiny" / "tiny.inter").read_text(encoding="utf-8").splitlines()
    header, rows = good[0], good[1:]
    variants = {
        "bad_type": ["user_id:token\titem_id:tokn\ttimestamp:float"] + rows,
        "column_count": [header] + rows[:4] + ["u1\tv2"] + rows[4:],
        "text_time": [header] + rows[:4] + ["u1\tv999\tyesterday"] + rows[4:],
        "no_item": ["user_id:token\ttimestamp:float"] + [f"{r.split()[0]}\t{r.split()[2]}" for r in rows],
        "empty_file": [],
        "all_single": [header] + [f"x{i}\tv{i}\t{i}" for i in range(1, 30)],
        "no_file": None,
    }
    for name, lines in variants.items():
        folder = root / name
        folder.mkdir()
        if lines is not None:
            (folder / f"{name}.inter").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return root


BAD_INPUTS = [
    (["--model=NoSuchModel"], None, "error: unknown model 'NoSuchModel'"),
    (["--model=ComiRec"], None, "Did you mean: ComiRecSA, ComiRecDR"),
    (["--dataset=nope"], None, "error: unknown dataset 'nope': no folder "),
    (["--dataset=no_file"], "bad", "error: atomic file not found: "),
    (["--dataset=bad_type"], "bad", "header column 'item_id:tokn' must be 'name:type'"),
    (["--dataset=column_count"], "bad", "column_count.inter, line 6: 2 values for 3 header columns"),
    (["--dataset=text_time"], "bad", "line 6: column 'timestamp' is declared float but holds 'yesterday'"),
    (["--dataset=no_item"], "bad", "no_item.inter: missing column(s) item_id"),
    (["--dataset=empty_file"], "bad", "empty_file.inter is empty"),
    (["--dataset=all_single"], "bad", "no interactions left after filtering (user_inter_num_interval=[3,inf)"),
    (["--train_neg_sample_args=5"], None, "invalid config value train_neg_sample_args=5 (None, or a dict"),
    (
        ["--train_neg_sample_args={'distribution':'uniform','sample_num':1}"],
        None,
        "must be None with loss_type CE",
    ),
    (["--MAX_ITEM_LIST_LENGTH=1"], None, "invalid config value MAX_ITEM_LIST_LENGTH=1 (an integer >= 2"),
    (["--epochs=abc"], None, "invalid config value epochs='abc' (an integer >= 0"),
    (["--train_batch_size=0"], None, "invalid config value train_batch_size=0 (an integer >= 1)"),
    (["--learning_rate=-1"], None, "invalid config value learning_rate=-1 (a finite number > 0)"),
    (["--valid_metric=NDCG@7"], None, "valid_metric='NDCG@7' (one of recall@10"),
    (["--metrics=['Foo']"], None, "'Foo' unknown; RecBole has auc"),
    (["--config_files=missing.yaml"], None, "error: config file not found: missing.yaml"),
    (["--resume=nothere.pth"], None, "error: checkpoint file not found: nothere.pth"),
    (["--saved=maybe"], None, "error: --saved must be True or False, got 'maybe'"),
    (["--epochs", "3"], None, "error: unrecognised arguments --epochs 3: config keys are given as --key=value"),
]


@pytest.mark.parametrize(("extra", "data", "expected"), BAD_INPUTS, ids=[" ".join(case[0]) for case in BAD_INPUTS])
def test_bad_input_exits_nonzero_with_one_clear_line(
    main, tiny_data_root, bad_data_root, tmp_path, extra, data, expected
):
    data_root = bad_data_root if data == "bad" else tiny_data_root
    base = cli_args(data_root, tmp_path / "saved")
    keys = {arg.split("=")[0] for arg in extra}
    argv = [arg for arg in base if arg.split("=")[0] not in keys] + extra
    status, out, err = call(main, argv)
    assert status not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err and "Traceback" not in out


def test_invalid_yaml_config_file(main, tiny_data_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n", encoding="utf-8")
    status, _, err = call(main, cli_args(tiny_data_root, tmp_path / "saved") + [f"--config_files={bad}"])
    assert status == 2
    assert (
        err.strip().splitlines() == [err.strip()] and err.startswith("error: config file ") and "not valid yaml" in err
    )


def test_unexpected_failures_are_one_line_too(main, tiny_data_root, tmp_path, monkeypatch):
    import recbole_cmi.quick_start as quick_start

    def boom(*args, **kwargs):
        raise RuntimeError("something deep inside\nsecond line")

    monkeypatch.setattr(quick_start, "build_pipeline", boom)
    status, _, err = call(main, cli_args(tiny_data_root, tmp_path / "saved"))
    assert status == 1
    assert err.strip() == (
        "error: RuntimeError: something deep inside (set RECBOLE_CMI_TRACEBACK=1 for the full traceback)"
    )
    monkeypatch.setenv("RECBOLE_CMI_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="something deep inside"):
        main(cli_args(tiny_data_root, tmp_path / "saved"))
