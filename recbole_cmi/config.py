"""RecBole ``Config`` with recbole_cmi's model lookup and yaml layers.

Internal (default) layers, lowest priority first: RecBole's own files (``overall.yaml``,
``model/<Model>.yaml``, ``dataset/<dataset>.yaml``, ``quick_start_config/sequential.yaml``),
then ours: ``properties/overall.yaml``, ``properties/model/<Model>.yaml``,
``properties/dataset/<dataset>.yaml`` and, where a search on that dataset's validation split found
better values than the model's published defaults, ``properties/tuned/<dataset>/<Model>.yaml``
(each file says which search; ``use_tuned_values: False``, given as a config file, dict or command line value,
leaves that last layer out: the benchmark's equal-budget search starts every model from its published defaults).
External sources (config files < config dict < command line) override all of them, as in RecBole. The files and
their safe yaml loader are in :mod:`recbole_cmi.config_yaml`.

Two conveniences on top of RecBole:

* ``train_neg_sample_args`` follows ``loss_type`` unless the user sets it: ``None`` for the
  pointwise losses (CE and CMI's sampled softmax), one uniform negative for BPR. RecBole
  otherwise raises for CE with sampling on, its most common configuration error.
* ``data_path`` defaults to ``./dataset`` if ``./dataset/<name>/`` exists, else to the datasets
  bundled with the package (``micro_video``). An unknown dataset is an error that names the
  places searched: no download is ever attempted.

And two checks (``_validate_values``, ``_unknown_key_warnings``):

* values RecBole would accept and then fail on deep inside training (or silently misuse) raise
  :class:`ConfigValueError` naming the key, the value and what is accepted: ``epochs`` (int >= 0),
  ``train_batch_size``/``eval_batch_size`` (int >= 1), ``learning_rate`` (> 0),
  ``weight_decay`` (>= 0), ``stopping_step`` (int >= 0), ``MAX_ITEM_LIST_LENGTH`` (int >= 2 for
  sequential models), ``topk``, ``metrics``, ``valid_metric`` (a metric in ``metrics`` at a
  cut-off in ``topk``), ``train_neg_sample_args`` (None for loss_type CE, a sampling dict for BPR) and the
  retrieval keys (``retrieval``, ``faiss_*``; :mod:`recbole_cmi.retrieval`);
* a key given by the user (file, dict or command line) that no RecBole or recbole_cmi yaml file
  or code reads (:mod:`recbole_cmi.config_keys`) gets a one-line warning on stderr with the closest known key
  (RecBole accepts arbitrary keys, so this never fails); ``pipeline.build_pipeline`` also writes it to the log file.
"""

from __future__ import annotations

import difflib
import os
import sys

import recbole.config
from recbole.utils import ModelType

from recbole_cmi.config_keys import known_config_keys
from recbole_cmi.config_yaml import SafeConfigLoader, load_yaml_mapping, property_layers, uses_tuned_values
from recbole_cmi.errors import ConfigValueError, DatasetError
from recbole_cmi.options import GENERAL_OPTIONS, documented_options, gpu_id_problem, is_int, literal_value
from recbole_cmi.paths import bundled_dataset_dir, bundled_datasets, plain_name_problem
from recbole_cmi.progress import on_terminal
from recbole_cmi.utils import get_model

BPR_DEFAULT_NEG_SAMPLING = {
    "distribution": "uniform",
    "sample_num": 1,
    "alpha": 1.0,
    "dynamic": False,
    "candidate_num": 0,
}


