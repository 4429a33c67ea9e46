"""Robustness to noisy histories (docs/cmi.md §6.3, a guessed design): perturb the test inputs, re-evaluate.

For each p, a fraction p of every test history's items is dropped at random (at least one item
is kept), or separately replaced by random other items. The perturbation is applied once to the
whole test split (so it does not depend on ``eval_batch_size``), and the perturbed split goes
through RecBole's own ``Trainer.evaluate``. Every (p, mode) draws from a fresh generator seeded
with ``seed``: all models see the same perturbed histories, and the items dropped (replaced) at
a smaller p are among those dropped (replaced) at a larger one. Only ``item_id_list`` and
``item_length`` change; other list fields (timestamps) are left as they were: no model reads them.
"""

from __future__ import annotations

import copy
import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from recbole_cmi.cli import parse_model_variants, split_top_level
from recbole_cmi.tools.common import ToolError, load, pyplot

MODES = ("drop", "replace")

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


def perturbed_loader(test_data, config, p: float, mode: str, seed: int, n_items: int):
    """A copy of ``test_data`` whose histories (``item_id_list``, ``item_length``) are perturbed.

    RecBole's loaders are rebuilt (same class) on a copy of their dataset; a loader that holds its
    model input as ``interaction`` (``eval_protocol: multi_target``) is copied with a new one.
    """
    from recbole.data.interaction import Interaction

    seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    len_field = config["ITEM_LIST_LENGTH_FIELD"]
    holds_input = hasattr(test_data, "interaction") and not hasattr(test_data, "_sampler")
    inter = test_data.interaction if holds_input else test_data._dataset.inter_feat
    if seq_field not in inter.interaction or len_field not in inter.interaction:
        raise ToolError(f"the test data of {config['model']} has no '{seq_field}': only histories can be perturbed")
    generator = torch.Generator().manual_seed(int(seed))
    new_seq, new_len = perturb_histories(inter[seq_field], inter[len_field], p, mode, generator, n_items)
    fields = dict(inter.interaction)
    fields[seq_field], fields[len_field] = new_seq, new_len
    if holds_input:
        loader = copy.copy(test_data)
        loader.interaction = Interaction(fields)
        loader.metrics, loader.topk = ["recall", "ndcg"], list(config["topk"])  # read when it was built
        return loader
    dataset = test_data._dataset.copy(Interaction(fields))
    return type(test_data)(config, dataset, test_data._sampler, shuffle=False)


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
    """``"a.pth,Label=b.pth"`` -> specs; an unlabelled checkpoint is named after its model (or alias)."""
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
def evaluate_under_noise(checkpoint, fractions, seed: int, topk: int = 20, trust: bool = False):
    """``(config, {(mode, p): {"recall@k": .., "ndcg@k": ..}})`` for one checkpoint on its test split."""
    from recbole.utils import ModelType

    from recbole_cmi.trainer import get_trainer

    config, model, dataset, _, _, test_data = load(checkpoint, trust)
    n_items = dataset.item_num - 1
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        raise ToolError(f"{config['model']} is not a sequential model: the study perturbs histories")
    if topk > n_items:
        raise ToolError(f"--topk {topk} is above the {n_items} items of dataset '{config['dataset']}'")
    config["metrics"] = ["Recall", "NDCG"]
    config["topk"] = [topk]
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    results, clean = {}, None
    for mode in MODES:
        for p in fractions:
            if p == 0 and clean is not None:
                results[(mode, p)] = clean  # both perturbations are the identity at p = 0
                continue
            loader = perturbed_loader(test_data, config, p, mode, seed, dataset.item_num)
            metrics = trainer.evaluate(loader, load_best_model=False)
            results[(mode, p)] = {key: float(value) for key, value in metrics.items()}
            if p == 0:
                clean = results[(mode, p)]
    return config, results


