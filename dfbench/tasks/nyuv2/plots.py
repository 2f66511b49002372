"""Depth figure: image | ground truth | prediction, one row per example, depths on one colour scale per row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfbench.images import load_image
from dfbench.plots import pyplot, save_figure


def plot_depth_examples(rows: list[tuple[str, Path, np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    """One row per (stem, image path, ground truth, prediction); invalid ground truth (0) and pixels
    without a prediction (NaN) are shown white."""
    plt = pyplot()
    height, width = rows[0][2].shape
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, (3 * height / width + 0.4) * len(rows)), squeeze=False)
    for row, (stem, image_path, truth, prediction) in zip(axes, rows, strict=True):
        valid = truth[truth > 0]
        low, high = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 10.0)
        row[0].imshow(np.asarray(load_image(image_path).convert("RGB")))
        row[0].set_title(stem, fontsize=8)
        shown = None
        for axis, depth, name in ((row[1], np.where(truth > 0, truth, np.nan), "ground truth (m)"),
                                  (row[2], prediction, "prediction (m)")):
            shown = axis.imshow(depth, cmap="magma_r", vmin=low, vmax=high)
            axis.set_title(name, fontsize=8)
        for axis in row:
            axis.axis("off")
        figure.colorbar(shown, ax=list(row[1:]), fraction=0.03)
    figure.suptitle(title, fontsize=9)
    path = save_figure(figure, path)
    plt.close(figure)
    return path
