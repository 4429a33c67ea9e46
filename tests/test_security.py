"""Hostile and careless input: no file a user loads runs code, no silent wrong answer, no data lost.

Each case here failed before the checkpoint format, the literal config reader, the option checks
and the converter's manifest existed (recbole_cmi.checkpoint, recbole_cmi.config,
recbole_cmi.options, recbole_cmi.data.convert.common).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys

import pytest
import torch
import yaml
from conftest import REPO_ROOT, TINY_SETTINGS, call, flags, one_line_error, script_main, verb

from recbole_cmi.checkpoint import FORMAT, load_checkpoint
from recbole_cmi.config import Config, literal_value
from recbole_cmi.data.convert import microlens
from recbole_cmi.data.convert.__main__ import main as convert
from recbole_cmi.data.convert.common import MANIFEST
from recbole_cmi.errors import CheckpointError, ConfigValueError
from recbole_cmi.quick_start import load_data_and_model, run_recbole_cmi


class CreatesFile:
    """Unpickling this object creates ``path`` (a harmless stand-in for any code a crafted file runs)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


QUIET = ["--state=ERROR", "--gpu_id="]


def run_main():
    return script_main()


def tiny_args(data_root, tmp_path, model="CMI", **overrides):
    settings = dict(TINY_SETTINGS, data_path=str(data_root), checkpoint_dir=str(tmp_path / "saved"))
    settings.update(num_interest=2, embedding_size=8)
    settings.update(overrides)
    return [f"--model={model}", "--dataset=tiny", *flags(settings)]


@pytest.fixture(scope="module")
def trained(tiny_data_root, tmp_path_factory):
    """A tiny CMI checkpoint in the safe format, and the folder it was written in."""
    work = tmp_path_factory.mktemp("security")
    settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), checkpoint_dir=str(work / "saved"))
    settings.update(num_interest=2, embedding_size=8, epochs=1)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        return run_recbole_cmi("CMI", "tiny", config_dict=settings, saved=True)["saved_model_file"], work
    finally:
        os.chdir(cwd)


@pytest.fixture
def crafted(tmp_path):
    """Two crafted checkpoints (torch's zip format and a plain pickle) and the file their payload would create."""
    marker = tmp_path / "payload-ran"
    zipped = tmp_path / "crafted-zip.pth"
    torch.save({"state_dict": {}, "config": CreatesFile(marker)}, zipped)
    plain = tmp_path / "crafted-plain.pth"
    with open(plain, "wb") as f:
        pickle.dump({"state_dict": CreatesFile(marker)}, f)
    return marker, [zipped, plain]


# ----------------------------------------------------------------------------- 1. checkpoints


@pytest.mark.e2e
def test_a_crafted_checkpoint_runs_nothing_through_any_entry_point(crafted, tiny_data_root, tmp_path):
    marker, files = crafted
    for path in files:
        entry_points = [
            (run_main(), tiny_args(tiny_data_root, tmp_path) + [f"--resume={path}"]),
            (verb("recommend"), ["--checkpoint", str(path), "--user", "1"]),
            (verb("inspect"), ["--checkpoint", str(path), "--out", str(tmp_path / "inspect")]),
            (verb("robustness"), ["--checkpoints", str(path), "--out", str(tmp_path / "robust")]),
        ]
        for main, argv in entry_points:
            status, _, err = call(main, argv)
            one_line_error(status, err, str(path), "--trust_checkpoint")
            assert not marker.exists(), f"{main} ran the payload of {path.name}"


@pytest.mark.e2e
def test_our_checkpoints_hold_only_what_the_safe_loader_reads(trained):
    path, _ = trained
    raw = torch.load(path, weights_only=True)  # would raise on any pickled object
    assert raw["format"] == FORMAT
    assert raw["config"]["final"]["model"] == "CMI"
    assert set(raw["id_mapping"]) == {"user_id", "item_id"}
    loaded = load_checkpoint(path)
    assert isinstance(loaded["config"], Config) and loaded["config"]["num_interest"] == 2
    assert loaded["config"]["MODEL_TYPE"].name == "SEQUENTIAL"  # the enum, rebuilt from its tagged form


