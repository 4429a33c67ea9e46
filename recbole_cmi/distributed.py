"""Multi-process (DDP) training for our runner: gloo on CPU, nccl on GPU; the process-group helpers.

The launcher, :func:`recbole_cmi.quick_start.run_distributed`, is RecBole's ``run(..., nproc=N)`` for
:func:`recbole_cmi.quick_start.run_recbole_cmi` (it lives in ``quick_start``, above this module, as RecBole's does):
it spawns ``nproc`` processes (``torch.multiprocessing``, start method ``spawn``), each running the whole
pipeline with RecBole's distributed keys in its config — ``local_rank`` (0..nproc-1), ``world_size``, ``ip``,
``port``, ``nproc``, ``offset`` (the global rank of this machine's first process) — and returns the result of
global rank 0 (the others return nothing)::

    from recbole_cmi.quick_start import run_distributed
    result = run_distributed("CMI", "micro_video", config_dict={"gpu_id": ""}, nproc=2)

    python -m recbole_cmi run --nproc=2 --model=CMI --dataset=micro_video --gpu_id=""

Several machines: run it on each with the same ``world_size`` (all processes), ``ip``/``port`` of the machine
of rank 0, and ``group_offset`` = the number of processes on the machines before it; or let ``torchrun`` start
the processes (:func:`torchrun_settings`), the same command on every machine::

    torchrun --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d --rdzv_endpoint=<first machine>:29400 \\
        -m recbole_cmi run --model=CMI --dataset=micro_video --gpu_id=""

Only global rank 0 (``local_rank + offset``) writes files (checkpoints, log file, tensorboard events) and logs
more than errors; the others may be on machines that share no disk with it, so the best model is sent to
them over the process group for the test, not read from rank 0's file.

What differs from RecBole, and why:

* Device set-up (``Config._init_device``): RecBole's distributed branch hard-codes the ``nccl`` backend and
  ``cuda:<local_rank>``. When no GPU is used (``gpu_id`` empty, or CUDA unavailable) we initialise the
  process group with ``gloo`` and keep the model on the CPU (:func:`init_cpu_distributed`); with GPUs
  RecBole's own nccl set-up runs unchanged (it needs one ``gpu_id`` per process).
* ``DistributedDataParallel`` gets ``device_ids`` only for a CUDA model (:class:`DeviceAwareDDP`; RecBole
  passes ``[local_rank]``, which DDP rejects for a CPU module).
* The best-checkpoint file name is rank 0's on every rank (RecBole names it after each process's clock),
  and ranks wait for rank 0 to finish writing it before loading it for the test (``recbole_cmi.trainer``).
* ``restore_pipeline`` (``load_data_and_model``, ``evaluate_checkpoint``) uses a distributed run's checkpoint in one process
  (RecBole's would wait for a process group that does not exist, RecBole #2063).

Semantics (what a DDP run optimises). Every process draws ``train_batch_size / world_size`` rows
(RecBole's ``DistributedSampler``), runs our train-batch hooks on them and computes its loss on them alone;
DDP averages the gradients. So the gradient is that of the *mean of the per-process losses*, and every
batch-level construction is per process: CMI's sampled softmax uses the negatives of the local rows only
(``B / world_size`` candidates instead of ``B``), and its InfoNCE (and CL4SRec's NT-Xent) contrasts each
interest with the local batch's, not the global batch's. This is the expected behaviour (no negatives are
gathered across processes); a run with N processes is comparable to a single-process run with the same
*per-process* batch size, accumulated over N batches. ``tests/test_distributed.py`` checks it exactly: the
DDP gradient equals the single-process gradient of the mean of the per-half losses, and differs from the
gradient of the loss over the whole batch. Evaluation is split over the processes too and RecBole averages
the metrics (its ``DistributedSampler`` pads the last users by repeating up to ``world_size - 1`` of them).
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import NoReturn

import torch
import torch.distributed as dist
from recbole.trainer import AbstractTrainer
from torch.nn.parallel import DistributedDataParallel

from recbole_cmi.errors import ConfigValueError

__all__ = [
    "DeviceAwareDDP",
    "barrier",
    "find_free_port",
    "global_rank",
    "init_cpu_distributed",
    "is_distributed",
    "is_main_rank",
    "same_on_all_ranks",
    "torchrun_settings",
    "uses_cpu_distributed",
]


# ------------------------------------------------------------------------------------ device set-up
def _gpu_id(cfg: dict) -> str:
    gpu_id = cfg.get("gpu_id", "")
    if isinstance(gpu_id, (tuple, list)):
        return ",".join(map(str, gpu_id))
    return "" if gpu_id is None else str(gpu_id)


def uses_cpu_distributed(cfg: dict) -> bool:
    """A distributed run (``local_rank`` set) that uses no GPU: empty ``gpu_id`` or no CUDA."""
    return "local_rank" in cfg and (_gpu_id(cfg) == "" or not torch.cuda.is_available())


def init_cpu_distributed(cfg: dict) -> None:
    """``Config._init_device`` for a distributed CPU run: a gloo process group, the CPU device.

    Mirrors RecBole's distributed branch (rank = ``local_rank + offset``, ``tcp://ip:port`` rendezvous,
    ranks other than 0 log errors only) with ``gloo`` for ``nccl`` and no CUDA calls. Joins an existing
    process group instead of creating a second one.
    """
    missing = [key for key in ("world_size", "ip", "port") if cfg.get(key) in (None, "")]
    if missing:
        raise ConfigValueError(
            f"a distributed run (local_rank={cfg['local_rank']}) needs {', '.join(missing)} in its config: "
            "start it with recbole_cmi.quick_start.run_distributed"
        )
    gpu_id = _gpu_id(cfg)
    cfg["gpu_id"] = gpu_id
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id  # as RecBole does
    cfg.setdefault("offset", 0)
    cfg["offset"] = cfg["offset"] or 0
    if not dist.is_initialized():
        dist.init_process_group(
            backend="gloo",
            rank=int(cfg["local_rank"]) + int(cfg["offset"]),
            world_size=int(cfg["world_size"]),
            init_method=f"tcp://{cfg['ip']}:{cfg['port']}",
        )
    cfg["device"] = torch.device("cpu")
    cfg["single_spec"] = False
    quiet_other_ranks(cfg)


def global_rank(cfg) -> int:
    """This process's rank among all processes of the run: ``local_rank + offset`` (0 when not distributed).

    RecBole tests ``local_rank`` alone, which is 0 on the first process of *every* machine of a multi-node run.
    """
    return sum(int((cfg[key] if key in cfg else 0) or 0) for key in ("local_rank", "offset"))


def is_main_rank(cfg) -> bool:
    """True in a single-process run and in global rank 0 of a DDP run: the one process that writes files."""
    return global_rank(cfg) == 0


def quiet_other_ranks(cfg) -> None:
    """Ranks other than global rank 0 log errors only and show no progress bars (as RecBole does for its local ones)."""
    if not is_main_rank(cfg):
        cfg["state"] = "error"
        cfg["show_progress"] = False
        cfg["verbose"] = False


def is_distributed(config) -> bool:
    """True in a process of a DDP run (RecBole's ``single_spec`` is False)."""
    return config["single_spec"] is False and dist.is_available() and dist.is_initialized()


class DeviceAwareDDP(AbstractTrainer):
    """RecBole's ``AbstractTrainer.__init__`` with ``device_ids`` passed to DDP only for a CUDA model.

    Placed after RecBole's ``Trainer`` in our trainers' bases, so that RecBole's ``Trainer.__init__``
    reaches this instead of ``AbstractTrainer.__init__``. SyncBatchNorm (CUDA only) is used on GPUs alone.
    """

    def __init__(self, config, model):
        self.config = config
        self.model = model
        if not config["single_spec"]:
            if config["device"].type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.distributed_model = DistributedDataParallel(self.model, device_ids=[config["local_rank"]])
            else:
                self.distributed_model = DistributedDataParallel(self.model)


def same_on_all_ranks(value, config):
    """Rank 0's ``value`` in every process of a DDP run (``value`` itself otherwise)."""
    if not is_distributed(config):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(config) -> None:
    """Wait for every process of a DDP run (nothing otherwise)."""
    if is_distributed(config):
        dist.barrier()


# ------------------------------------------------------------------------------------ launching
def end_ddp_process(code: int) -> NoReturn:
    """End a DDP process whose work is done (process group destroyed, results written) with exit code ``code``.

    The interpreter's finalisation is skipped (``os._exit`` after flushing the standard streams and the log
    handlers): in about one two-node torchrun run in twenty on torch 2.13 a worker that had finished cleanly
    aborted while the interpreter shut down ("terminate called without an active exception", SIGABRT, with
    no Python frame left). torchrun then counts the node as failed, and the other node's agent waits out its
    300 s exit barrier for it. Nothing is left to finalise here: rank 0's result is printed or written, and
    its checkpoints and log file are closed.
    """
    import logging
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def find_free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``ip`` a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ torchrun
def torchrun_settings(environ=None) -> dict | None:
    """RecBole's distributed keys from the environment torchrun gives each process (None outside torchrun).

    torchrun numbers the processes of a node contiguously, so ``offset`` (global rank of the node's first
    process) is ``RANK - LOCAL_RANK``; ``MASTER_ADDR:MASTER_PORT`` is the store of torchrun's rendezvous, which
    ``tcp://`` initialisation joins as a client under torchrun (``TORCHELASTIC_USE_AGENT_STORE``).
    """
    environ = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" not in environ:
        return None
    rank, local_rank = int(environ["RANK"]), int(environ["LOCAL_RANK"])
    return {
        "local_rank": local_rank,
        "offset": rank - local_rank,
        "world_size": int(environ["WORLD_SIZE"]),
        "nproc": int(environ["LOCAL_WORLD_SIZE"]),
        "ip": environ["MASTER_ADDR"],
        "port": int(environ["MASTER_PORT"]),
    }


if __name__ == "__main__":  # the launcher's command line moved to the front door (quick_start holds the launcher)
    import sys

    print(
        "error: python -m recbole_cmi.distributed is now python -m recbole_cmi run --nproc=N (torchrun: "
        "torchrun [...] -m recbole_cmi run ...)",
        file=sys.stderr,
    )
    sys.exit(2)
