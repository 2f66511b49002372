"""Figures for run records (matplotlib, headless): per-category bars, predicted vs true matches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> Path:
    """Save through a temp file and an atomic rename."""
    from dfbench.atomic import atomic_write

    return atomic_write(path, lambda temp: figure.savefig(temp, dpi=72, bbox_inches="tight"))


def plot_per_category(per_category: dict[str, dict[str, float]], metric: str, title: str, path: Path) -> Path:
    """A bar per category of ``metric`` (percent), with the mean over categories as a line."""
    plt = _pyplot()
    names = list(per_category)
    values = [per_category[name][metric] for name in names]
    figure, axis = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.2))
    axis.bar(names, values, color="#4c72b0")
    if values:
        axis.axhline(float(np.mean(values)), color="#dd8452", linestyle="--", label=f"mean {np.mean(values):.1f}")
        axis.legend(loc="lower right")
    axis.set_ylim(0, 100)
    axis.set_ylabel(metric + " (%)")
    axis.set_title(title, fontsize=9)
    axis.tick_params(axis="x", rotation=45)
    path = _save(figure, path)
    plt.close(figure)
    return path


def plot_matches(predictions: Sequence[Any], path: Path, alpha: float = 0.1, limit: int = 4) -> Path:
    """Source | target panels for up to ``limit`` pairs: true target keypoints (circles) and the
    predictions (crosses) joined to their source keypoint; green if within α·bbox, red if not."""
    import torch
    from PIL import Image

    from dfbench.benchmarks.pck import bbox_reference, correct_keypoints

    plt = _pyplot()
    chosen = list(predictions)[:limit]
    figure, axes = plt.subplots(len(chosen), 1, figsize=(8, 3.2 * max(1, len(chosen))), squeeze=False)
    for axis, prediction in zip(axes[:, 0], chosen, strict=True):
        pair = prediction.pair
        source, target = Image.open(pair.src_image).convert("RGB"), Image.open(pair.trg_image).convert("RGB")
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
            axis.scatter([tx + source.width], [ty], s=30, facecolors="none", edgecolors="yellow", linewidths=1.2)
            axis.scatter([px + source.width], [py], s=30, marker="x", color=color)
        axis.set_title(f"{pair.pair_id}: {correct.sum()}/{len(correct)} within {alpha}·bbox", fontsize=8)
        axis.axis("off")
    path = _save(figure, path)
    plt.close(figure)
    return path