class Config(recbole.config.Config):
    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, read_argv=True):
        self._read_argv = read_argv
        super().__init__(model, dataset, config_file_list, config_dict)
        self.config_warnings = self._unknown_key_warnings()
        for warning in self.config_warnings:
            print(f"warning: {warning}", file=sys.stderr)

    @classmethod
    def from_values(cls, final: dict, external: dict | None = None) -> Config:
        """A Config holding ``final`` as it was resolved (a checkpoint's), without reading any file."""
        config = cls.__new__(cls)
        config._read_argv = False
        config.compatibility_settings()
        config._init_parameters_category()
        config.yaml_loader = config._build_yaml_loader()
        config.file_config_dict, config.variable_config_dict, config.cmd_config_dict = {}, {}, {}
        config.external_config_dict = dict(external or {})
        config.internal_config_dict = {}
        config.final_config_dict = dict(final)
        config.model, config.dataset = final.get("model"), final.get("dataset")
        config.model_class = get_model(config.model) if isinstance(config.model, str) else None
        config.config_warnings = []
        return config

    def _build_yaml_loader(self):
        return SafeConfigLoader

    def _convert_config_dict(self, config_dict):
        # RecBole eval()s every string of the config dict and the command line; read literals instead.
        return {key: literal_value(value) if isinstance(value, str) else value for key, value in config_dict.items()}

    def _load_config_files(self, file_list):
        loaded = {}
        for path in file_list or []:
            loaded.update(load_yaml_mapping(path, "config file"))
        return loaded

    def _load_cmd_line(self):
        # Library use (tests, Ray workers) passes everything through config_dict, never argv.
        if not self._read_argv:
            return {}
        try:
            return super()._load_cmd_line()
        except SyntaxError as err:  # RecBole's word for a key given twice with two values
            raise ConfigValueError(str(err).replace("commend", "command")) from err

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if model is None:
            raise ConfigValueError("no model given: pass --model=<Model> (e.g. --model=CMI)")
        if dataset is None and "dataset" not in self.external_config_dict:
            raise ConfigValueError("no dataset given: pass --dataset=<name> (e.g. --dataset=micro_video)")
        model_class = get_model(model) if isinstance(model, str) else model
        return super()._get_model_and_dataset(model_class, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in property_layers(model, dataset, uses_tuned_values(self.external_config_dict)):
            self._update_internal_config_dict(str(path))

    def property_values(self) -> dict:
        """Our yaml layers for this model and dataset, merged as read now (a search freezes them with this)."""
        values = {}
        for path in property_layers(self["model"], self["dataset"], uses_tuned_values(self.external_config_dict)):
            values.update(load_yaml_mapping(path, "recbole_cmi yaml file"))
        return values

    def _init_device(self):
        # Distributed runs without a GPU: gloo and the CPU instead of RecBole's hard-coded nccl + CUDA
        # (recbole_cmi.distributed); with GPUs RecBole's own set-up runs.
        from recbole_cmi.distributed import init_cpu_distributed, quiet_other_ranks, uses_cpu_distributed

        if uses_cpu_distributed(self.final_config_dict):
            init_cpu_distributed(self.final_config_dict)
        else:
            super()._init_device()
            if self.final_config_dict.get("single_spec") is False:
                quiet_other_ranks(self.final_config_dict)  # RecBole quiets local ranks, not global ones

    def _set_default_parameters(self):
        self.final_config_dict["data_path"] = self._resolve_data_root()
        if "show_progress" not in self.external_config_dict:
            # RecBole's default (bars on) where a person watches, off in logs, CI and Ray trials.
            self.final_config_dict["show_progress"] = on_terminal()
        self._default_negative_sampling()
        self._validate_values()
        super()._set_default_parameters()

    def _validate_values(self):
        """Reject values RecBole would accept and fail on later; one ConfigValueError for all problems.

        Every key documented in our yaml layers of this run is checked against its documentation
        (``recbole_cmi.options``), and RecBole's general keys against ``GENERAL_OPTIONS``.
        """
        cfg = self.final_config_dict
        problems = []
        checks = [(key, [option]) for key, option in GENERAL_OPTIONS.items()]
        tuned = uses_tuned_values(self.external_config_dict)
        checks += documented_options(property_layers(self.model, self.dataset, tuned)).items()
        for key, options in checks:
            if key in cfg:
                problems += [p for p in (option.problem(key, cfg[key]) for option in options) if p]
        gpu_problem = gpu_id_problem(cfg.get("gpu_id"))
        if gpu_problem:
            problems.append(gpu_problem)
        if cfg.get("MODEL_TYPE") == ModelType.SEQUENTIAL and "MAX_ITEM_LIST_LENGTH" in cfg:
            value = cfg["MAX_ITEM_LIST_LENGTH"]
            if not (is_int(value) and value >= 2):
                problems.append(
                    f"MAX_ITEM_LIST_LENGTH={value!r} (an integer >= 2: the longest history a sequential model sees)"
                )
        topk_ok = self._check_topk(cfg, problems)
        metrics_ok = self._check_metrics(cfg, problems)
        if topk_ok and metrics_ok:
            self._check_valid_metric(cfg, problems)
        self._check_train_neg_sample_args(cfg, problems)
        if problems:
            raise ConfigValueError("invalid config value " + "; ".join(problems))

    @staticmethod
    def _check_topk(cfg, problems) -> bool:
        topk = cfg.get("topk")
        values = [topk] if not isinstance(topk, list) else topk
        if not values or not all(is_int(k) and k >= 1 for k in values):
            problems.append(f"topk={topk!r} (a positive integer or a list of them, e.g. [10, 20])")
            return False
        return True

    @staticmethod
    def _check_metrics(cfg, problems) -> bool:
        from recbole.evaluator import metric_types

        metrics = cfg.get("metrics")
        values = [metrics] if isinstance(metrics, str) else metrics
        if not isinstance(values, list) or not values or not all(isinstance(m, str) for m in values):
            problems.append(f"metrics={metrics!r} (a metric name or a list of them)")
            return False
        unknown = [m for m in values if m.lower() not in metric_types]
        if unknown:
            problems.append(
                f"metrics={metrics!r} ({', '.join(map(repr, unknown))} unknown; RecBole has "
                f"{', '.join(sorted(metric_types))}, case-insensitive)"
            )
            return False
        return True

    @staticmethod
    def _check_valid_metric(cfg, problems) -> None:
        from recbole.evaluator.register import metric_information

        metrics = [cfg["metrics"]] if isinstance(cfg["metrics"], str) else cfg["metrics"]
        topk = cfg["topk"] if isinstance(cfg["topk"], list) else [cfg["topk"]]
        accepted = []
        for metric in metrics:
            name = metric.lower()
            needs = metric_information.get(name, [])
            if "rec.topk" in needs or "rec.items" in needs:
                accepted += [f"{name}@{k}" for k in topk]
            else:
                accepted.append(name)
        valid_metric = cfg.get("valid_metric")
        if not isinstance(valid_metric, str) or valid_metric.lower() not in accepted:
            problems.append(
                f"valid_metric={valid_metric!r} (one of {', '.join(accepted)}: a metric in 'metrics' "
                f"at a cut-off in 'topk', case-insensitive)"
            )

    def _check_train_neg_sample_args(self, cfg, problems) -> None:
        if "train_neg_sample_args" not in cfg:
            return
        value = cfg["train_neg_sample_args"]
        example = "{'distribution': 'uniform', 'sample_num': 1}"
        loss_type = cfg.get("loss_type")
        sampling = isinstance(value, dict) and str(value.get("distribution", "uniform")).lower() != "none"
        if value is not None and value != "None" and not isinstance(value, dict):
            problems.append(f"train_neg_sample_args={value!r} (None, or a dict such as {example})")
        elif sampling and loss_type == "CE" and cfg.get("MODEL_TYPE") == ModelType.SEQUENTIAL:
            problems.append(
                f"train_neg_sample_args={value!r} (must be None with loss_type CE, which scores all items; "
                f"negative sampling is for loss_type BPR)"
            )
        elif sampling:
            distribution = value.get("distribution", "uniform")
            sample_num = value.get("sample_num", 1)
            if distribution not in ("uniform", "popularity"):
                problems.append(
                    f"train_neg_sample_args={value!r} (distribution must be 'uniform', 'popularity' or None)"
                )
            elif not (is_int(sample_num) and sample_num >= 1):
                problems.append(f"train_neg_sample_args={value!r} (sample_num must be an integer >= 1)")
        elif loss_type == "BPR" and cfg.get("MODEL_TYPE") == ModelType.SEQUENTIAL:
            problems.append(f"train_neg_sample_args={value!r} (loss_type BPR needs negatives, e.g. {example})")

    def _unknown_key_warnings(self) -> list[str]:
        known = known_config_keys()
        lowered = {k.lower(): k for k in known}
        warnings = []
        for key in self.external_config_dict:
            if key in known:
                continue
            close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.75)
            hint = f" (did you mean '{lowered[close[0]]}'?)" if close else ""
            warnings.append(f"unknown config key '{key}'{hint}: neither RecBole nor recbole_cmi reads it")
        return warnings

    def _default_negative_sampling(self):
        if "train_neg_sample_args" in self.external_config_dict:
            return
        loss_type = self.final_config_dict.get("loss_type")
        if loss_type == "BPR":
            self.final_config_dict["train_neg_sample_args"] = dict(BPR_DEFAULT_NEG_SAMPLING)
        elif loss_type is not None:
            self.final_config_dict["train_neg_sample_args"] = None

    def _resolve_data_root(self) -> str:
        name = self.dataset
        problem = plain_name_problem(name)
        if problem:
            raise DatasetError(f"dataset name {name!r} {problem}")
        if name == "ml-100k":  # RecBole forces its bundled copy
            return self.final_config_dict.get("data_path", "dataset/")
        if "data_path" in self.external_config_dict:
            roots = [self.external_config_dict["data_path"]]
        else:
            roots = [os.path.join(os.getcwd(), "dataset")]
            try:
                roots.append(str(bundled_dataset_dir()))
            except FileNotFoundError:
                pass
        for root in roots:
            if os.path.isdir(os.path.join(root, name)):
                return os.path.abspath(root)
        searched = ", ".join(os.path.join(os.path.abspath(r), name) for r in roots)
        bundled = ", ".join(bundled_datasets()) or "none"
        raise DatasetError(
            f"unknown dataset '{name}': no folder {searched} (bundled datasets: {bundled}; "
            f"for your own data put atomic files in <data_path>/{name}/{name}.inter and pass "
            f"--data_path=<data_path>; nothing is downloaded)"
        )
