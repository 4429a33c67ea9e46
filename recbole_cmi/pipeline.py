"""The one builder of a run's pieces: :func:`build_pipeline` (config, dataset, loaders, model, trainer: a
:class:`Pipeline`), which every run, search trial, benchmark and tool calls, and :func:`restore_pipeline`, which
rebuilds a checkpoint's; :func:`evaluate_checkpoint` scores a checkpoint on its validation and test splits.

Builds as ``recbole.quick_start.run_recbole`` does (same seeding order, same FLOPs pass, so a core model gives the
same numbers through either) but resolves our models, uses our Trainer, and checks the atomic files first
(:func:`create_dataset`). Running a model end to end, on one process or several, is :mod:`recbole_cmi.quick_start`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from logging import getLogger

from recbole_cmi.checkpoint import check_id_mapping, load_checkpoint
from recbole_cmi.compat import disable_anomaly_mode
from recbole_cmi.config import Config
from recbole_cmi.errors import CheckpointError, ConfigValueError, DatasetError


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


def _start_logging(config) -> None:
    """RecBole's logger for this run (rank 0: console and log file; other DDP ranks: errors on the console), then
    the command line, the config's warnings (log file only) and the config."""
    from recbole.utils import init_logger

    from recbole_cmi.distributed import is_main_rank

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


#: How far :func:`build_pipeline` goes: the loaders only, then the model, then the trainer.
STAGES = ("data", "model", "trainer")
#: The splits a :class:`Pipeline` and :func:`evaluate_checkpoint` evaluate.
EVAL_SPLITS = ("valid", "test")


@dataclasses.dataclass(repr=False)
class Pipeline:
    """One run's pieces: config, dataset, the three loaders and, once built, the model and its trainer.

    :func:`build_pipeline` builds it from a model and a dataset name, :func:`restore_pipeline` from a checkpoint.
    """

    config: Config
    dataset: object  # RecBole's dataset, before the split
    train_data: object
    valid_data: object
    test_data: object
    model: object = None
    trainer: object = None

    def __repr__(self) -> str:
        built = ", ".join(name for name, part in zip(STAGES, (True, self.model, self.trainer)) if part is not None)
        return f"Pipeline({self.config['model']} on {self.config['dataset']}: {built})"

    @property
    def loaders(self) -> tuple:
        return self.train_data, self.valid_data, self.test_data

    def split(self, name: str):
        """The ``"valid"`` or ``"test"`` loader."""
        if name not in EVAL_SPLITS:
            raise ConfigValueError(f"unknown split {name!r}: expected one of {', '.join(EVAL_SPLITS)}")
        return self.valid_data if name == "valid" else self.test_data

    def build_model(self, log: bool = False):
        """The initialised model, on the config's device, seeded as RecBole seeds it (our seed + the global DDP rank,
        so ranks of a multi-node run differ). With ``log``, it and its FLOPs (RecBole's pass) go to the log."""
        from recbole.utils import init_seed

        from recbole_cmi.distributed import global_rank
        from recbole_cmi.utils import get_model

        config = self.config
        init_seed(config["seed"] + global_rank(config), config["reproducibility"])
        self.model = get_model(config["model"])(config, self.train_data._dataset).to(config["device"])
        disable_anomaly_mode()
        if log:
            from recbole.data.transform import construct_transform
            from recbole.utils import get_flops, set_color

            logger = getLogger()
            logger.info(self.model)
            flops = get_flops(self.model, self.dataset, config["device"], logger, construct_transform(config))
            logger.info(set_color("FLOPs", "blue") + f": {flops}")
        return self.model

    def build_trainer(self):
        """The model's trainer (:func:`recbole_cmi.trainer.get_trainer`), built from the config as it is now."""
        from recbole_cmi.trainer import get_trainer

        self.trainer = get_trainer(self.config["MODEL_TYPE"], self.config["model"])(self.config, self.model)
        return self.trainer


