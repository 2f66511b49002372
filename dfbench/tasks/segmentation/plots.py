"""Segmentation figures: image | ground truth | prediction, the classes in their dataset palette."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfbench.images import load_image
from dfbench.plots import pyplot, save_figure
from dfbench.tasks.segmentation.dataset import IGNORE_INDEX

#: how much of each overlay pixel is the class colour (the rest is the photo)
OVERLAY_ALPHA = 0.6


def overlay(image: np.ndarray, classes: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``image`` H×W×3 uint8 blended with ``palette[classes]``; ignored pixels (255) keep the photo."""
    coloured = palette[np.where(classes == IGNORE_INDEX, 0, classes)].astype(np.float32)
    blended = (1 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * coloured
    return np.where((classes == IGNORE_INDEX)[..., None], image, blended.round()).astype(np.uint8)


def classes_shown(rows: list[tuple[str, Path, np.ndarray, np.ndarray]]) -> list[int]:
    """The class ids present in the ground truths or predictions of ``rows`` (ignored pixels left out), sorted."""
    present: set[int] = set()
    for _, _, label, prediction in rows:
        present |= {int(value) for value in np.unique(label)} | {int(value) for value in np.unique(prediction)}
    return sorted(present - {IGNORE_INDEX})


def plot_overlays(rows: list[tuple[str, Path, np.ndarray, np.ndarray]], palette: list[list[int]], title: str,
                  path: Path, class_names: list[str] | None = None) -> Path:
    """One row per (stem, image path, label, prediction): the image, the ground truth, the prediction; below
    them a legend of the classes present (their palette colour and ``class_names``, else their ids)."""
    plt = pyplot()
    colours = np.asarray(palette, dtype=np.uint8)
    height, width = rows[0][2].shape
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, (3 * height / width + 0.4) * len(rows)), squeeze=False,
                                layout="constrained")
    for row, (stem, image_path, label, prediction) in zip(axes, rows, strict=True):
        image = np.asarray(load_image(image_path).convert("RGB"))
        for axis, picture, name in zip(row, (image, overlay(image, label, colours), overlay(image, prediction,
                                                                                           colours)),
                                       (stem, "ground truth", "prediction"), strict=True):
            axis.imshow(picture)
            axis.set_title(name, fontsize=8)
            axis.axis("off")
    figure.suptitle(title, fontsize=9)
    from matplotlib.patches import Patch

    present = classes_shown(rows)
    handles = [Patch(facecolor=colours[index] / 255, edgecolor="none",
                     label=class_names[index] if class_names and index < len(class_names) else f"class {index}")
               for index in present]
    if handles:
        # outside the axes, below them (constrained layout makes room): it covers no picture
        figure.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=7,
                      frameon=False, title="classes present", title_fontsize=7)
    path = save_figure(figure, path)
    plt.close(figure)
    return path
