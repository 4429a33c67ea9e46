"""The accuracy benchmark's markdown table, ``<dataset>/<protocol>.md``, and its charts, made from the csv rows.

``<dataset>/<protocol>.csv`` (:mod:`recbole_cmi.benchmark.report_runs`) holds one row per (model, seed) run,
finished or failed; ``<dataset>/<protocol>.md`` is computed from those rows only: per model the mean ± sample
standard deviation (n - 1 in the denominator) over the seeds that finished, of every test metric, the
epochs run, the best epoch, the runs that reached the epoch cap, the training seconds per epoch, the
test evaluation seconds and the peak memory; both ranking conventions (history items excluded or
ranked: ``test_*`` as configured, ``alt_test_*`` the other, from the same checkpoint); a paired
t-test of CMI against each baseline over the seeds; the validation curves (NDCG@20 against training
seconds, one seed per model); the tuned values each model ran with; the command, the shared config,
package versions and the machine. ``<protocol>.png`` charts two test metrics per model and
``<protocol>-curves.png`` the validation curves (only where matplotlib is installed). All are
rewritten atomically (temp file + rename) after every run. The statistics are in
:mod:`~recbole_cmi.benchmark.report_stats`, the sections in :mod:`~recbole_cmi.benchmark.report_sections`, the
charts in :mod:`~recbole_cmi.benchmark.report_charts`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from recbole_cmi.benchmark.report_charts import chart_keys, write_chart, write_curves_chart
from recbole_cmi.benchmark.report_runs import cell_number
from recbole_cmi.benchmark.report_sections import (
    conventions_section,
    curves_section,
    ordered_metrics,
    paired_keys,
    paired_section,
    results_table,
    tuned_section,
)
from recbole_cmi.benchmark.report_stats import (
    ModelSummary,
    curve_runs,
    kept_runs,
    seeds_in_table,
    summarize,
    uneven_seeds,
)
from recbole_cmi.files import plain, write_text
from recbole_cmi.machine import machine_text, versions_text
from recbole_cmi.markdown import markdown_table


def write_report(
    md_path: Path, rows: list[dict], meta: dict, chart_path: Path | None = None, curves_path: Path | None = None
) -> tuple[str | None, str | None]:
    """The charts (where their paths are given) and then the markdown that shows them.

    Returns why the test-metric chart and why the validation-curve chart were not drawn: None where it was drawn
    (or not asked for), ``""`` where no run had a validation curve to draw.
    """
    why = curves_why = None
    meta = dict(meta, chart_name=None, curves_name=None)
    title = f"{meta['dataset']}, protocol {meta['protocol']}"
    if chart_path is not None:
        summaries = summarize(rows, meta["models"])
        keys = chart_keys(ordered_metrics(summaries, meta.get("metrics"), _topk(meta)))
        why = write_chart(chart_path, summaries, keys, title)
        if why is None:
            meta["chart_name"] = Path(chart_path).name  # relative: the png lies next to the md
    picked = curve_runs(rows, meta["models"]) if curves_path is not None else []
    if picked:  # runs of earlier versions recorded no curve: then nothing is drawn, and nothing said
        curves_why = write_curves_chart(curves_path, picked, f"{title}: validation")
        if curves_why is None:
            meta["curves_name"] = Path(curves_path).name
    elif curves_path is not None:
        curves_why = ""
    write_text(md_path, markdown(rows, meta))
    return why, curves_why


def _topk(meta: dict) -> list | None:
    topk = meta["shared_config"].get("topk")
    return topk if isinstance(topk, list) else [topk] if topk else None


def markdown(rows: list[dict], meta: dict) -> str:
    """The whole report; ``meta`` holds what the rows do not (see ``accuracy.report_meta``)."""
    summaries = summarize(rows, meta["models"])
    lines = _header_lines(rows, meta, summaries)
    lines += _results_lines(rows, meta, summaries)
    lines += _reproduce_lines(rows, meta)
    lines += [
        "## Environment",
        "",
        f"- packages: {versions_text(meta['versions'])}",
        f"- machine: {machine_text(meta['machine'])}",
        *_load_line(rows, meta["machine"].get("usable_cpus")),
        f"- written: {meta['written']}; per-run numbers: `{meta['csv_name']}`",
        "",
    ]
    return "\n".join(lines)


def _header_lines(rows: list[dict], meta: dict, summaries: list[ModelSummary]) -> list[str]:
    """The title, the note, and how the runs were made: protocol, training, epoch cap, seeds, cost."""
    shared = meta["shared_config"]
    epochs = _setting(shared, rows, "epochs")
    stopping_step = _setting(shared, rows, "stopping_step")
    lines = [f"# {meta['title']}", ""]
    if meta.get("note"):
        lines += [f"> {meta['note']}", ""]
    capped = sum(s.epochs_capped for s in summaries)
    finished = sum(s.ok for s in summaries)
    protocol_text = meta["protocol_text"].replace(
        "{history}", _history_rule(_setting(shared, rows, "exclude_history_items"))
    )
    return lines + [
        f"- **Protocol** ({meta['protocol']}): {protocol_text}",
        f"- **Training**: at most {epochs} epochs per run (epoch cap); validation after every epoch; early stopping "
        f"after {stopping_step} validations without improvement of valid "
        f"{shared.get('valid_metric')}; the test set is evaluated once, with the best validation checkpoint.",
        f"- **Epoch cap reached** by {capped} of {finished} finished runs"
        + (
            " (those runs may not have converged: flagged ⚠ in the `at cap` column; raise `--epochs` and run "
            "them again)."
            if capped
            else " (every run was ended by early stopping)."
            if finished
            else "."
        ),
        f"- **Seeds**: {', '.join(str(s) for s in seeds_in_table(rows, meta['seeds']))}"
        f"{uneven_seeds(rows, meta['seeds'])}; cells are "
        "mean ± sample standard deviation "
        "(n − 1) over the seeds that finished (a single value when one did); best mean per column in bold.",
        "- **Cost** (wall-clock, per run): train s/epoch is a training epoch; eval s the test-set evaluation "
        "(loading the best checkpoint, then ranking); peak RSS MiB the run's process at its largest (Python, "
        "torch, the dataset and the model together); peak CUDA MiB (shown only when a run used a GPU) "
        "`torch.cuda.max_memory_allocated`. The csv also has valid_s_per_epoch, a validation evaluation.",
        "",
    ]


def _results_lines(rows: list[dict], meta: dict, summaries: list[ModelSummary]) -> list[str]:
    """The dataset's statistics, the test results and chart, then the sections and the failed runs."""
    shared = meta["shared_config"]
    topk = _topk(meta)
    lines = []
    if meta.get("dataset_stats"):
        stats = meta["dataset_stats"]
        keys = ("n_users", "n_items", "n_interactions", "n_valid_users", "n_test_users")
        header = ["dataset", "users", "items", "interactions", "valid users", "test users"]
        lines += [markdown_table(header, [[meta["dataset"], *(stats.get(key, "") for key in keys)]], "lrrrrr"), ""]
    lines += ["## Test results", ""]
    lines += results_table(summaries, meta.get("metrics"), topk) if summaries else ["No run has finished yet."]
    if meta.get("chart_name"):
        lines += ["", f"![chart]({meta['chart_name']})"]
    order = list(meta["models"]) + sorted({row["model"] for row in rows} - set(meta["models"]))
    keys = paired_keys(ordered_metrics(summaries, meta.get("metrics"), topk), shared.get("valid_metric"))
    paired = paired_section(rows, order, keys, shared.get("valid_metric"))
    if paired:
        lines += ["", *paired]
    for section in (
        conventions_section(rows, order),
        curves_section(rows, order, meta.get("curves_name")),
        tuned_section(rows, order, meta.get("tuned")),
    ):
        if section:
            lines += ["", *section]
    failed = [row for row in rows if row.get("status") != "ok"]
    if failed:
        table = [[r["model"], r["seed"], r.get("error", "")] for r in failed]
        lines += ["", "## Failed runs", "", markdown_table(["model", "seed", "error"], table, "lrl")]
    resolved = _resolved_settings(rows)
    if resolved:
        lines += ["", "## Per-model settings (resolved, from the runs)", ""]
        lines.append(markdown_table(["model", *RESOLVED_TABLE_KEYS], [[model, *values] for model, values in resolved]))
    return lines


