"""Run a model end to end: ``run_recbole_cmi`` (train, validate, test), its multi-process launcher
``run_distributed`` (RecBole's ``run(..., nproc)``; :mod:`recbole_cmi.distributed` for how DDP works here) and
helpers.

Mirrors ``recbole.quick_start.run_recbole`` (same seeding order, same FLOPs pass, so a core
model gives the same numbers through either) but resolves our models, uses our Trainer, and
never imports Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
import tempfile
from logging import getLogger

import torch.distributed as dist

from recbole_cmi.checkpoint import check_id_mapping, load_checkpoint
from recbole_cmi.compat import disable_anomaly_mode
from recbole_cmi.config import Config
from recbole_cmi.errors import CheckpointError, ConfigValueError, DatasetError, RecboleCmiError
from recbole_cmi.files import atomic_open
from recbole_cmi.paths import describe_unreadable


def create_dataset(config):
    """Validate the atomic files, then build RecBole's dataset for ``config``."""
    from recbole.data import create_dataset as recbole_create_dataset

    from recbole_cmi.data.atomic import validate_atomic_files

    summary = validate_atomic_files(config)
    check_sequence_memory(config, summary)
    try:
        dataset = recbole_create_dataset(config)
    except ValueError as err:
        if "Some feat is empty" not in str(err):
            raise
        raise DatasetError(_nothing_left(config, summary)) from err
    if dataset.inter_num == 0:
        raise DatasetError(_nothing_left(config, summary))
    return dataset


def sequence_table_bytes(config, summary) -> int:
    """What RecBole's sequential dataset allocates for its history tables: one ``[prefixes, L]``
    int64/float64 table per loaded interaction column but the user id (``data_augmentation``)."""
    length = config["MAX_ITEM_LIST_LENGTH"]
    return sum((s["rows"] - s["users"]) * length * 8 * max(1, s.get("columns", 2) - 1) for s in summary.values())


def check_sequence_memory(config, summary) -> None:
    """Refuse a ``MAX_ITEM_LIST_LENGTH`` whose tables would not fit in half the free memory, before RecBole tries."""
    import psutil
    from recbole.utils import ModelType

    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL or not summary:
        return
    needed, available = sequence_table_bytes(config, summary), psutil.virtual_memory().available
    if needed > available / 2:
        longest = max(s["max_user_rows"] for s in summary.values())
        raise ConfigValueError(
            f"MAX_ITEM_LIST_LENGTH={config['MAX_ITEM_LIST_LENGTH']} makes RecBole's history tables of dataset "
            f"'{config['dataset']}' take about {needed / 2**30:.1f} GiB, more than half of the "
            f"{available / 2**30:.1f} GiB of free memory; the longest user history has {longest} items, so a "
            f"length above {longest} only adds padding: lower MAX_ITEM_LIST_LENGTH"
        )


def _nothing_left(config, summary) -> str:
    files = "; ".join(
        f"{path}: {s['rows']} rows, {s['users']} users, at most {s['max_user_rows']} per user"
        for path, s in (summary or {}).items()
    )
    return (
        f"dataset '{config['dataset']}' has no interactions left after filtering "
        f"(user_inter_num_interval={config['user_inter_num_interval']}, "
        f"item_inter_num_interval={config['item_inter_num_interval']}, val_interval={config['val_interval']})"
        + (f"; before filtering {files}" if files else "")
    )


def _log_to_files(level, message):
    """Write to the log file(s) only: the console already got the message on stderr."""
    logger = getLogger()
    record = logger.makeRecord(logger.name, level, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _reset_logging():
    # RecBole's init_logger uses logging.basicConfig, which is a no-op once handlers exist.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def prepare(model=None, dataset=None, config_file_list=None, config_dict=None, read_argv=False):
    """Config, dataset, loaders and an initialised model, seeded as RecBole does."""
    from recbole.data.transform import construct_transform
    from recbole.utils import get_flops, init_logger, init_seed, set_color

    from recbole_cmi.data.dataloader import data_preparation
    from recbole_cmi.distributed import global_rank, is_main_rank
    from recbole_cmi.utils import get_model, train_batch_hooks

    config = Config(model, dataset, config_file_list, config_dict, read_argv=read_argv)
    init_seed(config["seed"], config["reproducibility"])
    _reset_logging()
    if is_main_rank(config):
        init_logger(config)
    else:  # a DDP rank other than 0: errors on the console, no log file (RecBole's init_logger writes one)
        logging.basicConfig(level=logging.ERROR, handlers=[logging.StreamHandler()])
    logger = getLogger()
    logger.info(sys.argv)
    for warning in getattr(config, "config_warnings", []):
        _log_to_files(logging.WARNING, warning)
    logger.info(config)
    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data, train_batch_hooks(config["model"]))
    # RecBole adds local_rank, the same on every machine of a multi-node run; the global rank keeps ranks apart.
    init_seed(config["seed"] + global_rank(config), config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    disable_anomaly_mode()
    logger.info(net)
    flops = get_flops(net, data, config["device"], logger, construct_transform(config))
    logger.info(set_color("FLOPs", "blue") + f": {flops}")
    return config, data, (train_data, valid_data, test_data), net


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
    trial, with :func:`evaluate_checkpoint`).

    Returns a dict with ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result`` (None when not evaluated), ``saved_model_file`` (None when ``saved`` is
    False) and ``config``.
    """
    from recbole.utils import set_color

    from recbole_cmi.trainer import get_trainer

    problem = describe_unreadable(resume, "checkpoint file") if resume else None
    if problem:
        raise CheckpointError(problem)
    config, _, (train_data, valid_data, test_data), net = prepare(
        model, dataset, config_file_list, config_dict, read_argv
    )
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
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


def load_data_and_model(model_file, trust=False):
    """Rebuild config, dataset, loaders and the trained model from one of our checkpoints.

    Loads on the CPU whatever device trained the model. The file is read without running code in
    it; a pickled (old or foreign) checkpoint needs ``trust=True`` (:mod:`recbole_cmi.checkpoint`).
    Data whose user/item id mapping differs from the training data's is refused.
    """
    from recbole.utils import init_seed

    from recbole_cmi.data.dataloader import data_preparation
    from recbole_cmi.utils import get_model, train_batch_hooks

    checkpoint = load_checkpoint(model_file, map_location="cpu", trust=trust)
    config = checkpoint.get("config")
    if not hasattr(config, "final_config_dict"):
        raise CheckpointError(f"checkpoint {model_file} holds no RecBole config, so its data cannot be rebuilt")
    config["device"] = __import__("torch").device("cpu")
    config["gpu_id"] = ""
    # A checkpoint of a distributed run is used in this one process (RecBole #2063: its loaders and
    # trainer would wait for a process group; recbole_cmi.distributed).
    config["single_spec"], config["local_rank"] = True, 0
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    check_id_mapping(checkpoint, dataset, model_file)
    train_data, valid_data, test_data = data_preparation(config, dataset, train_batch_hooks(config["model"]))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    disable_anomaly_mode()
    return config, model, dataset, train_data, valid_data, test_data


def evaluate_checkpoint(model_file, split="test", trust=False):
    """Evaluate a saved checkpoint on its dataset's ``"valid"`` or ``"test"`` split."""
    from recbole_cmi.trainer import get_trainer

    config, model, _, _, valid_data, test_data = load_data_and_model(model_file, trust=trust)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return trainer.evaluate(valid_data if split == "valid" else test_data, load_best_model=False)


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
