"""Statistics over the accuracy benchmark's runs: per model the mean ± sample standard deviation (n - 1 in the
denominator) over its finished seeds, the paired t-test of one model against another over the seeds both finished,
and which runs and seeds a table covers.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from recbole_cmi.benchmark.report_runs import TEST_PREFIX, cell_number, hit_cap, metric_columns, run_curve

REFERENCE_MODEL = "CMI"  # the model the paired comparison tests against every other
MAIN_METRICS = ("recall@20", "ndcg@20")  # compared and charted when measured
NEED_PAIRS = "n/a (need ≥ 2 paired seeds)"
ZERO_SPREAD = 1e-12  # differences closer than this count as equal (float noise of a - b)


@dataclass
class ModelSummary:
    model: str
    runs: int  # finished or failed
    ok: int
    metrics: dict = field(default_factory=dict)  # metric -> (mean, std or None)
    epochs: tuple | None = None
    train_s: tuple | None = None
    eval_s: tuple | None = None  # seconds of the test-set evaluation
    peak_rss: tuple | None = None  # MiB
    cuda_peak: tuple | None = None  # MiB; None where no run used CUDA
    best_epoch: tuple | None = None
    epochs_capped: int = 0  # finished runs that reached the epoch cap before early stopping ended them


def mean_std(values: list[float]) -> tuple[float, float | None] | None:
    """Mean and sample standard deviation (None for a single value); None for no values."""
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(rows: list[dict], models: list[str]) -> list[ModelSummary]:
    """Per model (``models`` first, in order, then any other model in ``rows``), over its finished runs."""
    order = list(models) + sorted({row["model"] for row in rows} - set(models))
    columns = metric_columns(rows)
    summaries = []
    for model in order:
        runs = [row for row in rows if row["model"] == model]
        if not runs:
            continue
        ok = [row for row in runs if row.get("status") == "ok"]
        summary = ModelSummary(model=model, runs=len(runs), ok=len(ok))
        for column in columns:
            values = [v for v in (cell_number(row.get(column)) for row in ok) if v is not None]
            if values:
                summary.metrics[column[len(TEST_PREFIX) :]] = mean_std(values)
        summary.epochs = _column_mean_std(ok, "epochs_run")
        summary.train_s = _column_mean_std(ok, "train_s_per_epoch")
        summary.eval_s = _column_mean_std(ok, "eval_s")
        summary.peak_rss = _column_mean_std(ok, "peak_rss_mib")
        summary.cuda_peak = _column_mean_std(ok, "cuda_peak_mib")
        summary.best_epoch = _column_mean_std(ok, "best_epoch")
        summary.epochs_capped = sum(1 for r in ok if hit_cap(r))
        summaries.append(summary)
    return summaries


def _column_mean_std(rows: list[dict], column: str) -> tuple | None:
    return mean_std([v for v in (cell_number(row.get(column)) for row in rows) if v is not None])


def format_mean_std(value: tuple | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    mean, std = value
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


@dataclass
class PairedTest:
    n: int  # seeds where both runs finished
    mean_diff: float | None  # mean of reference - baseline; None without pairs
    p_value: float | None  # two-sided paired t-test; None where there is none (see note)
    note: str = ""  # why there is no p-value


def paired_values(rows: list[dict], reference: str, baseline: str, column: str) -> tuple[list, list, list]:
    """``(seeds, reference values, baseline values)`` over the seeds where both finished with a value."""

    def by_seed(model):
        values = {}
        for row in rows:
            value = cell_number(row.get(column))
            if row["model"] == model and row.get("status") == "ok" and value is not None:
                values[str(row["seed"])] = value  # a later row of the same run wins, as in the csv
        return values

    ours, theirs = by_seed(reference), by_seed(baseline)
    seeds = sorted(set(ours) & set(theirs), key=lambda seed: (cell_number(seed) is None, cell_number(seed) or 0, seed))
    return seeds, [ours[seed] for seed in seeds], [theirs[seed] for seed in seeds]


def paired_t_test(reference: list[float], baseline: list[float]) -> PairedTest:
    """Mean difference ``reference - baseline`` and the two-sided paired t-test p-value (pairs in order)."""
    if len(reference) != len(baseline):
        raise ValueError(f"paired values of unequal length: {len(reference)} and {len(baseline)}")
    diffs = [a - b for a, b in zip(reference, baseline)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else None
    if n < 2:
        return PairedTest(n, mean, None, NEED_PAIRS)
    if max(diffs) - min(diffs) <= ZERO_SPREAD:  # t = mean / 0: scipy would answer nan
        return PairedTest(n, mean, None, f"no p-value: all {n} differences are equal (zero variance)")
    from scipy.stats import ttest_rel  # scipy is a RecBole dependency; imported only when a table has pairs

    return PairedTest(n, mean, float(ttest_rel(reference, baseline).pvalue))


def reference_model(models: list[str]) -> str:
    """CMI where it was run, else the first model listed."""
    return REFERENCE_MODEL if REFERENCE_MODEL in models else models[0]


def format_p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def curve_runs(rows: list[dict], models: list[str]) -> list[dict]:
    """One finished run with a validation curve per model: the lowest seed that every such model has, else each
    model's lowest; models in table order."""
    order = list(models) + sorted({row["model"] for row in rows} - set(models))
    runs = {}
    for row in rows:
        if row.get("status") == "ok" and run_curve(row) is not None and cell_number(row.get("seed")) is not None:
            runs.setdefault(row["model"], {})[int(cell_number(row["seed"]))] = row  # a later row of a run wins
    if not runs:
        return []
    common = set.intersection(*(set(seeds) for seeds in runs.values()))
    return [runs[m][min(common) if common else min(runs[m])] for m in order if m in runs]


def finished_seeds(rows: list[dict]) -> dict[str, list[int]]:
    """Per model in ``rows`` (in order of appearance), the seeds of its finished runs."""
    seeds: dict[str, set[int]] = {}
    for row in rows:
        if row.get("status") == "ok":
            seeds.setdefault(row["model"], set()).add(int(row["seed"]))
    return {model: sorted(values) for model, values in seeds.items()}


def seeds_in_table(rows: list[dict], planned: list[int]) -> list[int]:
    """The seeds the table summarises: this invocation's, and those of finished runs kept from the csv
    (``--resume`` with other ``--seeds`` or ``--models`` than an earlier invocation keeps its runs in the table)."""
    return sorted(set(planned).union(*finished_seeds(rows).values()))


def uneven_seeds(rows: list[dict], planned: list[int]) -> str:
    """``" (CL4SRec: 2022 only)"``: the models whose finished seeds are not all of the table's, else ``""``."""
    every = seeds_in_table(rows, planned)
    fewer = [
        f"{model}: {', '.join(map(str, seeds))} only" for model, seeds in finished_seeds(rows).items() if seeds != every
    ]
    return f" ({'; '.join(fewer)})" if fewer else ""


def kept_runs(rows: list[dict], models: list[str], planned: list[int]) -> list[str]:
    """The finished runs in the table that this invocation's ``--models`` × ``--seeds`` does not cover, as
    ``"CL4SRec seed 2022"``: they come from an earlier invocation (``--resume``), whose command is not recorded."""
    return [
        f"{model} seed{'s' if len(outside) > 1 else ''} {', '.join(map(str, outside))}"
        for model, seeds in finished_seeds(rows).items()
        if (outside := [seed for seed in seeds if model not in models or seed not in planned])
    ]
