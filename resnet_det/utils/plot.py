"""Training curves from ``OUTPUT_DIR/metrics.json`` (JSON lines, one object per logging step).

Lines written by the trainer's JSON writer look like
``{"iteration": 19, "total_loss": 1.9, "loss_cls": 0.7, "lr": 0.002, "time": 0.4, ...}``; evaluation
steps add keys such as ``"bbox/AP"`` or ``"top1_err"``. Any key may be missing from a line, and the last
line may be cut short if training was killed while writing it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import defaultdict

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["load_metrics", "metric_series", "smooth", "plot_metrics"]

# Keys that are bookkeeping or speed, not curves worth drawing.
_NOT_METRICS = {"iteration", "epoch", "eta_seconds", "lr"}
_TIME_KEY = re.compile(r"(^|_|/)time$")
# Per-class APs ("bbox/AP-cat") would draw K lines per panel; the summary APs are the curves to read.
_PER_CLASS = re.compile(r"/AP\d*-")


def _is_loss(key: str) -> bool:
    return key.startswith("loss") or key == "total_loss"


def load_metrics(path: str) -> list[dict]:
    """Parse metrics.json (``path`` is the file or the output folder holding it).

    Unparseable lines (a write cut short by a kill) and lines without an integer "iteration" are
    skipped with a warning, so a crashed run can still be plotted.
    """
    file = path if path.endswith(".json") and not os.path.isdir(path) else os.path.join(path, "metrics.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file!r} does not exist: pass a training OUTPUT_DIR that holds "
                                "metrics.json (written by the trainer every logging period)")
    records = []
    with open(file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                logger.warning("%s:%d: skipping unparseable line (truncated write?): %s", file, lineno, e)
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("iteration"), (int, float)):
                logger.warning("%s:%d: skipping line without a numeric 'iteration'", file, lineno)
                continue
            records.append(rec)
    return records


def metric_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{key: (iterations, values)} for every numeric key, sorted by iteration.

    When an iteration repeats (a resumed run appends to the same file) the later line wins;
    non-finite values (a diverged loss) are dropped so they don't wreck the axis limits.
    """
    per_key: dict[str, dict[int, float]] = defaultdict(dict)
    for rec in records:
        it = int(rec["iteration"])
        for key, val in rec.items():
            if key == "iteration" or isinstance(val, bool) or not isinstance(val, (int, float)):
                continue
            if math.isfinite(val):
                per_key[key][it] = float(val)
    out = {}
    for key, d in per_key.items():
        its = np.array(sorted(d), dtype=np.int64)
        out[key] = (its, np.array([d[i] for i in its], dtype=np.float64))
    return out


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing median over ``window`` points (the trainer's console log uses a median too): robust
    to the single-batch spikes that dominate raw detection losses."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) < 2:
        return values.copy()
    return np.array([np.median(values[max(0, i - window + 1): i + 1]) for i in range(len(values))])


def _eval_groups(series: dict) -> dict[str, list[str]]:
    """Evaluation/other metric keys grouped by prefix ("bbox/AP" -> "bbox"), one panel per group."""
    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(series):
        if _is_loss(key) or key in _NOT_METRICS or _TIME_KEY.search(key) or _PER_CLASS.search(key):
            continue
        groups[key.split("/", 1)[0] if "/" in key else "metrics"].append(key)
    return dict(groups)


def plot_metrics(path: str, output: str | None = None, smooth_window: int = 20) -> str:
    """Draw losses (raw, faint, and median-smoothed), learning rate and evaluation metrics against
    iteration into one PNG; return its path (default ``<OUTPUT_DIR>/metrics.png``)."""
    # A bare Figure renders with the Agg canvas and never touches pyplot's global backend, so this
    # works on display-less training machines and inside notebooks alike.
    from matplotlib.figure import Figure

    records = load_metrics(path)
    folder = os.path.dirname(os.path.abspath(path)) if path.endswith(".json") else path
    output = output or os.path.join(folder, "metrics.png")
    if not records:
        raise ValueError(f"{path!r}: metrics.json has no usable lines; nothing to plot")
    series = metric_series(records)
    losses = sorted(k for k in series if _is_loss(k))
    groups = _eval_groups(series)
    panels = (["losses"] if losses else []) + (["lr"] if "lr" in series else []) + list(groups)
    if not panels:
        raise ValueError(f"{path!r}: no numeric metrics besides 'iteration'; nothing to plot")

    all_its = np.concatenate([its for its, _ in series.values()])
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(6.5 * ncols, 4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        if panel == "losses":
            for i, key in enumerate(losses):
                its, vals = series[key]
                color = f"C{i % 10}"
                ax.plot(its, vals, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(its, smooth(vals, smooth_window), color=color, label=key,
                        linewidth=2.4 if key == "total_loss" else 1.4)
            ax.set_title(f"losses (median of {smooth_window})")
            ax.set_ylabel("loss")
            if all(series[k][1].min() > 0 for k in losses):
                ax.set_yscale("log")  # RPN and box losses differ by orders of magnitude
        elif panel == "lr":
            ax.plot(*series["lr"], color="k")
            ax.set_title("learning rate")
            ax.set_ylabel("lr")
        else:
            for key in groups[panel]:
                its, vals = series[key]
                ax.plot(its, vals, marker="o" if len(its) < 50 else None, markersize=3, label=key)
            ax.set_title(panel if panel != "metrics" else "evaluation / other metrics")
        ax.set_xlabel("iteration")
        ax.set_xlim(all_its.min(), max(all_its.max(), all_its.min() + 1))  # one x range: panels line up
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    return output