def _old_format_copy(path, target):
    """What recbole_cmi before 0.2 (and RecBole) wrote: the Config object pickled with protocol 4."""
    checkpoint = load_checkpoint(path)
    checkpoint.pop("format")
    checkpoint.pop("id_mapping")
    torch.save(checkpoint, target, pickle_protocol=4)
    return target


@pytest.mark.e2e
def test_an_old_checkpoint_needs_trust_and_upgrades_to_the_safe_format(trained, tmp_path):
    path, work = trained
    old = _old_format_copy(path, tmp_path / "old.pth")
    with pytest.raises(CheckpointError, match="pickled Python objects.*--trust_checkpoint"):
        load_checkpoint(old)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        _, trusted, *_ = load_data_and_model(str(old), trust=True)
        _, safe_model, *_ = load_data_and_model(str(path))
    finally:
        os.chdir(cwd)
    for name, tensor in safe_model.state_dict().items():
        assert torch.equal(tensor, trusted.state_dict()[name])

    status, _, err = call(verb("checkpoint"), ["upgrade", str(old)])
    one_line_error(status, err, "--trust_checkpoint")
    status, out, _ = call(verb("checkpoint"), ["upgrade", str(old), "--trust_checkpoint"])
    assert status == 0
    upgraded = out.split("safe checkpoint: ")[1].strip()
    assert torch.load(upgraded, weights_only=True)["format"] == FORMAT
    assert load_checkpoint(upgraded)["config"]["model"] == "CMI"


@pytest.mark.e2e
def test_resume_refuses_an_old_checkpoint_unless_trusted(trained, tiny_data_root, tmp_path):
    path, _ = trained
    old = _old_format_copy(path, tmp_path / "old.pth")
    args = tiny_args(tiny_data_root, tmp_path, epochs=1) + [f"--resume={old}"]
    status, _, err = call(run_main(), args)
    one_line_error(status, err, "pickled Python objects", "--trust_checkpoint")
    status, out, err = call(run_main(), args + ["--trust_checkpoint"])
    assert status == 0, err
    assert "test result" in out


@pytest.mark.e2e
def test_a_checkpoint_on_data_with_another_id_mapping_is_refused(trained, tiny_data_root, tmp_path):
    path, _ = trained
    # The same interactions, rows reordered: RecBole numbers tokens in order of appearance.
    moved = tmp_path / "data" / "tiny"
    moved.mkdir(parents=True)
    header, *rows = (tiny_data_root / "tiny" / "tiny.inter").read_text().splitlines()
    (moved / "tiny.inter").write_text("\n".join([header] + rows[::-1]) + "\n")
    shutil.copy(tiny_data_root / "tiny" / "tiny.item", moved / "tiny.item")
    checkpoint = load_checkpoint(path)
    checkpoint["config"]["data_path"] = str(moved)
    torch.save(checkpoint_payload_of(checkpoint), tmp_path / "moved.pth")
    status, _, err = call(verb("recommend"), ["--checkpoint", str(tmp_path / "moved.pth"), "--user", "1"])
    one_line_error(status, err, "ids differ", "same count but other order")


def checkpoint_payload_of(checkpoint):
    from recbole_cmi.checkpoint import checkpoint_payload

    return checkpoint_payload(checkpoint)


# ----------------------------------------------------------------------------- 2./3. config files


