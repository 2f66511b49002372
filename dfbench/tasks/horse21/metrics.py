"""Label-scarce segmentation metrics exactly as the ddpm-segmentation release's ``compute_iou``
(``src/pixel_classifier.py:126-153``): per-class IoU pooled over all test images, every class but the
ignore label in the mean, an absent class counting 0; and the bootstrap standard error of that mIoU."""

from __future__ import annotations

import numpy as np

from dfbench.tasks.base import bootstrap_stderr


def release_areas(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, union) pixel counts per class of one image, as the release's ``compute_iou`` counts
    them: over all pixels, ignored ones included."""
    prediction, label = np.asarray(prediction).astype(np.int64), np.asarray(label).astype(np.int64)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {prediction.shape} and label {label.shape} differ in shape")
    predicted = np.bincount(prediction[(prediction >= 0) & (prediction < num_classes)], minlength=num_classes)
    labelled = np.bincount(label[(label >= 0) & (label < num_classes)], minlength=num_classes)
    common = np.bincount(prediction[(prediction == label) & (label >= 0) & (label < num_classes)],
                         minlength=num_classes)
    return common[:num_classes], predicted[:num_classes] + labelled[:num_classes] - common[:num_classes]


def pooled_iou(areas: list[tuple[np.ndarray, np.ndarray]], num_classes: int, ignore_label: int) -> dict[int, float]:
    """Per-class IoU of images given by their :func:`release_areas`: intersection / (1e-8 + union), pooled."""
    intersection = sum((common for common, _ in areas), np.zeros(num_classes, dtype=np.int64))
    union = sum((joint for _, joint in areas), np.zeros(num_classes, dtype=np.int64))
    return {index: float(intersection[index] / (1e-8 + union[index])) for index in range(num_classes)
            if index != ignore_label}


def release_iou(predictions: list[np.ndarray], labels: list[np.ndarray], num_classes: int, ignore_label: int
                ) -> dict[int, float]:
    """Per-class IoU (fractions) exactly as the release's ``compute_iou``: pooled over all images,
    every class in ``range(num_classes)`` except ``ignore_label``; union and intersection over all
    pixels (ignored ones included); IoU = intersection / (1e-8 + union), so an absent class is 0."""
    areas = [release_areas(prediction, label, num_classes)
             for prediction, label in zip(predictions, labels, strict=True)]
    return pooled_iou(areas, num_classes, ignore_label)


def miou_stderr(areas: list[tuple[np.ndarray, np.ndarray]], num_classes: int, ignore_label: int) -> float:
    """The bootstrap standard error (test images resampled) of the release's mIoU, in percent, from each
    image's :func:`release_areas`."""
    return bootstrap_stderr(len(areas), lambda chosen: 100 * float(np.mean(list(pooled_iou(
        [areas[index] for index in chosen], num_classes, ignore_label).values()))))
