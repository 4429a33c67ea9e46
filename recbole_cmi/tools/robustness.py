"""Robustness to noisy histories (docs/cmi.md §6.3, a guessed design): perturb the test inputs, re-evaluate.

For each p, a fraction p of every test history's items is dropped at random (at least one item
is kept), or separately replaced by random other items. The perturbation is applied once to the
whole test split (so it does not depend on ``eval_batch_size``), and the perturbed split goes
through RecBole's own ``Trainer.evaluate``. Every (p, mode) draws from a fresh generator seeded
with ``seed``: all models (and all runs of a model) see the same perturbed histories, and the items
dropped (replaced) at a smaller p are among those dropped (replaced) at a larger one. Only
``item_id_list`` and ``item_length`` change; other list fields (timestamps) are left as they were:
no model reads them.

Several runs (seeds) of one model: checkpoints given under the same label
(``CMI=s1.pth,CMI=s2.pth``) are runs of that model. Each is evaluated and written to the csv as
its own rows (``run`` 1, 2, ...); the markdown and the plot show per label the mean over its runs
and, with two or more, the sample standard deviation. The runs of a label must hold the same
model. A trained model (``--models``) is one run; an unlabelled checkpoint is named after its
model and is one run too (a name taken already gets a ``'``).

Accuracy by history length (``lengths``, e.g. ``[6, 19]``): each checkpoint is also evaluated on
the clean test rows whose input history length (``item_length``) falls in ``1-6``, ``7-19`` and
``>=20`` (:func:`recbole_cmi.tools.robustness_loaders.length_loader`). Histories are cut to
``MAX_ITEM_LIST_LENGTH`` items, so the last bucket reads "at least", and a bucket above that length is empty
(0 users, no metrics).

Here: the models and checkpoints of a study, their evaluation and the study itself. The perturbed and
length-bucket loaders are in :mod:`~recbole_cmi.tools.robustness_loaders`, the csv, table and plot in
:mod:`~recbole_cmi.tools.robustness_report`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from recbole_cmi.cli import parse_model_variants, split_top_level
from recbole_cmi.tools.common import ToolError, load
from recbole_cmi.tools.robustness_loaders import (
    MODES,
    bucket_label,
    count_rows,
    length_buckets,
    length_loader,
    perturbed_loader,
)
from recbole_cmi.tools.robustness_report import LENGTH, merge_runs, result_rows, write_study

# label -> (model, config overrides): the ablations of docs/cmi.md §6.2 by name.
ALIASES = {
    "CMI_noCL": ("CMI", {"cl_weight": 0.0}),
    "CMI_noOrth": ("CMI", {"orth_weight": 0.0}),
    "CMI_noUni": ("CMI", {"uniform_weight": 0.0}),
    "CMI_noGeneral": ("CMI", {"use_general_interest": False}),
}


# --------------------------------------------------------------------------- model specs
@dataclass
class ModelSpec:
    label: str
    model: str | None = None
    overrides: dict = field(default_factory=dict)
    checkpoint: str | None = None


def parse_models(text: str) -> list[ModelSpec]:
    """``"CMI,CMI_noCL,SASRec,CMI:num_interest=4,label=Wide"`` -> specs (grammar: :func:`parse_model_variants`).

    A name is an alias (``ALIASES``) or a model; its settings are config keys over the alias's. The earlier
    ``Label:model=<Model>;key=value`` still works: ``model=`` picks the model when the name is a label.
    """
    specs = []
    for variant in parse_model_variants(text):
        model, overrides = ALIASES.get(variant.name, (variant.name, {}))
        overrides = {**overrides, **variant.overrides}
        model = overrides.pop("model", model)
        specs.append(ModelSpec(variant.label or variant.name, model, overrides))
    return specs


def parse_checkpoints(text: str) -> list[ModelSpec]:
    """``"a.pth,Label=b.pth,Label=c.pth"`` -> specs; an unlabelled checkpoint is named after its model (or alias).

    Checkpoints under one label are runs (seeds) of one model, aggregated in the tables (:func:`run_study`).
    """
    specs = []
    for item in split_top_level(text, ","):
        label, eq, path = item.partition("=")
        if not eq:
            label, path = "", item
        specs.append(ModelSpec(label.strip(), checkpoint=path.strip()))
    return specs


def checkpoint_label(config) -> str:
    """The alias whose settings the checkpoint's config has, else the model name."""
    for alias, (model, overrides) in ALIASES.items():
        if config["model"] == model and all(config[k] == v for k, v in overrides.items()):
            return alias
    return config["model"]


