"""A search on a real two-node Ray cluster (``run_hyper.py --address``), started and stopped by the test.

Both nodes run on this machine, inside the loopback-only namespace of ``tests/loopback.py``: the head node, and a
worker node in a mount namespace of its own where the driver's output folder is hidden under an empty tmpfs, as
on a second machine without a shared disk. The search must still leave every trial's results and checkpoints in
that folder (they travel through the driver's node, ``recbole_cmi/tune/storage.py``).
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, TINY_SETTINGS
from loopback import report_measured, require_inside, run_inside, short_temp_dir

from recbole_cmi.distributed import find_free_port

pytest.importorskip("ray")

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
OUTER = "tests/tune/test_cluster.py::test_ray_cluster_on_loopback"
EPOCHS = 4


def test_ray_cluster_on_loopback(tmp_path):
    done, seconds = run_inside(["tests/tune/test_cluster.py", "-m", "cluster", "-k", "inside"], tmp_path, timeout=420)
    summary = report_measured(done, seconds, "Ray cluster tests")
    assert done.returncode == 0 and "3 passed" in summary, done.stdout[-8000:] + done.stderr[-4000:]


# ------------------------------------------------------------------------------------------------ inside


class RayCluster:
    """``ray start`` on a head node and a worker node, both on 127.0.0.1, with a token both share."""

    def __init__(self, hidden_from_worker: Path):
        self.temp_dir = short_temp_dir("ray")
        self.port = find_free_port()
        self.address = f"127.0.0.1:{self.port}"
        token = secrets.token_hex(16)
        # Token authentication: the same mode and token in the environment of every node and of the driver.
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
        ray = str(Path(sys.executable).with_name("ray"))
        common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        self._start([ray, "start", "--head", f"--port={self.port}", *common, "--include-dashboard=false",
                     f"--temp-dir={self.temp_dir}"])  # fmt: skip
        # The worker node: its own mount namespace, where the driver's folder is an empty tmpfs.
        worker = " ".join([ray, "start", f"--address={self.address}", *common])
        self._start(["unshare", "--mount", "sh", "-c", f"mount -t tmpfs tmpfs '{hidden_from_worker}' && exec {worker}"])

    def _start(self, command):
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    def node_ids(self) -> set[str]:
        code = "import ray; ray.init(address='%s'); print(' '.join(n['NodeID'] for n in ray.nodes() if n['Alive']))"
        done = subprocess.run(
            [sys.executable, "-c", code % self.address], env=self.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return set(done.stdout.split())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_inside(OUTER)
    driver_disk = tmp_path_factory.mktemp("driver_disk")
    (driver_disk / "marker").write_text("only the driver's machine has this file")
    cluster = RayCluster(hidden_from_worker=driver_disk)
    cluster.driver_disk = driver_disk
    yield cluster
    # The namespace's end kills every server; the folder goes now.
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _raylet_views(folder: Path) -> list[list[str]]:
    """What each raylet of this namespace sees in ``folder`` (through /proc/<pid>/root, its mount namespace)."""
    views = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "raylet":
                    continue
            views.append(sorted(os.listdir(f"/proc/{entry}/root{folder}")))
        except OSError:
            continue
    return views


def _search_files(tmp_path, tiny_data_root) -> tuple[Path, Path]:
    settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), epochs=EPOCHS)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings))
    # Two trials that take different times (a batch of 1 row is ~20 steps for each one of 256 rows), so the
    # driver can be killed when one has finished and the other is half-way.
    hyper = tmp_path / "batch.hyper"
    hyper.write_text("train_batch_size choice [256, 1]\n")
    return config, hyper


def _run_hyper(cluster, *args, **popen):
    command = [sys.executable, str(REPO_ROOT / "run_hyper.py"), *args]
    return subprocess.Popen(command, env=cluster.env, text=True, **popen)


def _results(experiment: Path) -> dict[str, list[dict]]:
    """Each trial's reports as Ray Tune wrote them in the driver's folder (result.json, one line per epoch)."""
    reports = {}
    for trial_dir in sorted(experiment.glob("run_trial_*")):
        path = trial_dir / "result.json"
        lines = path.read_text().splitlines() if path.exists() else []
        reports[trial_dir.name] = [json.loads(line) for line in lines if line.strip()]
    return reports


def _statuses(experiment: Path) -> dict[str, str]:
    """Trial statuses in the experiment state that the driver last saved (what ``--resume`` starts from)."""
    statuses = {}
    for path in experiment.glob("experiment_state-*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced
            continue
        for trial_json, _ in state["trial_data"]:
            trial = json.loads(trial_json)
            statuses[trial["trial_id"]] = trial["status"]
    return statuses


def test_inside_no_cluster_at_the_address_is_one_line_quickly(tmp_path):
    require_inside(OUTER)
    hyper = tmp_path / "p.hyper"
    hyper.write_text("learning_rate choice [0.01]\n")
    address = f"127.0.0.1:{find_free_port()}"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_hyper.py"), f"--address={address}", "--model=SASRec",
         "--dataset=tiny", f"--params_file={hyper}", f"--output={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    seconds = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: no Ray cluster answers at {address}") and "ray start --head" in lines[0]
    assert seconds < 30, seconds  # Python and the imports; the connection itself is refused at once
    assert not (tmp_path / "out").exists()  # nothing written for a search that never started


def test_inside_the_worker_node_cannot_see_the_drivers_folder(cluster):
    views = _raylet_views(cluster.driver_disk)
    assert sorted(views) == [[], ["marker"]], views  # the head node's raylet sees it, the worker node's does not
    assert len(cluster.node_ids()) == 2


def test_inside_search_on_two_nodes_survives_a_killed_driver(cluster, tmp_path, tiny_data_root):
    config, hyper = _search_files(tmp_path, tiny_data_root)
    output = cluster.driver_disk / "search"
    args = [f"--address={cluster.address}", "--model=SASRec", "--dataset=tiny", f"--params_file={hyper}",
            f"--config_files={config}", "--search=grid", "--scheduler=fifo", "--max_concurrent=2", "--verbose=0",
            f"--output={output}"]  # fmt: skip
    log = open(tmp_path / "driver.log", "w")
    started = time.monotonic()
    driver = _run_hyper(cluster, *args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    # Kill the driver (SIGKILL: no chance to save anything) once its saved state shows one trial finished and
    # the other running with at least one epoch reported.
    deadline = time.monotonic() + 300
    before = None
    while time.monotonic() < deadline and driver.poll() is None:
        experiments = list((output / "ray").glob("SASRec-tiny-*"))
        if experiments:
            statuses = _statuses(experiments[0])
            reports = _results(experiments[0])
            finished = [t for t, s in statuses.items() if s == "TERMINATED"]
            running = [t for t, s in statuses.items() if s == "RUNNING"]
            partial = [name for name, r in reports.items() if running and 1 <= len(r) < EPOCHS]
            # The saved state and the result files are written apart: under load the state can say TERMINATED
            # before that trial's last report is on disk, so wait until the files show it too.
            done = [name for name, r in reports.items() if len(r) == EPOCHS]
            if len(finished) == 1 and len(running) == 1 and partial and done:
                os.killpg(driver.pid, signal.SIGKILL)
                before, killed_after = reports, time.monotonic() - started
                break
        time.sleep(0.2)
    if before is None and driver.poll() is None:  # not caught half-way in time (a starved machine): end it
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    log.close()
    assert before is not None, (
        "the search was not caught half-way (it ended, or 300 s passed):\n"
        + (tmp_path / "driver.log").read_text()[-4000:]
    )
    experiment = next((output / "ray").glob("SASRec-tiny-*"))
    done_name = next(name for name, r in before.items() if len(r) == EPOCHS)
    half_name = next(name for name, r in before.items() if 1 <= len(r) < EPOCHS)
    # While both ran, they ran on the two different nodes (two 1-CPU nodes, two concurrent trials).
    assert before[done_name][0]["node_id"] != before[half_name][0]["node_id"]
    assert {before[done_name][0]["node_id"], before[half_name][0]["node_id"]} == cluster.node_ids()

    resumed = _run_hyper(
        cluster, f"--address={cluster.address}", "--resume", f"--output={output}", "--verbose=0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    resume_started = time.monotonic()
    out, err = resumed.communicate(timeout=240)
    resume_seconds = time.monotonic() - resume_started
    assert resumed.returncode == 0, out[-3000:] + err[-3000:]

    after = _results(experiment)
    assert after[done_name] == before[done_name]  # the finished trial was not run again
    continued = after[half_name][len(before[half_name]) :]
    assert continued and continued[0]["epoch"] >= 1  # continued from its checkpoint, not from epoch 0
    assert [r["epoch"] for r in after[half_name]][-1] == EPOCHS - 1

    with open(output / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {row["status"] for row in rows} == {"completed"}
    assert {row["node_id"] for row in rows} <= cluster.node_ids()
    by_trial = {row["trial_id"]: row for row in rows}
    assert by_trial[before[done_name][-1]["trial_id"]]["node_id"] == before[done_name][-1]["node_id"]
    for row in rows:  # every trial's checkpoint reached the driver's folder, whichever node wrote it
        assert Path(row["saved_model_file"]).is_file() and str(output) in row["saved_model_file"]
    best = yaml.safe_load((output / "best_config.yaml").read_text())
    assert best["model"] == "SASRec" and best["train_batch_size"] in (1, 256)
    assert json.loads((output / "best_test_result.json").read_text())["test_result"]
    assert "best trial" in out
    print(
        f"measured: Ray: driver killed {killed_after:.1f} s after its start (one trial done, the other at "
        f"{len(before[half_name])}/{EPOCHS} epochs); --resume finished the search in {resume_seconds:.1f} s"
    )
