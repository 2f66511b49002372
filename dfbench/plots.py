"""Figures for run records (matplotlib, headless): the shared helpers and a per-category bar chart.

Task-specific figures live with their task (e.g. :mod:`dfbench.tasks.spair.plots`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dfbench.atomic import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> Path:
    """Save through a temp file and an atomic rename."""

    return atomic_write(path, lambda temp: figure.savefig(temp, dpi=72, bbox_inches="tight"))


def plot_per_category(per_category: dict[str, dict[str, float]], metric: str, title: str, path: Path,
                      pooled: float | None = None, items: str = "categories") -> Path:
    """A bar per category (``items="classes"`` for segmentation) of ``metric`` (percent), with two labelled
    lines: the mean over them (each counts once) and, if given, the ``pooled`` value over all keypoints (the
    headline). The legend sits to the right of the axes, so it never covers a bar."""
    plt = pyplot()
    names = list(per_category)
    values = [per_category[name][metric] for name in names]
    figure, axis = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.2))
    axis.bar(names, values, color="#4c72b0")
    if values:
        mean = float(np.mean(values))
        axis.axhline(mean, color="#dd8452", linestyle="--", label=f"mean over {items} {mean:.1f}")
        if pooled is not None:
            axis.axhline(pooled, color="#55a868", linestyle=":", label=f"pooled over keypoints {pooled:.1f}")
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    axis.set_ylim(0, 100)
    axis.set_ylabel(metric + " (%)")
    axis.set_xlabel(items)
    axis.set_title(title, fontsize=9)
    axis.tick_params(axis="x", rotation=45)
    path = save_figure(figure, path)
    plt.close(figure)
    return path
