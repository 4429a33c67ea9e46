"""Where a measurement ran: the machine and the package versions, as every benchmark report records them.

:func:`describe_environment` is the one description the accuracy, speed, retrieval and GPU reports record and
print: ``{"machine": describe_machine(), "versions": package_versions()}``, the machine (CPU model, usable and
logical CPUs, torch threads, memory, GPU, OS) and the versions (recbole_cmi, RecBole, torch, NumPy, pandas,
Python); :func:`machine_text` and :func:`versions_text` write each in one line.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re

PACKAGES = ("recbole", "torch", "numpy", "pandas")


def describe_environment(gpu: bool = True) -> dict:
    """``{"machine": describe_machine(gpu), "versions": package_versions()}``."""
    return {"machine": describe_machine(gpu), "versions": package_versions()}


def package_versions() -> dict[str, str]:
    """``{"recbole_cmi": ..., "recbole": ..., "torch": ..., "numpy": ..., "pandas": ..., "python": ...}``."""
    import recbole_cmi

    versions = {"recbole_cmi": recbole_cmi.__version__}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def describe_machine(gpu: bool = True) -> dict:
    """The machine: ``cpu`` (model name), ``usable_cpus`` (this process may run on), ``logical_cpus``,
    ``torch_threads``, ``memory`` (total RAM), ``gpu`` (the first CUDA device's name; None without one, or
    when ``gpu`` is false: a run told to stay on the CPU) and ``os``."""
    import torch

    return {
        "cpu": cpu_model(),
        "usable_cpus": usable_cpus(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory": _total_memory(),
        "gpu": torch.cuda.get_device_name(0) if gpu and torch.cuda.is_available() else None,
        "os": f"{platform.system()} {platform.release()}",
    }


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what ``platform`` knows)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), flags=re.M)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _total_memory() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024**2:.0f} GiB"
    return "unknown"


def machine_text(machine: dict) -> str:
    """:func:`describe_machine`'s dict in one line, as the reports print it."""
    gpu = f"GPU: {machine['gpu']}" if machine.get("gpu") else "no GPU"
    return (
        f"{machine['cpu']}, {machine['usable_cpus']} of {machine['logical_cpus']} logical CPUs usable, torch threads "
        f"{machine['torch_threads']}, memory {machine['memory']}; {gpu}; {machine['os']}"
    )


def versions_text(versions: dict) -> str:
    """:func:`package_versions`' dict in one line: ``recbole_cmi 0.1.0, recbole 1.2.1, torch ...``."""
    return ", ".join(f"{name} {version}" for name, version in versions.items())
