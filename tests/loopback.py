"""Run tests that start real servers (a Ray cluster, DDP rendezvous) where only 127.0.0.1 exists.

The outer test (marked ``cluster``) calls :func:`run_inside`: it starts ``python tests/loopback.py <pytest
args>`` under ``unshare`` in new user, network, PID and mount namespaces. In there the only network interface
is the loopback one, which this script brings up before running pytest on the inner tests; so every server
binds, and every node advertises, 127.0.0.1 (Ray on Linux otherwise replaces a loopback ``--node-ip-address``
with the machine's outward address), and nothing can reach or be reached from another machine. The inner
tests call :func:`require_inside` and are skipped in an ordinary run.

Cleanup cannot be forgotten: the script is PID 1 of its namespace, and when it ends (or the outer test kills
it on a timeout) the kernel kills every process left in the namespace. Inside, ``ray stop --force`` only sees
the namespace's own processes, never anyone else's. :func:`run_inside` checks afterwards that no process of
the namespace, and none naming the run's unique tag, is left.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

INSIDE_FLAG = "RECBOLE_CMI_LOOPBACK_NAMESPACE"
TAG_VARIABLE = "RECBOLE_CMI_LOOPBACK_TAG"  # a unique name the inner tests put in their servers' paths
PID_NAMESPACE_FILE = "RECBOLE_CMI_LOOPBACK_PIDNS_FILE"
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]


def inside() -> bool:
    return os.environ.get(INSIDE_FLAG) == "1"


def require_inside(outer: str) -> None:
    """Skip unless run by :func:`run_inside`; there, assert the loopback is the only interface."""
    if not inside():
        pytest.skip(f"starts servers; runs inside the loopback-only namespace that {outer} sets up")
    names = [name for _, name in socket.if_nameindex()]
    assert names == ["lo"], f"expected a network namespace with only the loopback interface, found {names}"


def tag() -> str:
    return os.environ.get(TAG_VARIABLE, "untagged")


def short_temp_dir(kind: str) -> Path:
    """A fresh folder directly under /tmp, named with the run's tag (Ray's socket paths must stay < 108 bytes)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"rcmi-{tag()}-{kind}-", dir="/tmp"))


def namespaces_unavailable() -> str | None:
    """Why the namespaces cannot be made here (no ``unshare``, user namespaces disabled), or None."""
    try:
        done = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unshare is not usable: {err}"
    if done.returncode != 0:
        return f"unshare cannot create user/network/PID namespaces: {done.stderr.strip()}"
    return None


def run_inside(test_ids: list[str], tmp_path: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run pytest on ``test_ids`` in the namespaces; returns the finished process and its wall time.

    Fails the calling test if any process of the namespace, or any naming the run's tag, outlives it.
    """
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    run_tag = uuid.uuid4().hex[:10]
    pidns_file = tmp_path / "pid_namespace"
    env = dict(
        os.environ,
        **{INSIDE_FLAG: "1", TAG_VARIABLE: run_tag, PID_NAMESPACE_FILE: str(pidns_file)},
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])
        ),
    )
    # -s: the inner tests' "measured: ..." lines reach this process, which prints them (see report_measured).
    command = [*UNSHARE, sys.executable, str(Path(__file__).resolve()), "-q", "-s", "-p", "no:cacheprovider", *test_ids]
    start = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:  # subprocess killed unshare; --kill-child ended the namespace
        output = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
        pytest.fail(f"the namespaced tests ran past {timeout:g} s:\n{output[-6000:]}")
    seconds = time.monotonic() - start
    _assert_nothing_left(pidns_file, run_tag)
    return done, seconds


def report_measured(done: subprocess.CompletedProcess, seconds: float, what: str) -> str:
    """Print the inner tests' ``measured:`` lines and the wall time; returns pytest's summary line."""
    lines = done.stdout.strip().splitlines()
    for line in lines:
        if "measured: " in line:  # pytest's progress dots may precede it
            print(line[line.index("measured: ") :])
    summary = lines[-1] if lines else ""
    print(f"measured: {what} in the namespace: {seconds:.1f} s ({summary})")
    return summary


def _assert_nothing_left(pidns_file: Path, run_tag: str, wait: float = 10.0) -> None:
    namespace = pidns_file.read_text().strip() if pidns_file.exists() else None
    deadline = time.monotonic() + wait
    while True:
        left = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                in_namespace = namespace is not None and os.readlink(f"/proc/{entry}/ns/pid") == namespace
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    names_tag = run_tag.encode() in f.read()
            except OSError:  # ended meanwhile
                continue
            if in_namespace or names_tag:
                left.append(int(entry))
        pgrep = subprocess.run(["pgrep", "-f", f"rcmi-{run_tag}"], capture_output=True, text=True)
        if not left and pgrep.returncode == 1:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"processes left behind by the namespaced tests: {left}; pgrep: {pgrep.stdout.split()}")
        time.sleep(0.5)


def bring_up_loopback() -> None:
    """``ip link set lo up`` without needing iproute2 (a new network namespace starts with it down)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, b""))


if __name__ == "__main__":
    if os.getpid() != 1 or not inside():
        sys.exit("tests/loopback.py runs only as PID 1 of the namespace that run_inside() creates")
    bring_up_loopback()
    Path(os.environ[PID_NAMESPACE_FILE]).write_text(os.readlink("/proc/self/ns/pid"))
    sys.exit(pytest.main(sys.argv[1:]))
