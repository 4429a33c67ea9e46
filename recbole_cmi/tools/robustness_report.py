"""The robustness study's files: ``<prefix>.csv`` (one row per model run and perturbation or history-length
bucket), ``<prefix>.md`` (per label the mean over its runs ± their sample sd, and the share of the clean value
kept) and ``<prefix>.png`` (Recall@k against p, per perturbation). An earlier study's csv can be read back
(:func:`read_study_csv`) and published with a new one (``--merge``): the csv records the perturbation seed, so
runs evaluated in different processes are merged only when they saw the same perturbed histories.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from recbole_cmi.tools.common import pyplot
from recbole_cmi.tools.robustness_loaders import MODES

LENGTH = "length"  # the ``perturbation`` of the csv rows of the history-length buckets


def write_study(rows, out: Path, prefix: str, fractions, topk: int, seed: int, max_lengths) -> None:
    """``<prefix>.csv``, ``<prefix>.md`` and ``<prefix>.png`` of the study's ``rows`` into the folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / f"{prefix}.csv", topk)
    markdown = report_markdown(rows, fractions, topk, seed, prefix, max_lengths)
    (out / f"{prefix}.md").write_text(markdown, encoding="utf-8")
    write_plot(rows, fractions, topk, out / f"{prefix}.png")


def read_study_csv(path, topk: int, seed: int) -> list[dict]:
    """The rows of an earlier study's ``<prefix>.csv``, typed as :func:`result_rows` makes them (``--merge``).

    Refused with one line (a :class:`recbole_cmi.tools.common.ToolError` naming the file and line) when the file
    is missing or not a study csv, was written with another ``--topk``, or its perturbations used another seed
    (or none was recorded: written before the csv had the column).
    """
    from recbole_cmi.tools.common import ToolError

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            found = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ToolError(f"--merge: cannot read {path}: {err}") from err
    missing = [c for c in CSV_COLUMNS if c not in columns]
    if missing and set(missing) <= {"seed", "max_length"}:
        raise ToolError(f"--merge: {path} records no perturbation seed (written before the csv had one): rerun it")
    if missing:
        raise ToolError(f"--merge: {path} is not a robustness study csv (no {', '.join(missing)} column)")
    metrics = [f"recall@{topk}", f"ndcg@{topk}"]
    if any(c not in columns for c in metrics):
        raise ToolError(f"--merge: {path} has no {metrics[0]} column: a study with another --topk")
    rows = []
    for line, row in enumerate(found, start=2):
        if row["seed"] != str(seed):
            raise ToolError(f"--merge: {path} line {line}: perturbation seed {row['seed']}, this study's is {seed}")
        try:
            typed = {**row, "run": int(row["run"]), "seed": int(row["seed"])}
            typed["p"] = float(row["p"]) if row["p"] != "" else ""
            typed["users"] = int(row["users"]) if row["users"] != "" else ""
            typed["max_length"] = int(row["max_length"]) if row["max_length"] != "" else ""
            for metric in metrics:
                typed[metric] = float(row[metric]) if row[metric] != "" else ""
        except (TypeError, ValueError) as err:
            raise ToolError(f"--merge: {path} line {line}: {err}") from err
        rows.append(typed)
    return rows


def merge_runs(studies: list[list[dict]]) -> list[dict]:
    """The rows of several studies as one: each label's runs numbered 1, 2, ... in the order given.

    The same checkpoint evaluated twice under one label is refused (it would count as two seeds).
    """
    from recbole_cmi.tools.common import ToolError

    merged, next_run, seen = [], {}, set()
    for rows in studies:
        renumber = {}
        for row in rows:
            key = (row["model"], row["run"])
            if key not in renumber:
                renumber[key] = next_run[row["model"]] = next_run.get(row["model"], 0) + 1
                checkpoint = (row["model"], row["checkpoint"])
                if row["checkpoint"] and checkpoint in seen:
                    raise ToolError(f"--merge: {row['checkpoint']} appears twice under {row['model']}")
                seen.add(checkpoint)
            merged.append({**row, "run": renumber[key]})
    return merged


def result_rows(base: dict, results: dict, topk: int, checkpoint) -> list[dict]:
    """The csv rows of one evaluated run: ``base`` (its model, run, ...) and, per ``(perturbation, p or bucket)``
    of ``results`` (:func:`recbole_cmi.tools.robustness.evaluate_under_noise`), its users and metrics."""
    return [
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
        for (mode, key), metrics in results.items()
    ]


CSV_COLUMNS = ("model", "base_model", "dataset", "run", "perturbation", "p", "bucket", "users")
CSV_COLUMNS += ("checkpoint", "error", "seed", "max_length")  # and recall@k, ndcg@k after "users"


def write_csv(rows, path, topk):
    columns = list(CSV_COLUMNS[:8]) + [f"recall@{topk}", f"ndcg@{topk}"] + list(CSV_COLUMNS[8:])
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


def report_markdown(rows, fractions, topk, seed, prefix, max_lengths=None) -> str:
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


def write_plot(rows, fractions, topk, path):
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
