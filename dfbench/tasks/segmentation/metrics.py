"""Semantic-segmentation metrics exactly as mmsegmentation 1.x's ``IoUMetric`` computes them.

Per image, pixels whose label is ``ignore_index`` are dropped; the areas of intersection, union,
prediction and label per class (a prediction or label outside 0…C−1 counts for no class, as
``torch.histc`` over [0, C−1] does) are summed over the whole split ("pooled"). Then
aAcc = Σ intersection / Σ label area, IoU_c = intersection_c / union_c, Acc_c = intersection_c /
label_c, and mIoU / mAcc are the means over the classes whose value is defined: a class with an
empty union (never predicted, never present) is left out of the mean (``np.nanmean``).
All values are in percent. ``IoUMetric`` rounds its summary to 2 decimals for display; these are
the unrounded values, which round to its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SegmentationAreas:
    """Pooled per-class pixel counts (int64 arrays of length C)."""

    intersect: np.ndarray
    union: np.ndarray
    pred: np.ndarray
    label: np.ndarray

    @classmethod
    def empty(cls, num_classes: int) -> SegmentationAreas:
        zeros = np.zeros(num_classes, dtype=np.int64)
        return cls(zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy())

    def add(self, pred: np.ndarray, label: np.ndarray, ignore_index: int = 255) -> None:
        """Add one image: ``pred`` and ``label`` are integer H×W maps of the same shape."""
        self.add_counts(image_areas(pred, label, len(self.intersect), ignore_index))

    def add_counts(self, counts: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Add one image's :func:`image_areas` (intersection, union, prediction, label)."""
        for total, value in zip((self.intersect, self.union, self.pred, self.label), counts, strict=True):
            total += value


def pooled_areas(per_image: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], num_classes: int
                 ) -> SegmentationAreas:
    """The pooled areas of images given by their :func:`image_areas`."""
    areas = SegmentationAreas.empty(num_classes)
    for counts in per_image:
        areas.add_counts(counts)
    return areas


def _class_counts(values: np.ndarray, num_classes: int) -> np.ndarray:
    inside = values[(values >= 0) & (values < num_classes)]
    return np.bincount(inside.astype(np.int64), minlength=num_classes).astype(np.int64)


def image_areas(pred: np.ndarray, label: np.ndarray, num_classes: int,
                ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(intersection, union, prediction, label) areas per class of one image (``IoUMetric.intersect_and_union``)."""
    pred, label = np.asarray(pred).astype(np.int64), np.asarray(label).astype(np.int64)
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    intersect = _class_counts(pred[pred == label], num_classes)
    area_pred, area_label = _class_counts(pred, num_classes), _class_counts(label, num_classes)
    return intersect, area_pred + area_label - intersect, area_pred, area_label


def segmentation_metrics(areas: SegmentationAreas, class_names: list[str] | None = None
                         ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(summary {aAcc, mIoU, mAcc}, per-class {name: {IoU, Acc}}) in percent; undefined per-class values are NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = areas.intersect / areas.union
        acc = areas.intersect / areas.label
        a_acc = areas.intersect.sum() / areas.label.sum()
    summary = {"aAcc": float(a_acc * 100), "mIoU": float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else 0.0,
               "mAcc": float(np.nanmean(acc) * 100) if np.isfinite(acc).any() else 0.0}
    names = class_names or [str(index) for index in range(len(iou))]
    per_class = {name: {"IoU": float(iou[index] * 100), "Acc": float(acc[index] * 100)}
                 for index, name in enumerate(names)}
    return summary, per_class
