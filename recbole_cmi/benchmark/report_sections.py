"""The sections of the accuracy benchmark's markdown table: the results table, the paired comparison, both ranking
conventions, the validation curves and the tuned values (:mod:`recbole_cmi.benchmark.report` puts them together).
"""

from __future__ import annotations

import json

from recbole_cmi.benchmark.report_runs import (
    ALT_PREFIX,
    CURVE_METRIC,
    TEST_PREFIX,
    best_point,
    cell_flag,
    convention_rows,
    excludes_history,
    hit_cap,
    metric_label,
    run_curve,
)
from recbole_cmi.benchmark.report_stats import (
    MAIN_METRICS,
    REFERENCE_MODEL,
    ModelSummary,
    curve_runs,
    format_mean_std,
    format_p,
    paired_t_test,
    paired_values,
    reference_model,
    summarize,
)
from recbole_cmi.markdown import markdown_table

CONVENTION_KEYS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50")
CONVENTION_NAMES = {True: "history excluded", False: "history ranked"}


def ordered_metrics(summaries: list[ModelSummary], metrics: list[str] | None, topk: list[int] | None) -> list[str]:
    """Table columns: ``metrics`` x ``topk`` in that order when given, then anything else measured."""
    measured = []
    for summary in summaries:
        measured += [key for key in summary.metrics if key not in measured]
    preferred = [f"{m.lower()}@{k}" for m in (metrics or []) for k in (topk or [])]
    return [key for key in preferred if key in measured] + [key for key in measured if key not in preferred]


def results_table(summaries: list[ModelSummary], metrics: list[str] | None, topk: list[int] | None) -> list[str]:
    """The markdown table: one row per model; the best mean of each metric in bold."""
    keys = ordered_metrics(summaries, metrics, topk)
    cuda = any(s.cuda_peak is not None for s in summaries)  # a column only where a run used a GPU
    header = ["model", *(metric_label(k) for k in keys), "epochs run", "best epoch", "at cap"]
    header += ["train s/epoch", "eval s"]
    header += ["peak RSS MiB", *(["peak CUDA MiB"] if cuda else []), "runs ok"]
    rows = []
    metric_cells = bold_best_cells(summaries, keys)
    for s in summaries:
        cells = [s.model, *metric_cells[s.model]]
        cells += [
            format_mean_std(s.epochs, 1),
            format_mean_std(s.best_epoch, 1),
            f"**{s.epochs_capped}/{s.ok} ⚠**" if s.epochs_capped else f"0/{s.ok}",
            format_mean_std(s.train_s, 1),
            format_mean_std(s.eval_s, 2),
            format_mean_std(s.peak_rss, 0),
            *([format_mean_std(s.cuda_peak, 0)] if cuda else []),
            f"{s.ok}/{s.runs}",
        ]
        rows.append(cells)
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1)).split("\n")


def bold_best_cells(summaries: list[ModelSummary], keys: list[str]) -> dict[str, list[str]]:
    """Per model, its ``mean ± std`` cell of every key; the best mean of each key in bold (with two models or more)."""
    best = {}
    for key in keys:
        means = [s.metrics[key][0] for s in summaries if key in s.metrics]
        best[key] = max(means) if means else None
    cells = {}
    for s in summaries:
        cells[s.model] = []
        for key in keys:
            text = format_mean_std(s.metrics.get(key))
            if key in s.metrics and best[key] is not None and s.metrics[key][0] == best[key] and len(summaries) > 1:
                text = f"**{text}**"
            cells[s.model].append(text)
    return cells


def paired_keys(measured: list[str], valid_metric: str | None) -> list[str]:
    """Metrics to compare: Recall@20 and NDCG@20 (else the first two measured), then the validation metric."""
    keys = [key for key in MAIN_METRICS if key in measured] or list(measured[:2])
    valid = str(valid_metric).lower() if valid_metric else None
    if valid in measured and valid not in keys:
        keys.append(valid)
    return keys