def build_pipeline(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    *,
    read_argv=False,
    config=None,
    data=None,
    log=True,
    until="trainer",
) -> Pipeline:
    """Config, dataset, loaders, model and trainer of a run, in RecBole's order and with its seeding.

    ``config``: an already-built config (a checkpoint's) instead of one from ``model``, ``dataset``, the config
    files and dict (and ``--key=value`` from ``sys.argv`` with ``read_argv``). ``data``: an already-created
    dataset (the speed benchmarks build one and reuse it across models) instead of loading ``config["dataset"]``.
    ``log``: set up RecBole's logger and write config, dataset, model and its FLOPs to it, as ``run`` does; the
    benchmarks and checkpoint loading do none of it (the FLOPs pass draws random numbers). ``until``: the last
    stage built (:data:`STAGES`); the pipeline's ``build_model``/``build_trainer`` go on from there.
    """
    from recbole.utils import init_seed

    from recbole_cmi.data.dataloader import data_preparation
    from recbole_cmi.utils import train_batch_hooks

    if until not in STAGES:
        raise ValueError(f"until={until!r}: expected one of {', '.join(STAGES)}")
    if config is None:
        config = Config(model, dataset, config_file_list, config_dict, read_argv=read_argv)
    init_seed(config["seed"], config["reproducibility"])
    if log:
        _start_logging(config)
    if data is None:
        data = create_dataset(config)
    if log:
        getLogger().info(data)
    pipeline = Pipeline(config, data, *data_preparation(config, data, train_batch_hooks(config["model"])))
    if until != "data":
        pipeline.build_model(log=log)
    if until == "trainer":
        pipeline.build_trainer()
    return pipeline


def prepare(model=None, dataset=None, config_file_list=None, config_dict=None, read_argv=False):
    """``(config, dataset, (train, valid, test), model)``: :func:`build_pipeline` up to the model."""
    pipeline = build_pipeline(model, dataset, config_file_list, config_dict, read_argv=read_argv, until="model")
    return pipeline.config, pipeline.dataset, pipeline.loaders, pipeline.model


def restore_pipeline(model_file, trust=False, data_path=None) -> Pipeline:
    """The :class:`Pipeline` of a checkpoint's run, up to its trained model (``build_trainer`` adds the trainer).

    Loads on the CPU whatever device trained the model. The file is read without running code in it; a pickled
    (old or foreign) checkpoint needs ``trust=True`` (:mod:`recbole_cmi.checkpoint`). Data whose user/item id
    mapping differs from the training data's is refused. ``data_path``: where the data lives now, as the run's
    ``--data_path`` (the folder holding ``<dataset>/``), when it moved since training; None: the checkpoint's own
    (an absolute path, written at training time).
    """
    import torch
    from recbole.utils import init_seed

    checkpoint = load_checkpoint(model_file, map_location="cpu", trust=trust)
    config = checkpoint.get("config")
    if not hasattr(config, "final_config_dict"):
        raise CheckpointError(f"checkpoint {model_file} holds no RecBole config, so its data cannot be rebuilt")
    config["device"] = torch.device("cpu")
    config["gpu_id"] = ""
    # A checkpoint of a distributed run is used in this one process (RecBole #2063: its loaders and
    # trainer would wait for a process group; recbole_cmi.distributed).
    config["single_spec"], config["local_rank"] = True, 0
    if data_path is not None:  # RecBole's final data_path is <data_path>/<dataset>
        config["data_path"] = os.path.join(os.path.abspath(str(data_path)), config["dataset"])
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    check_id_mapping(checkpoint, dataset, model_file)
    pipeline = build_pipeline(config=config, data=dataset, log=False, until="model")
    pipeline.model.load_state_dict(checkpoint["state_dict"])
    pipeline.model.load_other_parameter(checkpoint.get("other_parameter"))
    return pipeline


def evaluate_checkpoint(model_file, splits="test", trust=False, data_path=None):
    """A saved checkpoint's results on its dataset's splits (:data:`EVAL_SPLITS`), loaded as by
    :func:`restore_pipeline` (``trust`` and ``data_path`` likewise).

    ``splits``: one split name (its result comes back) or several (a tuple of their results, in that order).
    """
    names = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown = [name for name in names if name not in EVAL_SPLITS]
    if unknown or not names:
        raise ConfigValueError(f"splits={splits!r}: expected names among {', '.join(EVAL_SPLITS)}")
    pipeline = restore_pipeline(model_file, trust=trust, data_path=data_path)
    trainer = pipeline.build_trainer()
    results = tuple(trainer.evaluate(pipeline.split(name), load_best_model=False) for name in names)
    return results[0] if isinstance(splits, str) else results
