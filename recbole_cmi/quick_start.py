"""Run a model end to end: ``run_recbole_cmi`` (train, validate, test) and helpers.

Mirrors ``recbole.quick_start.run_recbole`` (same seeding order, same FLOPs pass, so a core
model gives the same numbers through either) but resolves our models, uses our Trainer, and
never imports Ray.
"""

from __future__ import annotations

import logging
import sys
from logging import getLogger

from recbole_cmi.checkpoint import check_id_mapping, load_checkpoint
from recbole_cmi.compat import disable_anomaly_mode
from recbole_cmi.config import Config
from recbole_cmi.errors import CheckpointError, ConfigValueError, DatasetError
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
    from recbole_cmi.utils import get_model

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
    train_data, valid_data, test_data = data_preparation(config, data)
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

    from recbole_cmi.utils import get_trainer

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
    from recbole_cmi.utils import get_model

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
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    disable_anomaly_mode()
    return config, model, dataset, train_data, valid_data, test_data


def evaluate_checkpoint(model_file, split="test", trust=False):
    """Evaluate a saved checkpoint on its dataset's ``"valid"`` or ``"test"`` split."""
    from recbole_cmi.utils import get_trainer

    config, model, _, _, valid_data, test_data = load_data_and_model(model_file, trust=trust)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return trainer.evaluate(valid_data if split == "valid" else test_data, load_best_model=False)
