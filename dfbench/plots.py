"""Figures for run records (matplotlib, headless): the shared helpers and a per-category bar chart.

Task-specific figures live with their task (e.g. :mod:`dfbench.benchmarks.spair_plots`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> Path:
    """Save through a temp file and an atomic rename."""
    from dfbench.atomic import atomic_write

    return atomic_write(path, lambda temp: figure.savefig(temp, dpi=72, bbox_inches="tight"))


def plot_per_category(per_category: dict[str, dict[str, float]], metric: str, title: str, path: Path,
                      pooled: float | None = None) -> Path:
    """A bar per category of ``metric`` (percent), with two labelled lines: the mean over categories
    (each category counts once) and, if given, the ``pooled`` value over all items (the headline)."""
    plt = pyplot()
    names = list(per_category)
    values = [per_category[name][metric] for name in names]
    figure, axis = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.2))
    axis.bar(names, values, color="#4c72b0")
    if values:
        mean = float(np.mean(values))
        axis.axhline(mean, color="#dd8452", linestyle="--", label=f"mean over categories {mean:.1f}")
        if pooled is not None:
            axis.axhline(pooled, color="#55a868", linestyle=":", label=f"pooled over keypoints {pooled:.1f}")
        axis.legend(loc="lower right", fontsize=7)
    axis.set_ylim(0, 100)
    axis.set_ylabel(metric + " (%)")
    axis.set_title(title, fontsize=9)
    axis.tick_params(axis="x", rotation=45)
    path = save_figure(figure, path)
    plt.close(figure)
    return path