def parse_fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ToolError(f"--p: expected comma-separated fractions such as 0,0.1,0.5, got {text!r}") from err
    if not values or any(not (0.0 <= v <= 1.0) or math.isnan(v) for v in values):
        raise ToolError(f"--p: fractions must be in [0, 1], got {text!r}")
    return sorted(set(values))


def parse_lengths(text: str | None) -> list[int] | None:
    """``"6,19"`` -> ``[6, 19]`` (the upper ends of the buckets but the last); ``None`` (not given) -> ``None``."""
    if text is None:
        return None
    example = "such as 6,19 (buckets 1-6, 7-19, >=20)"
    try:
        edges = [int(v) for v in text.split(",")]
    except ValueError:
        edges = []
    if not edges or any(e < 1 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ToolError(f"--lengths: expected comma-separated increasing positive integers {example}, got {text!r}")
    return edges


# --------------------------------------------------------------------------- the study
def evaluate_under_noise(checkpoint, fractions, seed: int, topk: int = 20, trust: bool = False, lengths=None):
    """``(config, results)`` for one checkpoint on its test split.

    ``results``: ``{(mode, p): metrics}`` and, with ``lengths`` (bucket edges, :func:`parse_lengths`),
    ``{("length", bucket): metrics}`` on the clean test rows of each bucket. ``metrics``:
    ``{"users": test rows, "recall@k": .., "ndcg@k": ..}``; an empty bucket has only ``users`` (0).
    """
    from recbole.utils import ModelType

    pipeline = load(checkpoint, trust)
    config, dataset, test_data = pipeline.config, pipeline.dataset, pipeline.test_data
    n_items = dataset.item_num - 1
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        raise ToolError(f"{config['model']} is not a sequential model: the study perturbs histories")
    if topk > n_items:
        raise ToolError(f"--topk {topk} is above the {n_items} items of dataset '{config['dataset']}'")
    config["metrics"] = ["Recall", "NDCG"]
    config["topk"] = [topk]
    trainer = pipeline.build_trainer()  # after the metrics change: the trainer's evaluator reads them

    def evaluate(loader):
        users = count_rows(loader, config)
        if users == 0:
            return {"users": 0}
        metrics = trainer.evaluate(loader, load_best_model=False)
        return {"users": users, **{key: float(value) for key, value in metrics.items()}}

    results, clean = {}, None
    for mode in MODES:
        for p in fractions:
            if p == 0 and clean is not None:
                results[(mode, p)] = clean  # both perturbations are the identity at p = 0
                continue
            results[(mode, p)] = evaluate(perturbed_loader(test_data, config, p, mode, seed, dataset.item_num))
            if p == 0:
                clean = results[(mode, p)]
    for low, high in length_buckets(lengths) if lengths else []:
        results[(LENGTH, bucket_label(low, high))] = evaluate(length_loader(test_data, config, low, high))
    return config, results


def _saved_config(checkpoint: dict):
    """The config saved in a checkpoint, or None when it holds none with a ``model`` (loading it will say why)."""
    config = checkpoint.get("config")
    try:
        return config if isinstance(config["model"], str) else None
    except (KeyError, TypeError, AttributeError):
        return None


def check_runs(specs, saved_models: dict) -> None:
    """The checkpoints given under one label are runs of one model: else one ToolError line naming both.

    ``saved_models``: checkpoint path -> the ``model`` of its config (None when unknown).
    """
    first = {}
    for spec in specs:
        if spec.checkpoint is None or not spec.label:
            continue
        model = saved_models.get(spec.checkpoint)
        if model is None:
            continue
        if spec.label not in first:
            first[spec.label] = (model, spec.checkpoint)
            continue
        other_model, other = first[spec.label]
        if model != other_model:
            raise ToolError(
                f"--checkpoints: the runs under label '{spec.label}' must hold one model, but {other} holds "
                f"{other_model} and {spec.checkpoint} holds {model}"
            )


def assign_labels(specs, saved_configs: dict):
    """The label of every spec, in order, and the labels taken.

    Checkpoints given under one label share it (runs of one model); an unlabelled checkpoint is named after
    the model of its saved config (:func:`checkpoint_label`; None when unknown: named once loaded); a name
    taken already gets a ``'``.
    """
    fixed, taken, groups = [], set(), {}
    for spec in specs:
        label = spec.label
        if spec.checkpoint is not None:
            if spec.label in groups:
                fixed.append(groups[spec.label])
                continue
            if not spec.label:
                config = saved_configs.get(spec.checkpoint)
                if config is None:
                    fixed.append(None)
                    continue
                label = checkpoint_label(config)
        while label in taken:
            label += "'"
        taken.add(label)
        if spec.checkpoint is not None and spec.label:
            groups[spec.label] = label
        fixed.append(label)
    return fixed, taken


def run_study(specs, dataset, fractions, seed=2022, out="reports/robustness", prefix="robustness", **kwargs):
    """Train (or load) every model, evaluate it under noise, write ``<prefix>.{csv,md,png}`` into ``out``.

    ``kwargs``: ``config_files``, ``config_dict`` (shared by every trained model; a spec's own
    keys win), ``topk``, ``trust_checkpoint``, ``lengths`` (edges of the history-length buckets,
    :func:`parse_lengths`; None: no buckets) and ``merged`` (the rows of earlier studies with the same seed,
    :func:`recbole_cmi.tools.robustness_report.read_study_csv`, published before this study's own). Checkpoints under one label are runs of one model
    (checked before any training, :func:`check_runs`). A model that fails is reported (``error``)
    and the others go on; a given checkpoint that cannot be read safely stops the study before any
    training (a :class:`recbole_cmi.errors.CheckpointError`).
    Returns the rows written to the csv.
    """
    from recbole_cmi.quick_start import run_recbole_cmi

    trust = bool(kwargs.get("trust_checkpoint", False))
    saved = _saved_configs(specs, trust)
    check_runs(specs, {path: config["model"] for path, config in saved.items() if config is not None})
    config_files = kwargs.get("config_files")
    shared = dict(kwargs.get("config_dict") or {})
    topk = int(kwargs.get("topk", 20))
    lengths = kwargs.get("lengths")
    fixed, labels = assign_labels(specs, saved)
    rows = merge_runs(list(kwargs.get("merged") or []))
    failures, max_lengths = [], {r["model"]: r["max_length"] for r in rows if r.get("max_length") not in ("", None)}
    runs = {}
    for row in rows:
        runs[row["model"]] = max(runs.get(row["model"], 0), row["run"])
    for spec, fixed_label in zip(specs, fixed):
        label = fixed_label or spec.checkpoint
        checkpoint = spec.checkpoint
        try:
            if checkpoint is None:
                print(f"[robustness] training {label} ({spec.model}, {spec.overrides or 'defaults'})", file=sys.stderr)
                result = run_recbole_cmi(spec.model, dataset, config_files, {**shared, **spec.overrides}, saved=True)
                checkpoint = result["saved_model_file"]
            print(f"[robustness] evaluating {label}: {checkpoint}", file=sys.stderr)
            config, results = evaluate_under_noise(
                checkpoint, fractions, seed, topk, trust and spec.checkpoint is not None, lengths
            )
            if fixed_label is None:  # an unlabelled checkpoint without a readable config: named now
                label = checkpoint_label(config)
                while label in labels:
                    label += "'"
                labels.add(label)
            earlier = {r["base_model"] for r in rows if r["model"] == label and r.get("base_model")}
            if earlier and earlier != {config["model"]}:
                raise ToolError(f"label {label}: {config['model']} here, {'/'.join(sorted(earlier))} in --merge")
            runs[label] = runs.get(label, 0) + 1
            max_lengths.setdefault(label, config["MAX_ITEM_LIST_LENGTH"])
            base = {"model": label, "base_model": config["model"], "dataset": config["dataset"], "run": runs[label]}
            base.update(seed=seed, max_length=config["MAX_ITEM_LIST_LENGTH"])
            rows += result_rows(base, results, topk, checkpoint)
        except Exception as err:  # one model's failure must not lose the others
            message = (str(err).strip().splitlines() or [""])[0]
            message = f"{type(err).__name__}: {message}" if not isinstance(err, ToolError) else message
            print(f"[robustness] {label} failed: {message}", file=sys.stderr)
            failures.append((label, message))
            runs[label] = runs.get(label, 0) + 1
            rows.append(
                {
                    "model": label,
                    "base_model": spec.model or "",
                    "run": runs[label],
                    "checkpoint": str(checkpoint or ""),
                    "error": message,
                    "seed": seed,
                }
            )
    if specs and len(failures) == len(specs):
        raise ToolError("every model failed: " + "; ".join(f"{label}: {msg}" for label, msg in failures))
    write_study(rows, Path(out), prefix, fractions, topk, seed, max_lengths)
    return rows


def _saved_configs(specs, trust: bool) -> dict:
    """checkpoint -> its saved config (:func:`_saved_config`), for every checkpoint given; read before any training:
    a file refused (a :class:`recbole_cmi.errors.CheckpointError`) should not wait for hours of training."""
    from recbole_cmi.checkpoint import load_checkpoint

    saved = {}
    for spec in specs:
        if spec.checkpoint is not None:
            saved[spec.checkpoint] = _saved_config(load_checkpoint(spec.checkpoint, trust=trust))
    return saved
