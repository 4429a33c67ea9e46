"""python -m recbole_cmi <verb>: every verb answers --help, and the one argument vocabulary (recbole_cmi.cli)."""

from __future__ import annotations

import runpy

import pytest
from conftest import REPO_ROOT, call, verb

from recbole_cmi import __main__ as front
from recbole_cmi.cli import (
    OneLineArgumentParser,
    check_config_files,
    config_file_names,
    config_values,
    parse_model_variants,
)
from recbole_cmi.errors import ConfigValueError

BENCHMARKS = ("accuracy", "speed", "tune", "anomaly", "gpu", "authors-code")


@pytest.mark.parametrize("name", sorted(front.VERBS))
def test_every_verb_answers_help(name):
    status, out, _ = call(verb(name), ["--help"])
    assert status == 0
    assert f"python -m recbole_cmi {name}" in out


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_answers_help(name):
    status, out, _ = call(verb("benchmark"), [name, "--help"])
    assert status == 0 and f"python -m recbole_cmi benchmark {name}" in out


def test_the_verb_list_and_unknown_verbs():
    status, out, _ = call(front.main, ["--help"])
    assert status == 0 and all(f"\n  {name} " in out for name in front.VERBS)
    status, out, _ = call(front.main, [])
    assert status == 2 and "usage:" in out
    status, _, err = call(front.main, ["trian"])
    assert status == 2 and err.strip().splitlines() == [
        f"error: unknown verb 'trian' (choose from {', '.join(front.VERBS)}; see --help)"
    ]


def test_the_entry_scripts_are_the_front_doors_verbs():
    assert runpy.run_path(str(REPO_ROOT / "run_recbole_cmi.py"), run_name="shim")["main"] is front.run
    assert runpy.run_path(str(REPO_ROOT / "run_hyper.py"), run_name="shim")["main"] is front.tune


def test_config_values_are_read_as_the_config_reads_them():
    parser = OneLineArgumentParser()
    values = config_values(
        ["--learning_rate=1e-3", "--topk=[10,20]", "--show_progress=false", "--loss_type=CE", "--x=None"], parser
    )
    assert values == {"learning_rate": 0.001, "topk": [10, 20], "show_progress": False, "loss_type": "CE", "x": None}
    assert config_values(["--code=__import__('os').getcwd()"], parser) == {"code": "__import__('os').getcwd()"}
    assert config_values(["--epochs=2", "--epochs=2"], parser) == {"epochs": 2}  # the same value twice is fine


@pytest.mark.parametrize(
    "rest, message",
    [
        (["stray"], "unrecognised arguments stray: config keys are given as --key=value"),
        (["--epochs", "3"], "unrecognised arguments --epochs 3"),
        (["--=3"], "unrecognised arguments --=3"),
        (["--epochs=2", "--epochs=3"], "--epochs given twice with different values ('2' and '3')"),
    ],
)
def test_config_values_refuse_anything_else_in_one_line(capsys, rest, message):
    with pytest.raises(SystemExit) as exit_info:
        config_values(rest, OneLineArgumentParser())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_every_verb_refuses_a_stray_argument_the_same_way():
    for name in ("run", "tune", "robustness"):
        status, _, err = call(verb(name), ["--models=CMI", "stray"] if name == "robustness" else ["stray"])
        assert status == 2 and "unrecognised arguments stray: config keys are given as --key=value" in err, name
    for name in ("accuracy", "tune"):
        status, _, err = call(verb("benchmark"), [name, "stray"])
        assert status == 2 and "unrecognised arguments stray: config keys are given as --key=value" in err, name


def test_config_files_are_flattened_and_checked(tmp_path):
    present = tmp_path / "a.yaml"
    present.write_text("epochs: 1\n", encoding="utf-8")
    assert config_file_names([f"{present} b.yaml", "c.yaml"]) == [str(present), "b.yaml", "c.yaml"]
    assert config_file_names(None) == []
    assert check_config_files([str(present)]) == [str(present)]
    with pytest.raises(ConfigValueError, match="^config file not found: missing.yaml$"):
        check_config_files([str(present), "missing.yaml"])
    with pytest.raises(ConfigValueError, match="is a folder, not a file"):
        check_config_files([str(tmp_path)])