def run_study(specs, dataset, fractions, seed=2022, out="reports/robustness", prefix="robustness", **kwargs):
    """Train (or load) every model, evaluate it under noise, write ``<prefix>.{csv,md,png}`` into ``out``.

    ``kwargs``: ``config_files``, ``config_dict`` (shared by every trained model; a spec's own
    keys win), ``topk`` and ``trust_checkpoint``. A model that fails is reported (``error``) and
    the others go on; a given checkpoint that cannot be read safely stops the study before any
    training (a :class:`recbole_cmi.errors.CheckpointError`).
    Returns the rows written to the csv.
    """
    from recbole_cmi.checkpoint import load_checkpoint
    from recbole_cmi.quick_start import run_recbole_cmi

    trust = bool(kwargs.get("trust_checkpoint", False))
    for spec in specs:  # the user's files first: a refused one should not wait for hours of training
        if spec.checkpoint is not None:
            load_checkpoint(spec.checkpoint, trust=trust)
    config_files = kwargs.get("config_files")
    shared = dict(kwargs.get("config_dict") or {})
    topk = int(kwargs.get("topk", 20))
    rows, failures, labels = [], [], set()
    for spec in specs:
        label = spec.label or spec.checkpoint
        try:
            checkpoint = spec.checkpoint
            if checkpoint is None:
                print(f"[robustness] training {label} ({spec.model}, {spec.overrides or 'defaults'})", file=sys.stderr)
                result = run_recbole_cmi(spec.model, dataset, config_files, {**shared, **spec.overrides}, saved=True)
                checkpoint = result["saved_model_file"]
            print(f"[robustness] evaluating {label}: {checkpoint}", file=sys.stderr)
            config, results = evaluate_under_noise(
                checkpoint, fractions, seed, topk, trust and spec.checkpoint is not None
            )
            label = spec.label or checkpoint_label(config)
            while label in labels:
                label += "'"
            for (mode, p), metrics in results.items():
                rows.append(
                    {
                        "model": label,
                        "base_model": config["model"],
                        "dataset": config["dataset"],
                        "perturbation": mode,
                        "p": p,
                        f"recall@{topk}": metrics[f"recall@{topk}"],
                        f"ndcg@{topk}": metrics[f"ndcg@{topk}"],
                        "checkpoint": str(checkpoint),
                        "error": "",
                    }
                )
        except Exception as err:  # one model's failure must not lose the others
            message = (str(err).strip().splitlines() or [""])[0]
            message = f"{type(err).__name__}: {message}" if not isinstance(err, ToolError) else message
            print(f"[robustness] {label} failed: {message}", file=sys.stderr)
            failures.append((label, message))
            rows.append({"model": label, "base_model": spec.model or "", "error": message})
        labels.add(label)
    if len(failures) == len(specs):
        raise ToolError("every model failed: " + "; ".join(f"{label}: {msg}" for label, msg in failures))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, out / f"{prefix}.csv", topk)
    (out / f"{prefix}.md").write_text(_markdown(rows, fractions, topk, seed, prefix), encoding="utf-8")
    _plot(rows, fractions, topk, out / f"{prefix}.png")
    return rows


def _write_csv(rows, path, topk):
    columns = ["model", "base_model", "dataset", "perturbation", "p", f"recall@{topk}", f"ndcg@{topk}"]
    columns += ["checkpoint", "error"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _ok(rows):
    return [r for r in rows if not r["error"]]


def _markdown(rows, fractions, topk, seed, prefix) -> str:
    models = list(dict.fromkeys(r["model"] for r in _ok(rows)))
    value = {(r["model"], r["perturbation"], r["p"]): r for r in _ok(rows)}
    noisy = [p for p in fractions if p > 0]
    lines = [
        f"# Robustness to noisy test histories (seed {seed})",
        "",
        f"Test-set Recall@{topk} and NDCG@{topk} when a fraction p of every test history is dropped or replaced by",
        "random items (`python -m recbole_cmi.robustness`); in brackets: the share of the clean (p = 0) value kept.",
        "",
        f"![Recall@{topk} vs p]({prefix}.png)",
        "",
    ]
    for metric in (f"recall@{topk}", f"ndcg@{topk}"):
        header = ["model", "clean"] + [f"drop {p:g}" for p in noisy] + [f"replace {p:g}" for p in noisy]
        title = metric.replace("recall", "Recall").replace("ndcg", "NDCG")
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        for model in models:
            clean = value.get((model, "drop", 0.0))
            cells = [model, f"{clean[metric]:.4f}" if clean else "–"]
            for mode in MODES:
                for p in noisy:
                    row = value.get((model, mode, p))
                    if row is None:
                        cells.append("–")
                        continue
                    kept = f" ({row[metric] / clean[metric]:.0%})" if clean and clean[metric] > 0 else ""
                    cells.append(f"{row[metric]:.4f}{kept}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["## Failed", ""] + [f"- {r['model']}: {r['error']}" for r in failed] + [""]
    return "\n".join(lines)


def _plot(rows, fractions, topk, path):
    plt = pyplot()
    metric = f"recall@{topk}"
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    models = list(dict.fromkeys(r["model"] for r in _ok(rows)))
    for ax, mode in zip(axes, MODES):
        for model in models:
            points = sorted((r["p"], r[metric]) for r in _ok(rows) if r["model"] == model and r["perturbation"] == mode)
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=model)
        ax.set_title(f"{mode} a fraction p of the history")
        ax.set_xlabel("p")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"Recall@{topk} (test)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
