"""Run a model end to end, as RecBole's ``quick_start`` does: ``run_recbole_cmi`` (train, validate, test), its
multi-process launcher ``run_distributed`` (RecBole's ``run(..., nproc)``; :mod:`recbole_cmi.distributed` for how
DDP works here), ``objective_function`` (RecBole's tuning objective) and ``load_data_and_model``.

Every run builds its pieces with :func:`recbole_cmi.pipeline.build_pipeline` (RecBole's order and seeding, our
models and Trainer); nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import tempfile
from logging import getLogger

import torch.distributed as dist

from recbole_cmi.distributed import end_ddp_process
from recbole_cmi.errors import CheckpointError, ConfigValueError, RecboleCmiError
from recbole_cmi.files import atomic_open
from recbole_cmi.paths import describe_unreadable
from recbole_cmi.pipeline import build_pipeline, restore_pipeline


def run_recbole_cmi(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    read_argv=False,
    callback_fn=None,
    resume=None,
    evaluate_test=True,
    trust_checkpoint=False,
):
    """Train ``model`` on ``dataset``, evaluate the best checkpoint on the test set.

    ``resume`` continues a run from one of its checkpoints (see ``recbole_cmi.trainer``): the
    ``-last.pth`` file, or the best-model file, whose ``-last`` sibling is then used if newer.
    ``epochs`` is the total, not the number of further epochs. A ``resume`` file that pickles
    Python objects (RecBole's, or ours before 0.2) is read only with ``trust_checkpoint=True``
    (see :mod:`recbole_cmi.checkpoint`).

    ``callback_fn(epoch_idx, valid_score)`` runs after every validation (Ray Tune reports
    through it); ``evaluate_test=False`` skips the test set (searches test only their best
    trial, with :func:`recbole_cmi.pipeline.evaluate_checkpoint`).

    Returns a dict with ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result`` (None when not evaluated), ``saved_model_file`` (None when ``saved`` is
    False) and ``config``.
    """
    from recbole.utils import set_color

    problem = describe_unreadable(resume, "checkpoint file") if resume else None
    if problem:
        raise CheckpointError(problem)
    pipeline = build_pipeline(model, dataset, config_file_list, config_dict, read_argv=read_argv)
    config, trainer = pipeline.config, pipeline.trainer
    train_data, valid_data, test_data = pipeline.loaders
    if resume:
        trainer.resume_checkpoint(resume, trust=trust_checkpoint)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"], callback_fn=callback_fn
    )
    test_result = (
        trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
        if evaluate_test
        else None
    )
    trainer.tensorboard.close()  # RecBole never closes it: its last events would wait for the writer's thread
    logger = getLogger()
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
        "config": config,
    }


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """RecBole's tuning objective (``HyperTuning``), for our models and core ones."""
    result = run_recbole_cmi(config_dict=config_dict, config_file_list=config_file_list, saved=saved)
    result["model"] = result["config"]["model"]
    del result["config"], result["saved_model_file"]
    return result


def load_data_and_model(model_file, trust=False, data_path=None):
    """``(config, model, dataset, train, valid, test)`` of a checkpoint: :func:`restore_pipeline`."""
    pipeline = restore_pipeline(model_file, trust=trust, data_path=data_path)
    return pipeline.config, pipeline.model, pipeline.dataset, *pipeline.loaders


# ------------------------------------------------------------------------------------ several processes
# RecBole keeps its multi-process launcher, run(..., nproc), in quick_start too; the process-group helpers the
# config and the trainer use are in recbole_cmi.distributed (below this module). python -m recbole_cmi run
# --nproc=N starts it; under torchrun the same command runs the one process torchrun started.
def run_distributed(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    nproc: int = 2,
    world_size: int = -1,
    ip: str = "127.0.0.1",
    port: int | None = None,
    group_offset: int = 0,
    saved: bool = True,
    read_argv: bool = False,
    resume=None,
    evaluate_test: bool = True,
):
    """Train and test with ``nproc`` DDP processes on this machine; global rank 0's result (else None).

    Arguments as :func:`recbole_cmi.quick_start.run_recbole_cmi`, plus RecBole's ``nproc``,
    ``world_size`` (all processes of the run; -1: ``nproc``), ``ip``/``port`` of rank 0's machine (port
    None: a free one, single machine only) and ``group_offset`` (global rank of this machine's first
    process). With ``read_argv`` the workers read ``--key=value`` pairs from ``sys.argv`` as the runner does.
    The returned dict is ``run_recbole_cmi``'s.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    from recbole_cmi.distributed import find_free_port

    nproc = int(nproc)
    if nproc < 1:
        raise ConfigValueError(f"nproc must be >= 1, got {nproc}")
    world_size = nproc if world_size in (None, -1) else int(world_size)
    if world_size < nproc + group_offset:
        raise ConfigValueError(f"world_size={world_size} is smaller than nproc + group_offset = {nproc + group_offset}")
    if port is None:
        if world_size != nproc:
            raise ConfigValueError("a run over several machines needs an explicit port (the same on all of them)")
        port = find_free_port(ip)
    settings = dict(config_dict or {})
    settings.update(world_size=world_size, ip=ip, port=int(port), nproc=nproc, offset=int(group_offset))
    # On a failure spawn logs "Terminating process ... via signal SIGTERM" for each survivor; our error says so.
    spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
    with tempfile.TemporaryDirectory(prefix="recbole_cmi_ddp_") as tmp, _level(spawn_logger, logging.ERROR):
        try:
            mp.spawn(
                _worker,
                args=(model, dataset, config_file_list, settings, saved, read_argv, resume, evaluate_test, tmp),
                nprocs=nproc,
                join=True,
            )
        except ProcessException as err:  # one process failed: spawn has stopped the others
            user_error = _user_error(tmp)
            if user_error is not None:
                raise user_error from err
            raise RecboleCmiError(_process_failure(err, group_offset)) from err
        result_file = os.path.join(tmp, "result.pkl")
        if not os.path.isfile(result_file):
            return None
        with open(result_file, "rb") as f:
            return pickle.load(f)


def _worker(local_rank, model, dataset, config_file_list, settings, saved, read_argv, resume, evaluate_test, tmp):
    from recbole_cmi.cli import quiet_recbole_warnings

    if not os.environ.get("RECBOLE_CMI_TRACEBACK"):
        quiet_recbole_warnings()  # a spawned process starts with Python's default filters, not the parent's

    settings = dict(settings, local_rank=local_rank)
    try:
        result = run_recbole_cmi(
            model,
            dataset,
            config_file_list,
            settings,
            saved=saved,
            read_argv=read_argv,
            resume=resume,
            evaluate_test=evaluate_test,
        )
        if local_rank + settings["offset"] == 0:
            _write_atomically(os.path.join(tmp, "result.pkl"), result)
    except RecboleCmiError as err:  # reported by the parent as the same one-line error
        _write_atomically(os.path.join(tmp, f"error-{local_rank}.pkl"), err)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    end_ddp_process(0)  # not spawn's ordinary exit: see end_ddp_process


@contextlib.contextmanager
def _level(logger, level):
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _process_failure(err, group_offset: int) -> str:
    """One line for a DDP process that died (a signal, ``exit``) or raised something other than our errors."""
    rank = err.error_index + group_offset
    signal_name = getattr(err, "signal_name", None)
    if signal_name:
        return f"DDP rank {rank} was killed by {signal_name}; the other processes were stopped"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = lines[-1] if lines and "Traceback" in str(err) else f"exit code {getattr(err, 'exit_code', '?')}"
    return f"DDP rank {rank} failed: {cause}; the other processes were stopped"


def _write_atomically(path: str, value) -> None:
    with atomic_open(path, "wb") as f:
        pickle.dump(value, f)


def _user_error(tmp: str):
    for name in sorted(os.listdir(tmp)):
        if name.startswith("error-") and name.endswith(".pkl"):
            with open(os.path.join(tmp, name), "rb") as f:
                return pickle.load(f)
    return None


def run_torchrun_process(model=None, dataset=None, config_file_list=None, config_dict=None, read_argv=False):
    """Train and test as the one process torchrun started here; global rank 0's result (else None)."""
    from recbole_cmi.distributed import torchrun_settings

    settings = dict(config_dict or {}, **torchrun_settings())
    try:
        result = run_recbole_cmi(model, dataset, config_file_list, settings, read_argv=read_argv)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return result if settings["local_rank"] + settings["offset"] == 0 else None
