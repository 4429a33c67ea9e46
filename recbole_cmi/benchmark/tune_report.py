"""What the equal-budget tuning (:mod:`recbole_cmi.benchmark.tune`) writes: each model's tuned file (a comment
naming the search, then the best trial's values, each documented as every yaml layer documents its keys) and
``<out>/<dataset>/tune-<protocol>.md`` (one row per model, then every model's trials table).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from recbole_cmi.benchmark.accuracy_settings import display_path, utc_stamp
from recbole_cmi.benchmark.tune_settings import (
    ModelTuning,
    TuneSettings,
    hyper_dir_path,
    public_settings,
    search_config,
)
from recbole_cmi.files import plain
from recbole_cmi.markdown import markdown_table


def score_text(best: dict | None) -> str:
    if not best:
        return "–"
    return f"{best['valid_metric']} = {best['best_valid_score']:.4f} after {_epochs_to_best(best)} epochs"


def _statuses_text(statuses: dict) -> str:
    return ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())) or "none"


def search_line(settings: TuneSettings, shared: dict) -> str:
    """The search every model got, in one sentence."""
    return (
        f"random search, {settings.trials} trials (distinct points), ASHA on valid {shared['valid_metric']} "
        f"(grace {settings.grace} epoch{'s' if settings.grace > 1 else ''}, reduction factor "
        f"{settings.reduction_factor:g}), at most {settings.epochs} epochs per trial"
        + (f" (stopping_step {shared['stopping_step']})" if "stopping_step" in shared else "")
        + f", protocol {settings.protocol}, training seed {settings.seed}, search seed {settings.search_seed}, "
        f"embedding_size {shared.get('embedding_size')} / hidden_size {shared.get('hidden_size')}"
    )


def tuned_yaml(settings: TuneSettings, result: ModelTuning, output: Path) -> str:
    """The tuned file: a comment naming the search, then the best trial's values (the searched keys only)."""
    best = result.best
    shared = search_config(settings)
    header = [
        f"{result.model} on {settings.dataset}: the best trial of the equal-budget validation search every model got "
        "(python -m recbole_cmi.benchmark tune); these values replace the model's published defaults on this "
        "dataset only (properties/model/<Model>.yaml, RecBole's own for core models).",
        f"Command: {settings.command or '(from Python: recbole_cmi.benchmark.tune.run_tuning)'}",
        f"Space: {display_path(result.hyper_file)} ({result.points or 'continuous'} points).",
        f"Search: {search_line(settings, shared)}"
        + (f", stopping_step {result.stopping_step}." if result.stopping_step is not None else "."),
        f"Trials: {_statuses_text(result.statuses)}; search wall time {result.wall_s} s.",
        f"Best trial {best['trial_id']}: valid {best['valid_metric']} = {best['best_valid_score']} after "
        f"{_epochs_to_best(best)} epochs (the test set was not used for the choice).",
        f"Written {utc_stamp()}; trials: {display_path(output / 'trials.md')}.",
    ]
    return _wrap_comment(header) + _documented_values(plain(best["params"]), result.hyper_file)


# The ``# (type)`` a value's line opens its comment with: the config checks it (``recbole_cmi.options``).
_YAML_TYPES = ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (dict, "dict"))


def _documented_values(values: dict, hyper_file: Path) -> str:
    """One ``key: value  # (type) searched over ...`` line per value, as every yaml layer documents its keys."""
    from recbole_cmi.tune.space import parse_hyper_file

    searched = {param.name: param.describe() for param in parse_hyper_file(hyper_file)}
    lines = []
    for key, value in values.items():
        text = yaml.safe_dump({key: value}, default_flow_style=True, width=10_000).strip()[1:-1]  # "{k: v}" -> "k: v"
        kind = next((name for cls, name in _YAML_TYPES if isinstance(value, cls)), None)
        comment = f"searched over {searched.get(key, 'a space of its own')}"
        lines.append(f"{text:<31} # ({kind}) {comment}" if kind else f"{text:<31} # {comment}")
    return "\n".join(lines) + "\n"


def _epochs_to_best(best: dict | None):
    """Epochs trained up to the best validation (the search reports 0-based epoch indices)."""
    epoch = (best or {}).get("best_epoch")
    return "–" if epoch is None else int(epoch) + 1


def _wrap_comment(lines: list[str], width: int = 118) -> str:
    """``lines`` as yaml comment lines of at most ``width`` characters (a long word stays whole)."""
    out = []
    for line in lines:
        words, current = line.replace("\n", " ").split(" "), ""
        for word in words:
            if current and len(current) + 1 + len(word) > width - 2:
                out.append(current)
                current = "  " + word
            else:
                current = f"{current} {word}" if current else word
        out.append(current)
    return "".join(f"# {line}\n" for line in out)


def summary_markdown(settings: TuneSettings, spec: dict, results: list[ModelTuning], models: list[str]) -> str:
    """``tune-<protocol>.md``: one row per model searched so far, then every model's trials table."""
    shared = spec["shared"]
    metric = str(shared["valid_metric"])
    lines = [
        f"# {settings.dataset}: equal-budget tuning under protocol `{settings.protocol}`",
        "",
        f"- **Search** (the same for every model): {search_line(settings, shared)}; each model's space is "
        f"`<Model>.hyper` in `{display_path(hyper_dir_path(settings.hyper_dir))}` (one learning-rate grid "
        "for all, plus the model's own main knobs); trials start from the published defaults (no tuned layer).",
        "- **Selection**: the best validation score of each trial; the best trial's values become "
        "`<tuned_dir>/<dataset>/<Model>.yaml`. The test set is never used for the choice.",
        f"- **Models**: {', '.join(models)}; searched so far: {len(results)}.",
        "",
    ]
    table = []
    for r in results:
        values = ", ".join(f"{k}: {v}" for k, v in (r.best or {}).get("params", {}).items()) or r.error
        score = f"{r.best['best_valid_score']:.4f}" if r.best else "–"
        epoch = _epochs_to_best(r.best)
        tuned = display_path(r.tuned_file) if r.tuned_file else "–"
        table.append(
            [r.model, r.points or "–", _statuses_text(r.statuses), score, epoch, values, r.wall_s or "–", tuned]
        )
    header = ["model", "points", "trials", f"best valid {metric}", "epochs to best", "values", "wall s", "tuned file"]
    lines.append(markdown_table(header, table, "lrlrrlrl"))
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        settings.command or "(run from Python: recbole_cmi.benchmark.tune.run_tuning)",
        "```",
        "",
        "Shared config of every trial (the accuracy benchmark's, plus the epoch cap and the seed):",
        "",
        "```yaml",
        yaml.safe_dump(shared, sort_keys=False, default_flow_style=None).rstrip(),
        "```",
    ]
    for r in results:
        if r.trials_md:
            body = r.trials_md.split("\n", 1)[1] if r.trials_md.startswith("# ") else r.trials_md
            lines += ["", f"## Trials: {r.model}", "", body.strip()]
    lines += ["", f"Settings: `{json.dumps(plain(public_settings(settings)))}`", ""]
    return "\n".join(lines)