def _reproduce_lines(rows: list[dict], meta: dict) -> list[str]:
    """The command, the runs kept from earlier invocations, the shared config and the config files."""
    lines = [
        "",
        "## Reproduce",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
    ]
    kept = kept_runs(rows, meta["models"], meta["seeds"])
    if kept:
        lines += [
            f"The table also keeps finished runs of the same shared config from earlier invocations (`--resume`), "
            f"outside this command's `--models` × `--seeds`: {'; '.join(kept)}. Rerun them with this command, "
            "`--models` and `--seeds` changed to cover them.",
            "",
        ]
    lines += [
        "Shared config (every model and seed; the seed varies):",
        "",
        "```yaml",
        yaml.safe_dump(plain(meta["shared_config"]), sort_keys=False, default_flow_style=None).rstrip(),
        "```",
        "",
    ]
    if meta.get("config_files"):
        lines += ["Config files: " + ", ".join(f"`{p}`" for p in meta["config_files"]), ""]
    return lines


def _history_rule(exclude) -> str:
    """How the loo ranking treats the input history, from the runs' ``exclude_history_items``."""
    if str(exclude) == "True":
        return "except the items of the input history (`exclude_history_items: True`, as the CMI authors' retrieval)"
    if str(exclude) == "False":
        return "history items included, as RecBole does for sequential models (`exclude_history_items: False`)"
    return f"`exclude_history_items`: {exclude}"


def _setting(shared: dict, rows: list[dict], key: str):
    """A shared setting as given, else as the finished runs resolved it (``a / b`` when they differ)."""
    if key in shared:
        return shared[key]
    values = []
    for row in rows:
        value = row.get(key)
        if row.get("status") == "ok" and value not in (None, "") and str(value) not in values:
            values.append(str(value))
    return " / ".join(values) if values else "?"


def _load_line(rows: list[dict], usable_cpus) -> list[str]:
    loads = []
    for row in rows:
        parts = str(row.get("loadavg") or "").split()
        if row.get("status") == "ok" and len(parts) == 3 and cell_number(parts[2]) is not None:
            loads.append(float(parts[2]))
    if not loads:
        return []
    return [
        f"- load: the 15-minute load average when a run ended was {min(loads):.1f} to {max(loads):.1f} on "
        f"{usable_cpus} usable cores (timings are wall-clock: above the core count, other processes shared the CPU)"
    ]


RESOLVED_TABLE_KEYS = ("learning_rate", "loss_type", "embedding_size", "hidden_size", "MAX_ITEM_LIST_LENGTH",
                       "train_batch_size", "device")  # fmt: skip


def _resolved_settings(rows: list[dict]) -> list[tuple[str, list]]:
    out, seen = [], set()
    for row in rows:
        if row.get("status") == "ok" and row["model"] not in seen:
            seen.add(row["model"])
            out.append((row["model"], [row.get(k, "") for k in RESOLVED_TABLE_KEYS]))
    return out
