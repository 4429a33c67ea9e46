"""The trial table of a search (one :class:`TrialRow` per Ray trial, best validation score first, and the best
trial chosen from it), and what a search leaves in its output folder, each file written atomically (temp file +
rename):

* ``trials.csv`` / ``trials.md``: one row per trial, best validation score first;
* ``best_config.yaml``: fixed config + the best trial's parameters + model + dataset, which
  ``run_recbole_cmi.py --config_files=best_config.yaml`` accepts and reproduces;
* ``best_test_result.json``: the best trial's checkpoint evaluated once on the test set (and
  on the validation set, all metrics);
* ``search.json``: the search's plan, read back by ``--resume``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from recbole_cmi.files import plain, write_json, write_text
from recbole_cmi.markdown import markdown_table
from recbole_cmi.tune.space import HyperParam
from recbole_cmi.tune.trial import best_key


@dataclass
class TrialRow:
    trial_id: str
    params: dict
    score: float | None
    best_epoch: int | None
    epochs_run: int | None
    status: str
    error: str = ""
    saved_model_file: str = ""
    rank: int = 0
    node_id: str = ""  # the Ray node of the trial's last report


def best_config(plan: dict, best: TrialRow) -> dict:
    return {"model": plan["model"], "dataset": plan["dataset"], **plan["fixed"], **best.params}


def write_outputs(output: Path, plan: dict, params, rows: list[TrialRow], best, valid_result, test_result) -> dict:
    """Write every output file; returns their paths by kind."""
    output = Path(output)
    files = {"trials_csv": output / "trials.csv", "trials_md": output / "trials.md"}
    write_text(files["trials_csv"], trials_csv(plan, params, rows))
    if best is not None:
        files["best_config"] = output / "best_config.yaml"
        files["best_test_result"] = output / "best_test_result.json"
        write_text(files["best_config"], best_config_yaml(plan, best, files["best_config"]))
        write_json(files["best_test_result"], best_summary(plan, best, valid_result, test_result))
    write_text(files["trials_md"], trials_markdown(plan, rows, best, test_result, files))
    return files


def best_summary(plan: dict, best: TrialRow, valid_result, test_result) -> dict:
    return {
        "model": plan["model"],
        "dataset": plan["dataset"],
        "trial_id": best.trial_id,
        "params": best.params,
        "valid_metric": plan["metric"],
        "best_valid_score": best.score,
        "best_epoch": best.best_epoch,
        "saved_model_file": best.saved_model_file,
        "valid_result": valid_result,
        "test_result": test_result,
    }


def best_config_yaml(plan: dict, best: TrialRow, path: Path) -> str:
    header = (
        f"# Best trial {best.trial_id} of a Ray Tune search over {plan['params_file']}:\n"
        f"# valid {plan['metric']} = {best.score} at epoch {best.best_epoch}. Reproduce it with\n"
        f"#   python run_recbole_cmi.py --model={plan['model']} --dataset={plan['dataset']} --config_files={path}\n"
    )
    return header + yaml.safe_dump(plain(best_config(plan, best)), sort_keys=False, default_flow_style=None)


def _columns(plan: dict, params) -> list[str]:
    names = [p.name for p in params]
    return [
        "rank",
        "trial_id",
        "status",
        *names,
        f"valid_{plan['metric']}",
        "best_epoch",
        "epochs_run",
        "saved_model_file",
        "node_id",
        "error",
    ]


def _cells(row: TrialRow, params) -> list:
    return [
        row.rank,
        row.trial_id,
        row.status,
        *(row.params.get(p.name) for p in params),
        row.score,
        row.best_epoch,
        row.epochs_run,
        row.saved_model_file,
        row.node_id,
        row.error,
    ]


def trials_csv(plan: dict, params, rows: list[TrialRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_columns(plan, params))
    for row in rows:
        writer.writerow(["" if cell is None else cell for cell in _cells(row, params)])
    return buffer.getvalue()


def _md(cell):
    """A trials-table cell: floats to 4 significant digits, the rest as is."""
    return f"{cell:.4g}" if isinstance(cell, float) else cell


def trials_markdown(plan: dict, rows: list[TrialRow], best, test_result, files: dict) -> str:
    settings = plan["settings"]
    names = list(rows[0].params) if rows else []
    lines = [
        f"# Search: {plan['model']} on {plan['dataset']}",
        "",
        f"- searched ({plan['params_file']}): " + "; ".join(plan["searched"]),
        f"- search: {settings['search']}, scheduler: {settings['scheduler']}, trials: {len(rows)}, "
        f"epochs per trial: at most {plan['epochs']}",
        f"- selection: best validation {plan['metric']} ({plan['mode']}) per trial; test set evaluated "
        "for the best trial only",
        "",
    ]
    table = []
    for row in rows:
        cells = [row.rank, row.trial_id, row.status, *(row.params.get(n) for n in names)]
        cells += [row.score, row.best_epoch, row.epochs_run, row.error]
        table.append([_md(c) for c in cells])
    header = ["rank", "trial", "status", *names, f"valid {plan['metric']}", "best epoch", "epochs", "error"]
    lines += [markdown_table(header, table), ""]
    unfinished = sum(row.status in ("unfinished", "not started") for row in rows)
    if best is None and unfinished:
        lines.append(
            f"No best trial yet: {unfinished} of {len(rows)} trials did not finish (the search was stopped; "
            "`--resume` continues it). The best is picked, and the test set evaluated, once every trial has ended."
        )
    elif best is None:
        lines.append("No best trial: no trial finished with a validation score.")
    else:
        lines += [
            f"Best trial: **{best.trial_id}**, valid {plan['metric']} = {best.score} (epoch {best.best_epoch}), "
            f"params: {json.dumps(best.params)}",
            "",
            f"- checkpoint: `{best.saved_model_file}`",
            f"- config: `{files['best_config']}`",
            "",
            "Test result of the best trial (evaluated once): "
            + ", ".join(f"{k} = {v:.4f}" for k, v in (test_result or {}).items()),
        ]
    return "\n".join(lines) + "\n"


def pick_best(rows: list[TrialRow]) -> TrialRow | None:
    """The first row of the sorted table that finished without error and left a checkpoint."""
    for row in rows:
        if row.status != "error" and row.score is not None and row.saved_model_file:
            return row
    return None


def collect_rows(grid, plan: dict, params: list[HyperParam]) -> list[TrialRow]:
    """One row per trial, best validation score first (ties by trial id, unscored trials last)."""
    metric, max_t = plan["metric"], plan["max_t"]
    scheduler = plan["settings"]["scheduler"]
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        score = metrics.get(best_key(metric))
        score = float(score) if score is not None and math.isfinite(float(score)) else None
        epoch = metrics.get("epoch")
        model_file = ""
        if result.checkpoint is not None and metrics.get("checkpoint_file"):
            model_file = os.path.join(result.checkpoint.path, metrics["checkpoint_file"])
        if result.error is not None:
            status = "error"
        elif epoch is None:
            status = "not started"
        elif metrics.get("training_iteration", 0) >= max_t:
            status = "completed"
        elif metrics.get("early_stop"):
            status = "early stop (stopping_step)"
        elif not metrics.get("done"):
            status = "unfinished"
        else:
            status = "stopped by ASHA" if scheduler == "asha" else "stopped"
        rows.append(
            TrialRow(
                trial_id=metrics.get("trial_id") or os.path.basename(str(result.path)),
                params={p.name: plain((result.config or {}).get(p.name)) for p in params},
                score=score,
                best_epoch=metrics.get("best_epoch"),
                epochs_run=None if epoch is None else int(epoch) + 1,
                status=status,
                error=_one_line_error(result.error),
                saved_model_file=model_file,
                node_id=metrics.get("node_id") or "",
            )
        )
    sign = -1 if plan["mode"] == "max" else 1
    rows.sort(key=lambda r: (r.score is None, 0 if r.score is None else sign * r.score, r.trial_id))
    for rank, row in enumerate(rows, start=1):
        row.rank = rank
    return rows


def _one_line_error(error) -> str:
    if error is None:
        return ""
    cause = error
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:  # RayTaskError wraps it
        cause = cause.cause
    text = str(cause).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    name = type(cause).__name__
    return message if message.startswith(name) else f"{name}: {message}"
