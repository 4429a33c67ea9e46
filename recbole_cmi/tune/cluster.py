"""Where a search's trials run: a local Ray instance, or a Ray cluster started with ``ray start`` (see
:mod:`recbole_cmi.tune.search`); a wrong address fails in one line within ``CONNECT_TIMEOUT_S``, and a resource
request no node can meet fails before any trial waits for it.
"""

from __future__ import annotations

import contextlib
import os
import sys

from recbole_cmi.errors import ConfigValueError, RecboleCmiError
from recbole_cmi.machine import usable_cpus

CONNECT_TIMEOUT_S = 10.0


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray; reuse one already running.

    Yields True when connected to a cluster started with ``ray start`` (trials may run on other nodes).
    """
    import logging

    import ray

    if ray.is_initialized():
        yield bool(address or os.environ.get("RAY_ADDRESS"))
        return
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(
                num_cpus=num_cpus or usable_cpus(),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
    except ConnectionError as err:
        raise RecboleCmiError(f"cannot connect to the Ray cluster at '{address}': {_first_line(err)}") from err
    except ray.exceptions.AuthenticationError as err:
        raise RecboleCmiError(
            f"the Ray cluster at '{address}' refused this process's token: set RAY_AUTH_MODE=token and the "
            "cluster's RAY_AUTH_TOKEN (or its ~/.ray/auth_token) here, as on every node"
        ) from err
    try:
        yield address not in (None, "", "local")
    finally:
        ray.shutdown()


def check_cluster_answers(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in one line, within ``timeout`` seconds, when nothing listens at ``HOST:PORT``.

    Ray itself retries an unreachable address for minutes before it gives up.
    """
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        raise ConfigValueError(f"--address must be auto or HOST:PORT (the head node's GCS port), got '{address}'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise RecboleCmiError(
            f"no Ray cluster answers at {address} ({reason}; connect timeout {timeout:g} s): start one with "
            f"`ray start --head --port={port}` on {host}, or check --address"
        ) from err


def _first_line(err) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def check_resources(cpus_per_trial: float, gpus_per_trial: float | None, address: str | None) -> float:
    """Per-trial GPUs (``gpus_per_trial`` None: 1 if the cluster has GPUs, else 0); a request no node can meet is
    an error locally (Ray would wait forever), a warning on a cluster (``address``, or ``RAY_ADDRESS``)."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if gpus >= 1 else 0.0
    problems = []
    if cpus_per_trial > cpus:
        problems.append(f"--cpus_per_trial={cpus_per_trial:g} but the cluster has {cpus:g} CPUs")
    if gpus_per_trial > gpus:
        problems.append(f"--gpus_per_trial={gpus_per_trial:g} but the cluster has {gpus:g} GPUs")
    if problems:
        message = "; ".join(problems)
        if not (address or os.environ.get("RAY_ADDRESS")):
            raise ConfigValueError(f"{message} (local Ray)")
        print(f"warning: {message}; trials wait until the cluster grows", file=sys.stderr)
    return gpus_per_trial