def test_config_strings_are_literals_never_code(tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w')"
    assert literal_value(code) == code
    assert literal_value("[1, 2]") == [1, 2] and literal_value("1e-3") == 0.001 and literal_value("None") is None
    assert literal_value("false") is False and literal_value("True") is True
    assert literal_value("{'a': (1, 2)}") == {"a": (1, 2)}
    assert not marker.exists()


def test_a_yaml_value_holding_code_runs_nothing_in_a_run(tiny_data_root, tmp_path):
    marker = tmp_path / "ran"
    config_file = tmp_path / "evil.yaml"
    config_file.write_text(f"note: \"open({str(marker)!r}, 'w')\"\n", encoding="utf-8")
    status, out, err = call(run_main(), tiny_args(tiny_data_root, tmp_path) + [f"--config_files={config_file}"])
    assert status == 0, err
    assert not marker.exists()


@pytest.mark.parametrize("text", ["x: !!python/name:os.system\n", "x: !!python/object/apply:os.getcwd []\n"])
def test_python_yaml_tags_are_refused_naming_file_and_line(tiny_data_root, tmp_path, text):
    config_file = tmp_path / "tagged.yaml"
    config_file.write_text("epochs: 1\n" + text, encoding="utf-8")
    status, _, err = call(run_main(), tiny_args(tiny_data_root, tmp_path) + [f"--config_files={config_file}"])
    one_line_error(status, err, str(config_file), "line 2", "python tags are refused")


def test_broken_yaml_names_the_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: 1\nmetrics: [Recall,\n", encoding="utf-8")
    with pytest.raises(ConfigValueError, match=rf"{broken}, line \d: not valid yaml"):
        Config("SASRec", "micro_video", [str(broken)], {"gpu_id": ""}, read_argv=False)


@pytest.mark.e2e
def test_a_search_runs_no_code_from_a_yaml_file_or_a_hyper_choice(tiny_data_root, tmp_path):
    pytest.importorskip("ray")
    marker_yaml, marker_hyper = tmp_path / "ran-yaml", tmp_path / "ran-hyper"
    config_file = tmp_path / "evil.yaml"
    settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), num_interest=2, embedding_size=8)
    config_file.write_text(yaml.safe_dump(settings) + f"note: \"open({str(marker_yaml)!r}, 'w')\"\n", encoding="utf-8")
    hyper = tmp_path / "evil.hyper"
    hyper.write_text(f"category_init choice [\"open({str(marker_hyper)!r}, 'w')\"]\n", encoding="utf-8")
    main = script_main("run_hyper.py")
    status, out, err = call(
        main,
        [
            "--model=CMI",
            "--dataset=tiny",
            f"--params_file={hyper}",
            f"--config_files={config_file}",
            "--num_samples=1",
            "--num_cpus=1",
            "--verbose=0",
            f"--output={tmp_path / 'search'}",
        ],
    )
    # The one trial fails on the value (not one of category_init's choices), so the search has no best trial.
    assert status == 2 and "all 1 trials failed" in err, err
    trials = (tmp_path / "search" / "trials.md").read_text()
    assert "category_init" in trials
    assert not marker_yaml.exists() and not marker_hyper.exists()


# ----------------------------------------------------------------------------- 4./6. values


def _config(**values):
    return Config("CMI", "tiny", config_dict={"gpu_id": "", **values}, read_argv=False)


@pytest.mark.parametrize(
    ("argv_value", "key"),
    [
        ("no", "use_general_interest"),
        ("yes", "sphere_projection"),
        ("0", "cl_shuffle_first_view"),
        ("abc", "num_interest"),
        ("2.5", "num_interest"),
        ("abc", "temperature"),
        ("[64]", "embedding_size"),
        ("inf", "cl_weight"),
        ("nan", "orth_weight"),
        ("-1", "assign_temperature"),
        ("abc", "gpu_id"),
        ("shuffle", "cl_augmentation"),
        ("1.5", "hard_negative_ratio"),
        ("no", "show_progress"),
        ("maybe", "reproducibility"),
    ],
)
def test_bad_command_line_values_are_refused_naming_the_key(tiny_data_root, tmp_path, argv_value, key):
    status, _, err = call(run_main(), tiny_args(tiny_data_root, tmp_path, **{key: argv_value}))
    one_line_error(status, err, f"{key}=")


def test_booleans_accept_true_and_false_spellings_only(tiny_data_root, tmp_path, monkeypatch):
    base = {"gpu_id": "", "data_path": str(tiny_data_root)}
    monkeypatch.setattr(sys, "argv", ["x", "--use_general_interest=false", "--sphere_projection=TRUE"])
    config = Config("CMI", "tiny", config_dict=base, read_argv=True)
    assert config["use_general_interest"] is False and config["sphere_projection"] is True
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text('use_general_interest: "False"\n', encoding="utf-8")  # a string, not a boolean
    with pytest.raises(ConfigValueError, match=r"use_general_interest='False' \(True or False\)"):
        Config("CMI", "tiny", [str(quoted)], base, read_argv=False)