def test_a_missing_config_file_is_one_line_in_every_verb(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    expected = f"error: config file not found: {missing}"
    status, _, err = call(verb("run"), ["--model=SASRec", "--dataset=micro_video", f"--config_files={missing}"])
    assert status == 2 and err.strip().splitlines() == [expected]
    status, _, err = call(verb("tune"), ["--model=SASRec", "--dataset=micro_video", f"--config_files={missing}"])
    assert status == 2 and err.strip().splitlines() == [expected]


def _triples(text):
    return [(v.name, v.overrides, v.label) for v in parse_model_variants(text)]


def test_model_variants_grammar(capsys):
    assert _triples("CMI") == [("CMI", {}, None)]
    assert _triples("CMI,SASRec") == [("CMI", {}, None), ("SASRec", {}, None)]
    assert _triples("CMI:num_interest=4,cl_weight=0,label=Wide,SASRec:topk=[10,20],gpu_id=0:1") == [
        ("CMI", {"num_interest": 4, "cl_weight": 0}, "Wide"),
        ("SASRec", {"topk": [10, 20], "gpu_id": "0:1"}, None),
    ]
    # read as --key=value values are: 1e-3 is a number (the speed benchmark once read it as the string '1e-3')
    assert _triples("CMI:learning_rate=1e-3") == [("CMI", {"learning_rate": 0.001}, None)]
    assert [v.text for v in parse_model_variants("CMI:a=1,b=2,label=X,SASRec")] == ["CMI:a=1,b=2", "SASRec"]
    assert capsys.readouterr().err == ""


def test_model_variants_read_the_old_spellings_with_a_note(capsys):
    assert _triples("Wide:model=CMI;num_interest=4,SASRec") == [
        ("Wide", {"model": "CMI", "num_interest": 4}, None),
        ("SASRec", {}, None),
    ]
    assert "';' between settings is the old spelling" in capsys.readouterr().err
    assert _triples("CMI:sparse_item_updates=True:num_interest=4") == [
        ("CMI", {"sparse_item_updates": True, "num_interest": 4}, None)
    ]
    assert "':' between settings is the old spelling" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("CMI:num_interest", "expected Model:key=value,key=value, got 'num_interest'"),
        ("a/b", "bad model name 'a/b'"),
        ("", "no model given"),
        (":x=1", "starts with ':'"),
    ],
)
def test_bad_model_variants_are_named(text, message):
    with pytest.raises(ConfigValueError, match=message):
        parse_model_variants(text)


def _readme_commands() -> list[list[str]]:
    """The front-door commands in README.md's code blocks (continuation lines joined; ``...`` elisions left out)."""
    import shlex

    commands, block, pending = [], False, ""
    for line in (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            block, pending = not block, ""
            continue
        if not block:
            continue
        text = pending + line.split("  #")[0].strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text.startswith("python -m recbole_cmi ") and "..." not in text:
            commands.append(shlex.split(text)[3:])
    return commands


def test_every_readme_command_names_a_verb_and_options_that_exist():
    """Each README command's verb (and benchmark or converter) exists, and its own options are ones it declares:
    ``--help`` of that verb lists every ``--option`` the README passes, except config keys (``--key=value``),
    which every training verb accepts."""
    commands = _readme_commands()
    assert len(commands) >= 15
    for argv in commands:
        name, rest = argv[0], argv[1:]
        assert name in front.VERBS, argv
        prefix = rest[:1] if name in ("benchmark", "convert") else []
        status, out, err = call(verb(name), prefix + ["--help"])
        assert status == 0, (argv, err)
        for option in (a.split("=")[0] for a in rest if a.startswith("--")):
            keyed = any(a.startswith(option + "=") for a in rest)
            assert option in out or (keyed and name in ("run", "tune", "robustness", "benchmark")), (argv, option)
