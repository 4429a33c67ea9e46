"""The accuracy benchmark's charts: ``<protocol>.png`` (two test metrics per model, mean ± sample std over seeds)
and ``<protocol>-curves.png`` (validation NDCG@20 against training seconds, one seed per model). Drawn only where
matplotlib is installed, written atomically; a chart never stops a benchmark.
"""

from __future__ import annotations

import math
from pathlib import Path

from recbole_cmi.benchmark.report_runs import CURVE_METRIC, best_point, metric_label, run_curve
from recbole_cmi.benchmark.report_stats import MAIN_METRICS, ModelSummary
from recbole_cmi.files import atomic_open

CURVES_SUFFIX = "-curves.png"


def chart_keys(measured: list[str]) -> list[str]:
    """Recall@20 and NDCG@20 when measured, else the first two metrics measured."""
    keys = [key for key in MAIN_METRICS if key in measured]
    return keys if len(keys) == len(MAIN_METRICS) else list(measured[:2])


def write_chart(path: Path, summaries: list[ModelSummary], keys: list[str], title: str = "") -> str | None:
    """Grouped bars (mean, sample-std error bars) of ``keys`` per model, written atomically as a PNG.

    Returns None when it was written, else why not: no finished run, no matplotlib (it is optional),
    or an error while drawing; the chart never stops a benchmark.
    """
    drawn = [s for s in summaries if any(key in s.metrics for key in keys)]
    if not keys or not drawn:
        return "no chart yet: no finished run"

    def draw(ax):
        width = 0.8 / len(keys)
        for index, key in enumerate(keys):
            values = [s.metrics.get(key) for s in drawn]
            heights = [v[0] if v else math.nan for v in values]
            errors = [v[1] if v and v[1] is not None else 0.0 for v in values]
            positions = [i - 0.4 + width * (index + 0.5) for i in range(len(drawn))]
            ax.bar(positions, heights, width, yerr=errors, capsize=3, label=metric_label(key))
        ax.set_xticks(range(len(drawn)), [s.model for s in drawn], rotation=20 if len(drawn) > 4 else 0)
        ax.set_ylabel("test value (mean ± std over seeds)")
        if title:
            ax.set_title(title, fontsize="medium")
        ax.legend()

    return draw_png(path, (max(5.0, 1.2 * len(drawn) + 2), 3.6), draw)


def draw_png(path: Path, size: tuple[float, float], draw) -> str | None:
    """``draw(ax)`` on a new figure of ``size`` inches, written atomically to ``path`` as a 100-dpi PNG.

    Returns None when it was written, else why not (no matplotlib, which is optional, or an error while drawing).
    """
    path = Path(path)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "no chart: matplotlib is not installed (pip install matplotlib to get one)"
    try:
        # Figure + the Agg canvas, not pyplot: no global backend or figure state in the caller's process.
        fig = Figure(figsize=size, layout="tight")
        FigureCanvasAgg(fig)
        draw(fig.add_subplot())
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    except Exception as err:  # a chart is a convenience: the csv and the table are the record
        return f"no chart: {type(err).__name__}: {err}"
    return None


def write_curves_chart(path: Path, picked: list[dict], title: str = "") -> str | None:
    """Validation NDCG@20 against training seconds, one line per run in ``picked``, the best epoch marked."""
    lines = []
    for row in picked:
        curve = run_curve(row)
        points = [(t, v) for t, v in zip(curve["train_s"], curve.get(CURVE_METRIC) or []) if v is not None]
        if points:
            best = best_point(curve)
            lines.append((f"{row['model']} (seed {row['seed']})", points, best))
    if not lines:
        return f"no validation curves yet: no finished run recorded valid {metric_label(CURVE_METRIC)}"

    def draw(ax):
        for label, points, best in lines:
            (line,) = ax.plot([t for t, _ in points], [v for _, v in points], marker=".", label=label)
            if best is not None and best[2] is not None:
                ax.plot([best[1]], [best[2]], marker="o", markersize=9, fillstyle="none", color=line.get_color())
        ax.set_xlabel("training seconds (validation not counted)")
        ax.set_ylabel(f"validation {metric_label(CURVE_METRIC)}")
        if title:
            ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)

    return draw_png(path, (7.0, 4.2), draw)