def test_a_history_length_that_cannot_fit_in_memory_is_refused_before_loading(tiny_data_root, tmp_path):
    status, _, err = call(run_main(), tiny_args(tiny_data_root, tmp_path, MAX_ITEM_LIST_LENGTH=10**9))
    one_line_error(status, err, "MAX_ITEM_LIST_LENGTH=1000000000", "GiB", "lower MAX_ITEM_LIST_LENGTH")


def test_an_overflowing_weight_is_named_instead_of_the_learning_rate(tiny_data_root, tmp_path):
    status, _, err = call(run_main(), tiny_args(tiny_data_root, tmp_path, cl_weight=1e308))
    assert status == 2, err
    assert "loss component 'cl'" in err and "cl_weight=1e+308" in err and "not the learning rate" in err


# ----------------------------------------------------------------------------- 7./8. files and names


def _microlens_input(root):
    root.mkdir()
    rows = [f"u{u}\t" + " ".join(f"i{(u + k) % 7}" for k in range(6)) for u in range(8)]
    (root / "MicroLens-50k_pairs.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_the_converter_never_overwrites_or_deletes_files_it_did_not_write(tmp_path):
    source = _microlens_input(tmp_path / "in")
    target = tmp_path / "micro_video"
    shutil.copytree(REPO_ROOT / "dataset" / "micro_video", target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    status, _, err = call(convert, ["microlens", "--input", str(source), "--output", str(target), "--kcore", "1"])
    one_line_error(status, err, "did not write", "--overwrite")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    # --overwrite replaces the .inter but never deletes the .item it did not write.
    status, _, err = call(
        convert, ["microlens", "--input", str(source), "--output", str(target), "--kcore", "1", "--overwrite"]
    )
    one_line_error(status, err, "micro_video.item", "never deleted")
    assert (target / "micro_video.item").read_bytes() == before["micro_video.item"]


def test_a_folder_the_converter_wrote_can_be_converted_into_again(tmp_path):
    source = _microlens_input(tmp_path / "in")
    first = microlens.convert(source, tmp_path / "out", kcore=1)
    again = microlens.convert(source, tmp_path / "out", kcore=1)
    assert first.inter_path == again.inter_path
    assert (tmp_path / "out" / MANIFEST).is_file()


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "a/b", ".."])
def test_names_cannot_escape_their_folders(tmp_path, tiny_data_root, name):
    source = _microlens_input(tmp_path / "in")
    with pytest.raises(ConfigValueError, match="must be a plain name"):
        microlens.convert(source, tmp_path / "out", kcore=1, name=name)
    assert not (tmp_path / "escaped.inter").exists()
    status, _, err = call(run_main(), tiny_args(tiny_data_root, tmp_path)[:1] + [f"--dataset={name}"])
    one_line_error(status, err, "must be a plain name")


def test_an_oversized_field_names_file_line_and_column(tmp_path):
    root = tmp_path / "data" / "big"
    root.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"u{i % 3}\ti{i}\t{i}" for i in range(9)]
    rows[5] = "u1\t" + "x" * 200_000 + "\t4"
    (root / "big.inter").write_text("\n".join(rows) + "\n", encoding="utf-8")
    status, _, err = call(run_main(), [*QUIET, "--model=SASRec", "--dataset=big", f"--data_path={tmp_path / 'data'}"])
    one_line_error(status, err, "big.inter, line 6", "column 'item_id'", "200,000 characters")


def test_an_inter_file_that_is_a_folder_or_a_link_loop_is_named_so(tmp_path):
    root = tmp_path / "data"
    (root / "folder" / "folder.inter").mkdir(parents=True)
    (root / "loop").mkdir()
    os.symlink(root / "loop" / "loop.inter", root / "loop" / "loop.inter")
    for name, expected in (("folder", "is a folder, not a file"), ("loop", "broken symbolic link")):
        status, _, err = call(run_main(), [*QUIET, "--model=SASRec", f"--dataset={name}", f"--data_path={root}"])
        one_line_error(status, err, f"{name}.inter", expected)
