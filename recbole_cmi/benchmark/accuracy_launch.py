"""One run of the accuracy benchmark, from the benchmark's side: its folder and ``spec.json``, the subprocess
(``python -m recbole_cmi.benchmark accuracy --run_spec=<spec.json>``, :mod:`recbole_cmi.benchmark.accuracy_worker`),
its csv row; and what ``--resume`` keeps: the finished rows of the csv, an interrupted run's last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from recbole_cmi.benchmark.accuracy_settings import (
    BenchmarkSettings,
    RunModel,
    config_sha,
    display_path,
    legacy_config_sha,
    tuned_header,
)
from recbole_cmi.benchmark.report_runs import cell_number, hit_cap, read_runs
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.files import plain, write_json

RUN_LOG = "run.log"
PROGRESS_FILE = "progress.json"  # a run's epochs so far, rewritten at every validation (for --resume)


def prepare_run(
    settings: BenchmarkSettings, model: RunModel | str, seed: int, shared: dict, work_dir: Path, tuned=None
) -> dict:
    """The run's folder and ``spec.json``; returns the spec.

    With ``--resume``, a folder left by an interrupted run of the same spec (its last checkpoint and
    ``progress.json``, the epochs' seconds and validations so far) is kept, and the run continues from that
    checkpoint (``recbole_cmi.trainer``: the same weights, optimizer and random states) instead of starting over.
    Otherwise the folder starts empty.
    """
    model = model if isinstance(model, RunModel) else RunModel(model, model)
    run_dir = work_dir / f"{_folder_name(model.label)}-seed{seed}"
    config_files = [os.path.abspath(p) for p in settings.config_files]
    if settings.tuned and tuned:
        config_files.insert(0, str(tuned[0]))  # the user's own config files still win
    config_dict = {**shared, **model.overrides, "seed": seed, "checkpoint_dir": str(run_dir / "saved")}
    spec = {
        "model": model.model,
        "dataset": settings.dataset,
        "config_files": config_files,
        "config_dict": config_dict,
        "result": str(run_dir / "result.json"),
        "conventions": settings.conventions,
        "progress": str(run_dir / PROGRESS_FILE),
    }
    last = _interrupted_checkpoint(run_dir, spec) if settings.resume else None
    if last is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
    else:
        spec["resume_from"] = str(last)
        Path(spec["result"]).unlink(missing_ok=True)  # a result must come from this attempt
        print(f"  continuing {model.label} seed {seed} from {last}", flush=True)
    write_json(run_dir / "spec.json", spec)
    return spec


def _folder_name(label: str) -> str:
    """A run folder's name for ``label`` (a variant's text may hold ``:``, ``=``, ``/``)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)


def _interrupted_checkpoint(run_dir: Path, spec: dict) -> Path | None:
    """The ``-last`` checkpoint an interrupted run of ``spec`` left in ``run_dir``; None if there is none to use."""
    from recbole_cmi.trainer_checkpoint import last_checkpoint_path

    earlier = _read_result(run_dir / "spec.json")
    if earlier is None or not _same_training(earlier, spec) or not (run_dir / PROGRESS_FILE).is_file():
        return None
    best = [p for p in (run_dir / "saved").glob("*.pth") if not p.name.endswith("-last.pth")]
    lasts = [Path(last_checkpoint_path(p)) for p in best if Path(last_checkpoint_path(p)).is_file()]
    return lasts[0] if len(lasts) == 1 else None


def _same_training(earlier: dict, spec: dict) -> bool:
    """Whether ``spec`` continues ``earlier``'s training: the same model, config files and config, except that the
    epoch cap may have gone up (the cap only says when to stop: epochs 1..old cap are the same training)."""
    if any(earlier.get(key) != spec[key] for key in ("model", "config_files")):
        return False
    old, new = dict(earlier.get("config_dict") or {}), dict(spec["config_dict"])
    old_cap, new_cap = old.pop("epochs", None), new.pop("epochs", None)
    if old != new:
        return False
    if old_cap == new_cap:
        return True
    return all(isinstance(cap, int) and not isinstance(cap, bool) for cap in (old_cap, new_cap)) and new_cap > old_cap


