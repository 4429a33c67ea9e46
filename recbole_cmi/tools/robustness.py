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
``>=20`` (:func:`length_loader`). Histories are cut to ``MAX_ITEM_LIST_LENGTH`` items, so the last
bucket reads "at least", and a bucket above that length is empty (0 users, no metrics).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recbole_cmi.cli import parse_model_variants, split_top_level
from recbole_cmi.tools.common import ToolError, load, pyplot

MODES = ("drop", "replace")
LENGTH = "length"  # the ``perturbation`` of the csv rows of the history-length buckets

# label -> (model, config overrides): the ablations of docs/cmi.md §6.2 by name.
ALIASES = {
    "CMI_noCL": ("CMI", {"cl_weight": 0.0}),
    "CMI_noOrth": ("CMI", {"orth_weight": 0.0}),
    "CMI_noUni": ("CMI", {"uniform_weight": 0.0}),
    "CMI_noGeneral": ("CMI", {"use_general_interest": False}),
}


# --------------------------------------------------------------------------- perturbation
def perturb_histories(item_seq, item_seq_len, p: float, mode: str, generator: torch.Generator, n_items=None):
    """Drop or replace ``round(p * length)`` random items of each left-aligned history.

    Args:
        item_seq: ``[B, L]`` item ids, padding 0 after each history.
        item_seq_len: ``[B]`` lengths, 1..L.
        p: fraction in [0, 1].
        mode: ``"drop"`` (the kept items move left, in order; at least one is kept) or
            ``"replace"`` (by a uniformly drawn item id in 1..n_items-1 other than the original).
        generator: the source of randomness (CPU ``torch.Generator``).
        n_items: number of item ids including padding 0; needed for ``"replace"``.

    Returns new ``(item_seq, item_seq_len)``; the inputs are not modified.
    """
    if mode not in MODES:
        raise ToolError(f"perturbation mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
        raise ToolError(f"perturbation fraction p must be in [0, 1], got {p!r}")
    if mode == "replace" and (n_items is None or n_items < 3):
        raise ToolError(f"replacing items needs at least 2 items to draw from, got n_items={n_items}")
    device = item_seq.device
    rows, width = item_seq.shape
    length = item_seq_len.long().clamp(1, width)
    positions = torch.arange(width, device=device).unsqueeze(0)
    valid = positions < length.unsqueeze(1)
    count = torch.floor(p * length.double() + 0.5).long()
    if mode == "drop":
        count = torch.minimum(count, length - 1)
    keys = torch.rand(rows, width, generator=generator).to(device).masked_fill(~valid, 2.0)
    chosen = keys.argsort(dim=1).argsort(dim=1) < count.unsqueeze(1)
    if mode == "drop":
        keep = valid & ~chosen
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
        new_len = length - count
        new_seq = item_seq.gather(1, order).masked_fill(positions >= new_len.unsqueeze(1), 0)
        return new_seq, new_len.to(item_seq_len.dtype)
    draw = torch.randint(1, n_items - 1, (rows, width), generator=generator).to(device)
    draw = draw + (draw >= item_seq).long()  # skips the original id: uniform over the others
    return torch.where(chosen, draw, item_seq), length.to(item_seq_len.dtype)


def _test_input(test_data, config):
    """``(holds_input, Interaction of the model's input rows)`` of a test loader.

    RecBole's full-sort loader reads its rows from its dataset (``_dataset.inter_feat``); a loader that holds
    its model input as ``interaction`` (``eval_protocol: multi_target``) has them there.
    """
    holds_input = hasattr(test_data, "interaction") and not hasattr(test_data, "_sampler")
    inter = test_data.interaction if holds_input else test_data._dataset.inter_feat
    len_field = config["ITEM_LIST_LENGTH_FIELD"]
    if len_field not in inter.interaction:
        raise ToolError(f"the test data of {config['model']} has no '{len_field}': it holds no histories")
    return holds_input, inter


def _held_input_copy(test_data, config, interaction):
    loader = copy.copy(test_data)
    loader.interaction = interaction
    loader.metrics, loader.topk = ["recall", "ndcg"], list(config["topk"])  # read when it was built
    return loader


def perturbed_loader(test_data, config, p: float, mode: str, seed: int, n_items: int):
    """A copy of ``test_data`` whose histories (``item_id_list``, ``item_length``) are perturbed.

    RecBole's loaders are rebuilt (same class) on a copy of their dataset; a loader that holds its
    model input as ``interaction`` (``eval_protocol: multi_target``) is copied with a new one.
    """
    from recbole.data.interaction import Interaction

    seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    len_field = config["ITEM_LIST_LENGTH_FIELD"]
    holds_input, inter = _test_input(test_data, config)
    if seq_field not in inter.interaction:
        raise ToolError(f"the test data of {config['model']} has no '{seq_field}': only histories can be perturbed")
    generator = torch.Generator().manual_seed(int(seed))
    new_seq, new_len = perturb_histories(inter[seq_field], inter[len_field], p, mode, generator, n_items)
    fields = dict(inter.interaction)
    fields[seq_field], fields[len_field] = new_seq, new_len
    if holds_input:
        return _held_input_copy(test_data, config, Interaction(fields))
    dataset = test_data._dataset.copy(Interaction(fields))
    return type(test_data)(config, dataset, test_data._sampler, shuffle=False)


# --------------------------------------------------------------------------- history-length buckets
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


def length_buckets(edges) -> list[tuple[int, int | None]]:
    """``[6, 19]`` -> ``[(1, 6), (7, 19), (20, None)]``: inclusive bounds, the last one open."""
    buckets, low = [], 1
    for edge in edges:
        buckets.append((low, int(edge)))
        low = int(edge) + 1
    return buckets + [(low, None)]


def bucket_label(low: int, high: int | None) -> str:
    """``"1-6"``, ``"7"`` (a bucket of one length) or ``">=20"`` (open-ended)."""
    if high is None:
        return f">={low}"
    return str(low) if low == high else f"{low}-{high}"


def count_rows(loader, config) -> int:
    """The number of test rows (users) a loader evaluates."""
    return len(_test_input(loader, config)[1])


def length_loader(test_data, config, low: int, high: int | None = None):
    """A copy of ``test_data`` holding only the rows whose history length (``item_length``) is in ``[low, high]``.

    ``high=None``: no upper bound. Built as :func:`perturbed_loader` builds its copies: RecBole's loaders are
    rebuilt on a copy of their dataset holding those rows; a loader holding its input as ``interaction``
    (``eval_protocol: multi_target``) is copied with those rows and their users' histories and targets. An
    empty bucket gives a loader of 0 rows (:func:`count_rows`), which is not to be evaluated.
    """
    holds_input, inter = _test_input(test_data, config)
    length = inter[config["ITEM_LIST_LENGTH_FIELD"]].long()
    inside = length >= low
    if high is not None:
        inside &= length <= high
    index = inside.nonzero().flatten()
    rows = inter[index]
    if holds_input:
        loader = _held_input_copy(test_data, config, rows)
        loader.split = _split_rows(test_data.split, index.numpy())
        return loader
    dataset = test_data._dataset.copy(rows)
    return type(test_data)(config, dataset, test_data._sampler, shuffle=False)


def _split_rows(split, index):
    """The users ``index`` of a multi_target split (``recbole_cmi.data.protocol.TargetSplit``), in order."""
    history_ptr, history_take = _csr_take(split.history_ptr, index)
    target_ptr, target_take = _csr_take(split.target_ptr, index)
    return dataclasses.replace(
        split,
        users=split.users[index],
        history_ptr=history_ptr,
        history_rows=split.history_rows[history_take],
        history_items=split.history_items[history_take],
        target_ptr=target_ptr,
        target_items=split.target_items[target_take],
    )


def _csr_take(ptr, index):
    """``(new ptr, positions of the values)`` of the rows ``index`` of a CSR array."""
    ptr = np.asarray(ptr, dtype=np.int64)
    counts = ptr[1:][index] - ptr[:-1][index]
    new_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    take = np.repeat(ptr[:-1][index] - new_ptr[:-1], counts) + np.arange(new_ptr[-1])
    return new_ptr, take


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
    keys win), ``topk``, ``trust_checkpoint`` and ``lengths`` (edges of the history-length buckets,
    :func:`parse_lengths`; None: no buckets). Checkpoints under one label are runs of one model
    (checked before any training, :func:`check_runs`). A model that fails is reported (``error``)
    and the others go on; a given checkpoint that cannot be read safely stops the study before any
    training (a :class:`recbole_cmi.errors.CheckpointError`).
    Returns the rows written to the csv.
    """
    from recbole_cmi.checkpoint import load_checkpoint
    from recbole_cmi.quick_start import run_recbole_cmi

    trust = bool(kwargs.get("trust_checkpoint", False))
    saved = {}  # checkpoint -> its saved config
    for spec in specs:  # the user's files first: a refused one should not wait for hours of training
        if spec.checkpoint is not None:
            saved[spec.checkpoint] = _saved_config(load_checkpoint(spec.checkpoint, trust=trust))
    check_runs(specs, {path: config["model"] for path, config in saved.items() if config is not None})
    config_files = kwargs.get("config_files")
    shared = dict(kwargs.get("config_dict") or {})
    topk = int(kwargs.get("topk", 20))
    lengths = kwargs.get("lengths")
    fixed, labels = assign_labels(specs, saved)
    rows, failures, runs, max_lengths = [], [], {}, {}
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
            runs[label] = runs.get(label, 0) + 1
            max_lengths.setdefault(label, config["MAX_ITEM_LIST_LENGTH"])
            base = {"model": label, "base_model": config["model"], "dataset": config["dataset"], "run": runs[label]}
            for (mode, key), metrics in results.items():
                rows.append(
                    {
                        **base,
                        "perturbation": mode,
                        "p": "" if mode == LENGTH else key,
                        "bucket": key if mode == LENGTH else "",
                        "users": metrics["users"],
                        f"recall@{topk}": metrics.get(f"recall@{topk}", ""),
                        f"ndcg@{topk}": metrics.get(f"ndcg@{topk}", ""),
                        "checkpoint": str(checkpoint),
                        "error": "",
                    }
                )
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
                }
            )
    if len(failures) == len(specs):
        raise ToolError("every model failed: " + "; ".join(f"{label}: {msg}" for label, msg in failures))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, out / f"{prefix}.csv", topk)
    markdown = _markdown(rows, fractions, topk, seed, prefix, max_lengths)
    (out / f"{prefix}.md").write_text(markdown, encoding="utf-8")
    _plot(rows, fractions, topk, out / f"{prefix}.png")
    return rows


def _write_csv(rows, path, topk):
    columns = ["model", "base_model", "dataset", "run", "perturbation", "p", "bucket", "users"]
    columns += [f"recall@{topk}", f"ndcg@{topk}", "checkpoint", "error"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _ok(rows):
    return [r for r in rows if not r["error"]]


def mean_sd(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value) over runs."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) >= 2 else None)


def _runs(rows) -> dict:
    """label -> number of runs that were evaluated."""
    runs = {}
    for r in _ok(rows):
        runs.setdefault(r["model"], set()).add(r["run"])
    return {label: len(numbers) for label, numbers in runs.items()}


def _values(rows, metric) -> dict:
    """(label, perturbation, p or bucket) -> the metric of every run (empty buckets left out)."""
    values = {}
    for r in _ok(rows):
        key = (r["model"], r["perturbation"], r["bucket"] if r["perturbation"] == LENGTH else r["p"])
        values.setdefault(key, [])
        if r[metric] != "":
            values[key].append(r[metric])
    return values


def _cell(values, clean_mean=None) -> str:
    if not values:
        return "–"
    mean, sd = mean_sd(values)
    text = f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")
    return text + (f" ({mean / clean_mean:.0%})" if clean_mean else "")


def _title(metric: str) -> str:
    return metric.replace("recall", "Recall").replace("ndcg", "NDCG")


def _markdown(rows, fractions, topk, seed, prefix, max_lengths=None) -> str:
    runs = _runs(rows)
    models = list(runs)
    noisy = [p for p in fractions if p > 0]
    lines = [
        f"# Robustness to noisy test histories (seed {seed})",
        "",
        f"Test-set Recall@{topk} and NDCG@{topk} when a fraction p of every test history is dropped or replaced by",
        "random items (`python -m recbole_cmi robustness`); in brackets: the share of the clean (p = 0) value kept.",
    ]
    if any(n >= 2 for n in runs.values()):
        lines += [
            "With several runs (seeds) of a model: the mean over its `runs` ± their sample sd; every run sees the",
            f"same perturbed histories (seed {seed}); the share kept is that of the means.",
        ]
    lines += ["", f"![Recall@{topk} vs p]({prefix}.png)", ""]
    for metric in (f"recall@{topk}", f"ndcg@{topk}"):
        values = _values(rows, metric)
        header = ["model", "runs", "clean"] + [f"drop {p:g}" for p in noisy] + [f"replace {p:g}" for p in noisy]
        lines += [f"## {_title(metric)}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        for model in models:
            clean = values.get((model, "drop", 0.0))
            clean_mean = mean_sd(clean)[0] if clean else None
            cells = [model, str(runs[model]), _cell(clean)]
            for mode in MODES:
                cells += [_cell(values.get((model, mode, p)), clean_mean) for p in noisy]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if any(r["perturbation"] == LENGTH for r in _ok(rows)):
        lines += _length_table(rows, topk, runs, max_lengths or {})
    failed = [r for r in rows if r["error"]]
    if failed:
        several = {r["model"] for r in rows if r["run"] > 1}
        lines += ["## Failed", ""]
        lines += [f"- {r['model']}{_run_of(r, several)}: {r['error']}" for r in failed] + [""]
    return "\n".join(lines)


def _run_of(row, several) -> str:
    return f" (run {row['run']}, {row['checkpoint']})" if row["model"] in several else ""


def _length_table(rows, topk, runs, max_lengths) -> list[str]:
    metrics = (f"recall@{topk}", f"ndcg@{topk}")
    values = {metric: _values(rows, metric) for metric in metrics}
    buckets = list(dict.fromkeys(r["bucket"] for r in _ok(rows) if r["perturbation"] == LENGTH))
    users = {}
    for r in _ok(rows):
        if r["perturbation"] == LENGTH:
            users.setdefault((r["model"], r["bucket"]), set()).add(int(r["users"]))
    cut = sorted(set(max_lengths.values()))
    cut_text = (
        ", ".join(str(n) for n in cut) if len(cut) == 1 else ", ".join(f"{m} {n}" for m, n in max_lengths.items())
    )
    lines = [
        "## By history length",
        "",
        "The clean test users split by the length of the model's input history (`item_length` of their test row).",
        f'Histories longer than MAX_ITEM_LIST_LENGTH ({cut_text}) are cut to it: the last bucket is "at least" that',
        "long, and a bucket above it is empty. `test users`: those in the bucket (one number per run if they differ).",
        "",
        "| model | runs | history length | test users | " + " | ".join(_title(m) for m in metrics) + " |",
        "|" + "---|" * (4 + len(metrics)),
    ]
    for model in runs:
        for bucket in buckets:
            if (model, bucket) not in users:
                continue
            count = "/".join(str(n) for n in sorted(users[(model, bucket)]))
            cells = [model, str(runs[model]), bucket.replace("-", "–").replace(">=", "≥ "), count]
            cells += [_cell(values[metric].get((model, LENGTH, bucket))) for metric in metrics]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _plot(rows, fractions, topk, path):
    plt = pyplot()
    metric = f"recall@{topk}"
    values = _values(rows, metric)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    runs = _runs(rows)
    for ax, mode in zip(axes, MODES):
        for model, count in runs.items():
            points = [(p, mean_sd(values[(model, mode, p)])) for p in fractions if values.get((model, mode, p))]
            x = [p for p, _ in points]
            y = [mean for _, (mean, _) in points]
            if count >= 2:
                sd = [s or 0.0 for _, (_, s) in points]
                ax.errorbar(x, y, yerr=sd, marker="o", capsize=3, label=f"{model} (mean ± sd, {count} runs)")
            else:
                ax.plot(x, y, marker="o", label=model)
        ax.set_title(f"{mode} a fraction p of the history")
        ax.set_xlabel("p")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"Recall@{topk} (test)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
