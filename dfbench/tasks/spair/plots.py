"""SPair figures: predicted vs true target keypoints of a few pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfbench.images import load_image
from dfbench.plots import pyplot, save_figure
from dfbench.tasks.spair.pck import bbox_reference, correct_keypoints


def plot_matches(predictions: Sequence[Any], path: Path, alpha: float = 0.1, limit: int = 4) -> Path:
    """Source | target panels for up to ``limit`` pairs: true target keypoints (circles) and the
    predictions (crosses) joined to their source keypoint; green if within α·bbox, red if not."""
    import torch
    from matplotlib.lines import Line2D


    plt = pyplot()
    chosen = list(predictions)[:limit]
    figure, axes = plt.subplots(len(chosen), 1, figsize=(8, 3.2 * max(1, len(chosen))), squeeze=False)
    for axis, prediction in zip(axes[:, 0], chosen, strict=True):
        pair = prediction.pair
        source, target = load_image(pair.src_image), load_image(pair.trg_image)
        height = max(source.height, target.height)
        canvas = np.full((height, source.width + target.width, 3), 255, dtype=np.uint8)
        canvas[: source.height, : source.width] = np.asarray(source)
        canvas[: target.height, source.width :] = np.asarray(target)
        axis.imshow(canvas)
        truth = np.asarray(pair.trg_kps, dtype=float)
        predicted = prediction.predicted.numpy().astype(float)
        correct = correct_keypoints(torch.tensor(predicted), torch.tensor(truth),
                                    bbox_reference(pair.trg_bbox), alpha).numpy()
        for (sx, sy), (px, py), (tx, ty), ok in zip(pair.src_kps, predicted, truth, correct, strict=True):
            color = "#2ca02c" if ok else "#d62728"
            axis.plot([sx, px + source.width], [sy, py], color=color, linewidth=0.8)
            axis.scatter([sx], [sy], s=18, color="#1f77b4", edgecolors="white", linewidths=0.6)
            axis.scatter([tx + source.width], [ty], s=30, facecolors="none", edgecolors="yellow", linewidths=1.2)
            axis.scatter([px + source.width], [py], s=30, marker="x", color=color)
        axis.set_title(f"{pair.pair_id}: {correct.sum()}/{len(correct)} within {alpha}·max(bbox w, h)", fontsize=8)
        axis.axis("off")
    legend = [
        Line2D([], [], marker="o", linestyle="", color="#1f77b4", label="source keypoint (left image)"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="yellow",
               label="true target keypoint"),
        Line2D([], [], marker="x", linestyle="-", color="#2ca02c", label=f"prediction within {alpha}·bbox"),
        Line2D([], [], marker="x", linestyle="-", color="#d62728", label=f"prediction farther than {alpha}·bbox"),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=2, fontsize=7, frameon=False)
    figure.subplots_adjust(bottom=min(0.12, 0.45 / figure.get_figheight()))  # room for the legend, ~0.45 in
    path = save_figure(figure, path)
    plt.close(figure)
    return path