def run_one(
    settings: BenchmarkSettings, model: RunModel | str, seed: int, shared: dict, sha: str, work_dir: Path, tuned=None
) -> dict:
    """One run in a subprocess; always returns a csv row (status ``ok`` or ``failed``).

    ``model``: a :class:`RunModel` (or a model name); ``tuned``: ``tuned_source``'s answer for it; under ``--tuned``
    its file is the run's first config file.
    """
    model = model if isinstance(model, RunModel) else RunModel(model, model)
    spec = prepare_run(settings, model, seed, shared, work_dir, tuned)
    run_dir = Path(spec["result"]).parent
    spec_path = run_dir / "spec.json"
    row = {"dataset": settings.dataset, "protocol": settings.protocol, "model": model.label, "seed": seed}
    if model.text:
        row["variant"] = model.text
    row["config_sha"] = sha
    if tuned:
        row["tuned_file"] = display_path(tuned[0])
        row["tuned_values"] = json.dumps(plain(tuned[1]), separators=(", ", ": "))
        row["tuned_sha"] = tuned[2]
        row["tuned_header"] = tuned_header(tuned[0])
    command = [sys.executable, "-m", "recbole_cmi.benchmark", "accuracy", f"--run_spec={spec_path}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very recbole_cmi
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    log_path = run_dir / RUN_LOG
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            completed = subprocess.run(
                command, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=settings.run_timeout
            )
        returncode = completed.returncode
    except subprocess.TimeoutExpired:
        returncode = None
    elapsed = time.perf_counter() - start
    result = _read_result(spec["result"])
    if result is not None:
        row.update(result)
    elif returncode is None:
        row.update(status="failed", error=f"stopped after --run_timeout={settings.run_timeout:g} s")
    else:
        row.update(status="failed", error=f"exit status {returncode}: {_last_line(log_path)}")
    row.setdefault("total_s", round(elapsed, 1))
    if row.get("status") == "ok" and hit_cap(row):  # a higher --epochs with --resume continues it from here
        print(f"  {model.label} seed {seed} reached the epoch cap: its last checkpoint stays in {run_dir}", flush=True)
        return row
    _drop_checkpoints(run_dir / "saved", keep_best=settings.keep_checkpoints and row.get("status") == "ok")
    (run_dir / PROGRESS_FILE).unlink(missing_ok=True)  # ended (finished or failed): nothing to continue
    return row


def _drop_checkpoints(saved: Path, keep_best: bool) -> None:
    """Delete a finished run's checkpoints; with ``keep_best``, all but the best one (the ``-last`` one goes)."""
    if not keep_best:
        shutil.rmtree(saved, ignore_errors=True)
        return
    for path in saved.glob(
        "*-last.pth"
    ):  # recbole_cmi.trainer_checkpoint.last_checkpoint_path's name: resuming state only
        path.unlink(missing_ok=True)


def _read_result(path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return "no output"
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else "no output"


def previous_rows(csv_path: Path, settings: BenchmarkSettings, shared: dict, tuned: dict) -> list[dict]:
    """The csv's rows, if they ran the same shared config (and, under --tuned, the same tuned files as now).

    One difference is accepted: a higher ``--epochs`` than the rows had (the table flagged runs at the epoch cap and
    the cap went up). A run that early stopping ended is the same run under any higher cap, so it is kept (under
    this config's sha); a run that reached the old cap is dropped from the csv, so it runs on (from its last
    checkpoint, which its folder keeps; from epoch 0 if that folder is gone).
    """
    sha, legacy = config_sha(settings, shared), legacy_config_sha(settings, shared)
    rows, raised = [], []
    for row in read_runs(csv_path):
        if row.get("config_sha") == legacy:  # written before the sha hashed contents, not paths: the same config
            row = {**row, "config_sha": sha}
        if row.get("config_sha") != sha and _lower_cap_of(row, settings, shared):
            if row.get("status") == "ok" and not hit_cap(row):
                row = {**row, "config_sha": sha}
            else:
                raised.append(f"{row['model']} seed {row['seed']}")
                continue
        rows.append(row)
    if raised:
        print(f"--resume: the epoch cap is now {shared['epochs']}; these runs reached the old cap (or failed) and run "
              f"again: {', '.join(raised)}", flush=True)  # fmt: skip
    other = sorted({row.get("config_sha", "") for row in rows} - {sha})
    if other:
        raise ConfigValueError(
            f"--resume: {csv_path} holds runs of another shared config (config_sha {', '.join(other)}, this one "
            f"{sha}); give the same options and config files, or run without --resume to start afresh"
        )
    changed = sorted(
        {
            row["model"]
            for row in rows
            if row["model"] in tuned and row.get("status") == "ok" and row.get("tuned_sha") != tuned[row["model"]][2]
        }
    )
    if changed:
        raise ConfigValueError(
            f"--resume: the tuned file of {', '.join(changed)} changed since its runs in {csv_path} (tuned_sha): "
            "their numbers are of other values; run without --resume to start afresh"
        )
    for index, row in enumerate(rows):  # rows of earlier versions: the header of the very file they ran (same sha)
        source = tuned.get(row["model"])
        if not row.get("tuned_header") and source and row.get("tuned_sha") == source[2]:
            rows[index] = {**row, "tuned_header": tuned_header(source[0])}
    return rows


def _lower_cap_of(row: dict, settings: BenchmarkSettings, shared: dict) -> bool:
    """Whether ``row`` ran this very shared config but for a lower ``epochs`` (given as ``--epochs``)."""
    cap = cell_number(row.get("epochs"))
    if not isinstance(shared.get("epochs"), int) or cap is None or not cap.is_integer() or cap >= shared["epochs"]:
        return False
    lower = {**shared, "epochs": int(cap)}
    return row.get("config_sha") in (config_sha(settings, lower), legacy_config_sha(settings, lower))
