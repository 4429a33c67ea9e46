"""Multi-node DDP on the CPU: ``torchrun --nnodes=2`` (two "machines") and the ``--nproc=2`` launcher.

Run in the loopback-only namespace of ``tests/loopback.py`` (gloo and torchrun's rendezvous on 127.0.0.1 only).
Each torchrun "node" has a working folder of its own, as two machines without a shared disk would.
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SETTINGS
from loopback import report_measured, require_inside, run_inside

from recbole_cmi.distributed import find_free_port

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
OUTER = "test_multinode_ddp.py::test_multi_node_ddp_on_loopback"
REPORTED = ("recall@10", "ndcg@10", "hit@10", "mrr@10", "recall@20", "ndcg@20")
# A DDP run and a 1-process run with the same global batch (64 rows) see the rows in other orders (RecBole's
# DistributedSampler shuffles per epoch, and per process), CMI's in-batch negatives are per process, and
# evaluation repeats up to world_size - 1 users to even out the shares: after 2 epochs on 60 users the
# metrics agree to within a few users' worth. 0.1 is six of the 60 test users.
TOLERANCE_VS_ONE_PROCESS = 0.1
# torchrun on two nodes and the launcher's two processes run the same ranks (seed + global rank, the same
# shards): the same numbers, up to float summation order.
TOLERANCE_TORCHRUN_VS_LAUNCHER = 1e-6


def test_multi_node_ddp_on_loopback(tmp_path):
    done, seconds = run_inside(["tests/test_multinode_ddp.py", "-m", "cluster", "-k", "inside"], tmp_path, timeout=420)
    summary = report_measured(done, seconds, "multi-node DDP tests")
    assert done.returncode == 0 and "4 passed" in summary, done.stdout[-8000:] + done.stderr[-4000:]


# ------------------------------------------------------------------------------------------------ inside


def _env():
    # gloo picks its interface from the host name otherwise; there is only lo here. The namespace has no name
    # resolution, so c10d's C++ side warns on every connection that it cannot name 127.0.0.1: only errors.
    # PYTHONFAULTHANDLER: a process that hangs prints its Python stacks when _finish sends it SIGABRT.
    return dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR",
                PYTHONFAULTHANDLER="1")  # fmt: skip


def _config_file(folder: Path, data_root: Path, **overrides) -> Path:
    # checkpoint_dir relative: each node writes (or not) in its own working folder.
    settings = dict(TINY_SETTINGS, data_path=str(data_root), epochs=2, checkpoint_dir="saved")
    settings.update(overrides)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _module_args(model, config) -> list[str]:
    return ["-m", "recbole_cmi", "run", f"--model={model}", "--dataset=tiny", f"--config_files={config}"]


def _torchrun(node: Path, port: int, run_id: str, args: list[str], **popen) -> subprocess.Popen:
    node.mkdir()
    command = [str(Path(sys.executable).with_name("torchrun")), "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={run_id}",
               "--local_addr=127.0.0.1", "--monitor_interval=0.5", f"--log_dir={node / 'torchrun'}",
               "--redirects=3", "--tee=3", *args]  # fmt: skip
    return subprocess.Popen(command, cwd=node, env=_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)  # fmt: skip


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _finish(processes: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    """Wait for all of ``processes`` within one ``timeout``; on a hang, fail with every process's stacks and output.

    The hung processes and their children (torchrun's workers) get SIGABRT first, which makes Python's
    faulthandler print where each thread was, so a hang in CI says where it happened.
    """
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(deadline - time.monotonic(), 0.1)))
        return outputs
    except subprocess.TimeoutExpired:
        for process in processes:
            for pid in [*_descendants(process.pid), process.pid]:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGABRT)
        time.sleep(2)
        report = []
        for i, process in enumerate(processes):
            process.kill()
            out, err = process.communicate()
            report.append(
                f"--- process {i} ({process.args[-4:]}), exit {process.returncode}\n{out[-3000:]}\n{err[-6000:]}"
            )
        pytest.fail(f"hung for {timeout:.0f} s; stacks and output follow\n" + "\n".join(report))


def _printed(stdout: str, label: str) -> dict:
    # torchrun's --tee prefixes each line with the process ("[default0]:").
    line = next(line for line in stdout.splitlines() if f"{label}: " in line)
    return ast.literal_eval(line.split(f"{label}: ", 1)[1])


def _files_written(node: Path) -> list[str]:
    return sorted(
        str(p.relative_to(node)) for p in node.rglob("*") if p.is_file() and "torchrun" not in p.relative_to(node).parts
    )


@pytest.mark.parametrize("model", ["CMI", "SASRec"])
def test_inside_two_nodes_train_like_two_local_processes_and_one_process(model, tmp_path, tiny_data_root):
    require_inside(OUTER)
    from recbole_cmi.quick_start import run_recbole_cmi

    config = _config_file(tmp_path, tiny_data_root)
    one = run_recbole_cmi(config_file_list=[str(config)], config_dict={"model": model, "dataset": "tiny",
                          "checkpoint_dir": str(tmp_path / "one")})  # fmt: skip

    launcher_dir = tmp_path / "launcher"
    launcher_dir.mkdir()
    launcher = subprocess.run([sys.executable, *_module_args(model, config), "--nproc=2"], cwd=launcher_dir,
                              env=_env(), capture_output=True, text=True, timeout=180)  # fmt: skip
    assert launcher.returncode == 0, launcher.stderr[-3000:]

    port, run_id = find_free_port(), uuid.uuid4().hex[:8]
    nodes = [_torchrun(tmp_path / f"node{i}", port, run_id, _module_args(model, config)) for i in range(2)]
    outputs = _finish(nodes, timeout=180)
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, out[-2000:] + err[-3000:]

    # Global rank 0 alone prints the result and writes files: its node has the checkpoint(s) and the log, the
    # other node's working folder stays empty (it may be a machine without access to rank 0's disk).
    printed = [i for i, (out, _) in enumerate(outputs) if "test result: " in out]
    assert len(printed) == 1, outputs
    rank0, rank1 = printed[0], 1 - printed[0]
    written = _files_written(tmp_path / f"node{rank0}")
    assert any(f.startswith("saved/") and f.endswith(".pth") for f in written), written
    assert any(f.startswith(f"log/{model}/") for f in written) and any(
        f.startswith("log_tensorboard/") for f in written
    )
    assert _files_written(tmp_path / f"node{rank1}") == []

    torchrun_test = _printed(outputs[rank0][0], "test result")
    launcher_test = _printed(launcher.stdout, "test result")
    for name in REPORTED:
        assert abs(torchrun_test[name] - launcher_test[name]) <= TOLERANCE_TORCHRUN_VS_LAUNCHER, name
        assert abs(torchrun_test[name] - one["test_result"][name]) <= TOLERANCE_VS_ONE_PROCESS, (
            name,
            torchrun_test[name],
            one["test_result"][name],
        )
    print(f"measured: {model} test ndcg@20: one process {one['test_result']['ndcg@20']:.4f}, launcher "
          f"{launcher_test['ndcg@20']:.4f}, torchrun {torchrun_test['ndcg@20']:.4f}")  # fmt: skip


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_for_checkpoint(folder: Path, processes, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(folder.glob("*/saved/*.pth")) + list(folder.glob("saved/*.pth")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "training never started"
        time.sleep(0.2)


def test_inside_a_killed_rank_ends_the_launcher_with_one_line(tmp_path, tiny_data_root):
    require_inside(OUTER)
    config = _config_file(tmp_path, tiny_data_root, epochs=500)
    launcher = subprocess.Popen([sys.executable, *_module_args("SASRec", config), "--nproc=2"], cwd=tmp_path,
                                env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    _wait_for_checkpoint(tmp_path, [launcher])
    workers = [pid for pid in _children(launcher.pid) if "resource_tracker" not in _cmdline(pid)]
    assert len(workers) == 2, [_cmdline(pid) for pid in workers]
    start = time.monotonic()
    os.kill(workers[1], signal.SIGKILL)
    out, err = launcher.communicate(timeout=60)
    seconds = time.monotonic() - start
    lines = err.strip().splitlines()
    assert launcher.returncode == 2 and len(lines) == 1, err
    # Whichever the launcher notices first: the killed rank, or the survivor failing on the closed connection.
    assert lines[0].startswith("error: DDP rank ") and "the other processes were stopped" in lines[0], lines
    assert seconds < 30, seconds
    print(f"measured: launcher: ended {seconds:.1f} s after the kill with {lines[0]!r}")


def test_inside_a_killed_rank_ends_both_torchrun_nodes(tmp_path, tiny_data_root):
    require_inside(OUTER)
    config = _config_file(tmp_path, tiny_data_root, epochs=500)
    port, run_id = find_free_port(), uuid.uuid4().hex[:8]
    nodes = [_torchrun(tmp_path / f"node{i}", port, run_id, _module_args("SASRec", config)) for i in range(2)]
    _wait_for_checkpoint(tmp_path, nodes)
    rank0 = next(i for i in range(2) if list((tmp_path / f"node{i}" / "saved").glob("*.pth")))
    victim = next(pid for pid in _children(nodes[1 - rank0].pid) if "recbole_cmi" in _cmdline(pid))
    start = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    _finish(nodes, timeout=90)  # no hang: both torchrun agents end, with a failure
    assert all(node.returncode != 0 for node in nodes)
    seconds = time.monotonic() - start
    assert seconds < 60, seconds
    # The surviving worker's own output (torchrun keeps it apart under --log_dir): one line at most, ours.
    survivor_err = [p for p in (tmp_path / f"node{rank0}" / "torchrun").rglob("stderr.log")]
    assert len(survivor_err) == 1
    lines = survivor_err[0].read_text().strip().splitlines()
    assert len(lines) <= 1 and all(line.startswith("error: ") for line in lines), lines
    print(f"measured: torchrun: both nodes ended {seconds:.1f} s after the kill; the surviving worker said {lines}")
