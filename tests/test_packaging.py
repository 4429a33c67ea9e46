"""The wheel ships the yaml defaults and the bundled dataset, and an install outside the checkout finds them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
import yaml
from conftest import REPO_ROOT

pytestmark = pytest.mark.e2e  # builds a wheel and installs it in a fresh environment

SOURCE_PARTS = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "recbole_cmi", "properties")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build from a copy of the checkout (nothing is written into the repository)."""
    src = tmp_path_factory.mktemp("src")
    for part in SOURCE_PARTS:
        path = REPO_ROOT / part
        if path.is_dir():
            shutil.copytree(path, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, src / part)
    shutil.copytree(REPO_ROOT / "dataset" / "micro_video", src / "dataset" / "micro_video")
    decoy = src / "dataset" / "converted_real_data"  # a user's own converted dataset must stay out
    decoy.mkdir()
    (decoy / "converted_real_data.inter").write_text("user_id:token\titem_id:token\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (path,) = out.glob("recbole_cmi-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """The wheel installed (without dependencies) into a folder of its own, outside the checkout."""
    target = tmp_path_factory.mktemp("site")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return target


def test_wheel_contains_properties_and_the_bundled_dataset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    required = {
        "recbole_cmi/properties/overall.yaml",
        "recbole_cmi/properties/dataset/micro_video.yaml",
        "recbole_cmi/dataset/micro_video/micro_video.inter",
        "recbole_cmi/dataset/micro_video/micro_video.item",
    }
    required |= {f"recbole_cmi/properties/model/{p.name}" for p in (REPO_ROOT / "properties" / "model").glob("*.yaml")}
    hyper = REPO_ROOT / "properties" / "hyper"  # the per-model spaces and the benchmark's equal-budget ones
    required |= {f"recbole_cmi/properties/hyper/{p.relative_to(hyper).as_posix()}" for p in hyper.rglob("*.hyper")}
    tuned = REPO_ROOT / "properties" / "tuned"
    required |= {f"recbole_cmi/properties/tuned/{p.relative_to(tuned).as_posix()}" for p in tuned.glob("*/*.yaml")}
    assert not required - names, sorted(required - names)
    assert not [n for n in names if "converted_real_data" in n]


def test_wheel_contains_every_python_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "recbole_cmi").rglob("*.py")
        if (path.parent / "__init__.py").is_file() and "__pycache__" not in path.parts
    }
    missing = sorted(modules - names)
    assert not missing, f"add their packages to setup.cfg [options] packages: {missing}"


def test_wheel_installs_the_front_door_command(wheel, installed, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text and "recbole-cmi = recbole_cmi.__main__:main" in text
    target = installed
    script = target / "bin" / "recbole-cmi"
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([str(script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    verbs = ("run", "tune", "convert", "synthetic", "inspect", "recommend", "robustness", "export", "benchmark")
    assert all(f"\n  {verb} " in run.stdout for verb in verbs), run.stdout


def test_installed_wheel_finds_its_resources_outside_the_checkout(installed, tmp_path):
    target = installed
    code = textwrap.dedent(
        """
        import json
        import recbole_cmi
        from recbole_cmi import paths
        from recbole_cmi.config import Config
        config = Config("SASRec", "micro_video", config_dict={"gpu_id": ""}, read_argv=False)
        print(json.dumps({
            "package": recbole_cmi.__file__,
            "properties": str(paths.properties_dir()),
            "datasets": paths.bundled_datasets(),
            "data_path": config["data_path"],
            "max_len": config["MAX_ITEM_LIST_LENGTH"],
            "stopping_step": config["stopping_step"],
        }))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    package = target / "recbole_cmi"
    assert found["package"] == str(package / "__init__.py")  # not the source checkout
    assert found["properties"] == str(package / "properties")
    assert found["datasets"] == ["micro_video"]
    assert found["data_path"] == str(package / "dataset" / "micro_video")
    overall = yaml.safe_load((REPO_ROOT / "properties" / "overall.yaml").read_text(encoding="utf-8"))
    data_yaml = yaml.safe_load((REPO_ROOT / "properties" / "dataset" / "micro_video.yaml").read_text(encoding="utf-8"))
    # the installed yaml files were applied, the dataset's over the overall defaults
    assert found["stopping_step"] == data_yaml.get("stopping_step", overall["stopping_step"])
    assert found["max_len"] == data_yaml["MAX_ITEM_LIST_LENGTH"]