def paired_section(rows: list[dict], models: list[str], keys: list[str], valid_metric: str | None) -> list[str]:
    """``## Paired comparison``: the reference model against every other, per metric, paired by seed."""
    if len(models) < 2 or not keys:
        return []
    reference = reference_model(models)
    heading = f"## Paired comparison ({reference} − baseline, paired by seed)"
    if reference != REFERENCE_MODEL:
        heading = (
            f"## Paired comparison ({reference} − baseline, paired by seed; {REFERENCE_MODEL} was not run, so the "
            f"first model listed, {reference}, is compared with the others)"
        )
    valid = str(valid_metric).lower() if valid_metric else None
    lines = [
        heading,
        "",
        f"Per baseline and test metric: the mean over seeds of {reference}'s value minus the baseline's, over the "
        "n seeds where both runs finished, and the two-sided paired t-test p-value (`scipy.stats.ttest_rel`, "
        "n − 1 degrees of freedom). With few seeds the test has little power: a large p-value is no evidence "
        "that the two are equal."
        + (f" {metric_label(valid)} is the validation metric (test values here)." if valid in keys else ""),
        "",
    ]
    cells = []
    for baseline in models:
        if baseline == reference:
            continue
        for key in keys:
            _, ours, theirs = paired_values(rows, reference, baseline, TEST_PREFIX + key)
            test = paired_t_test(ours, theirs)
            diff = "–" if test.mean_diff is None else f"{test.mean_diff:+.4f}"
            p = test.note if test.p_value is None else format_p(test.p_value)
            cells.append([baseline, metric_label(key), diff, test.n, p])
    header = ["baseline", "metric", f"mean difference ({reference} − baseline)", "n", "p (two-sided)"]
    return lines + markdown_table(header, cells, "llrrl").split("\n")


def conventions_section(rows: list[dict], models: list[str]) -> list[str]:
    """``## Both ranking conventions``: the main metrics with history items excluded and ranked (one checkpoint
    per run), and the paired comparison under each; empty where no run was evaluated both ways."""
    if not any(row.get(key) not in (None, "") for row in rows for key in row if key.startswith(ALT_PREFIX)):
        return []
    views = {flag: convention_rows(rows, flag) for flag in (True, False)}
    summaries = {flag: summarize(view, models) for flag, view in views.items()}
    measured = {key for flag in views for s in summaries[flag] for key in s.metrics}
    keys = [key for key in CONVENTION_KEYS if key in measured]
    if not keys:
        return []
    cells = {flag: bold_best_cells(summaries[flag], keys) for flag in views}
    headline = sorted({CONVENTION_NAMES[flag] for flag in map(excludes_history, rows) if flag is not None})
    header = [f"excl. {metric_label(k)}" for k in keys] + [f"ranked {metric_label(k)}" for k in keys]
    lines = [
        "## Both ranking conventions",
        "",
        "The best checkpoint of every run evaluated on the test set twice: **excl.** = history items excluded from "
        "the ranking (the CMI authors' retrieval; on data without repeats a recommended history item is always a "
        "miss), **ranked** = history items ranked like any other (RecBole's default for sequential models). "
        f"Validation, early stopping and the checkpoint followed the configured convention ({', '.join(headline)}: "
        "the main table above). Mean ± sample std over seeds; best mean per column in bold.",
        "",
    ]
    table = [[s.model, *cells[True][s.model], *cells[False][s.model]] for s in summaries[True]]
    lines += markdown_table(["model", *header], table, "l" + "r" * len(header)).split("\n")
    reference = reference_model([s.model for s in summaries[True]])
    baselines = [s.model for s in summaries[True] if s.model != reference]
    paired_metrics = [key for key in MAIN_METRICS if key in keys]
    if not baselines or not paired_metrics:
        return lines
    lines += [
        "",
        f"Paired by seed ({reference} − baseline; two-sided paired t-test, `scipy.stats.ttest_rel`):",
        "",
    ]
    table = []
    for baseline in baselines:
        for key in paired_metrics:
            cells_of_pair = []
            for flag in (True, False):
                _, ours, theirs = paired_values(views[flag], reference, baseline, TEST_PREFIX + key)
                test = paired_t_test(ours, theirs)
                diff = "–" if test.mean_diff is None else f"{test.mean_diff:+.4f}"
                cells_of_pair += [diff, str(test.n), test.note if test.p_value is None else format_p(test.p_value)]
            table.append([baseline, metric_label(key), *cells_of_pair])
    header = ["baseline", "metric", "excl.: mean difference", "n", "p", "ranked: mean difference", "n", "p"]
    return lines + markdown_table(header, table, "llrrlrrl").split("\n")


def curves_section(rows: list[dict], models: list[str], image: str | None) -> list[str]:
    """``## Validation curves``: the chart and, per model, the run it draws: when it was best and how it ended."""
    picked = curve_runs(rows, models)
    if not picked:
        return []
    label = metric_label(CURVE_METRIC)
    lines = ["## Validation curves (one seed per model)", ""]
    if image:
        lines += [f"![validation curves]({image})", ""]
    lines += [
        f"Validation {label} after every epoch against the training seconds so far (validation not counted; "
        "wall-clock, so other processes on the machine slow a run down); the circle marks the best epoch, the "
        "checkpoint that was tested. Every run's curve is in the csv (`valid_curve`).",
        "",
    ]
    table = []
    for row in picked:
        curve = run_curve(row)
        best = best_point(curve)
        ended = "**epoch cap ⚠**" if hit_cap(row) else "early stopping" if cell_flag(row.get("stopped_early")) else "–"
        at_best = "–" if best is None else f"{best[1]:.1f}"
        score = "–" if best is None or best[2] is None else f"{best[2]:.4f}"
        cells = [row["model"], row["seed"], row.get("epochs_run", ""), "–" if best is None else best[0], score]
        cells += [at_best, f"{curve['train_s'][-1]:.1f}", ended]
        table.append(cells)
    header = ["model", "seed", "epochs run", "best epoch", f"best valid {label}", "train s to best epoch"]
    header += ["train s in all", "ended by"]
    return lines + markdown_table(header, table, "lrrrrrrl").split("\n")


def tuned_section(rows: list[dict], models: list[str], tuned: str | None) -> list[str]:
    """``## Tuned values``: per model the tuned file its runs read and the values in it (or its defaults)."""
    order = list(models) + sorted({row["model"] for row in rows} - set(models))
    finished = [row for row in rows if row.get("status") == "ok"]
    if not finished:
        return []
    if tuned:
        intro = (
            f"Every model ran with its file in `{tuned}` (`--tuned`) over its published defaults "
            "(`properties/model/<Model>.yaml`, RecBole's own for core models); the package's own tuned layer was off "
            "(`use_tuned_values: False`). *How chosen* is the file's header comment: `python -m recbole_cmi.benchmark "
            "tune` writes there the search that produced the values, the same search for every model; a file "
            "written by hand says where its values come from."
        )
    else:
        intro = (
            "Runs read the package's tuned layer (`properties/tuned/<dataset>/<Model>.yaml`, each file's header "
            "names the search that produced it) where one exists; the other models ran their published defaults."
        )
    table = []
    for model in order:
        runs = [row for row in finished if row["model"] == model]
        variants: dict[tuple, int] = {}
        for row in runs:
            key = (row.get("tuned_file") or "", row.get("tuned_values") or "", row.get("tuned_header") or "")
            variants[key] = variants.get(key, 0) + 1
        variant = next((row.get("variant") for row in runs if row.get("variant")), "")
        name = f"{model} (`{variant}`)" if variant and variant != model else model  # a variant's own settings
        for (path, values, header), count in variants.items():
            shown = _tuned_values_text(values) if path else "– (published defaults)"
            table.append([name, path or "–", shown, _first_sentence(header) if path else "–", count])
    table_text = markdown_table(["model", "tuned file", "values", "how chosen", "runs"], table, "llllr")
    return ["## Tuned values", "", intro, "", *table_text.split("\n")]


def _first_sentence(text: str, limit: int = 200) -> str:
    """A tuned file's header, shortened for a table cell: its first sentence, at most ``limit`` characters (the csv
    keeps all of it, ``tuned_header``)."""
    text = " ".join(text.split())
    if not text:
        return "–"
    end = text.find(". ")
    sentence = text if end < 0 else text[: end + 1]
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


def _tuned_values_text(values: str) -> str:
    try:
        mapping = json.loads(values) if values else {}
    except ValueError:
        return values
    if not isinstance(mapping, dict):
        return values
    return ", ".join(f"{key}: {value}" for key, value in mapping.items()) or "(empty file)"
