"""Segmentation metrics against mmsegmentation's own IoUMetric ("Scoring equals the
reference formula exactly: mmseg IoUMetric (pooled areas, ignore excluded, empty-union classes left
out of the mean)") and against a hand-worked case."""

import math

import numpy as np
import pytest
import torch

from dfbench.tasks.segmentation.metrics import SegmentationAreas, image_areas, segmentation_metrics


def test_a_hand_worked_image():
    # 3 classes; label 255 is ignored; class 2 never appears nor is predicted (left out of the means)
    label = np.array([[0, 0, 1, 1], [0, 255, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 1]])
    intersect, union, area_pred, area_label = image_areas(pred, label, 3)
    # kept pixels: labels 0,0,1,1,0,1,1 vs predictions 0,1,1,1,0,0,1 (the ignored pixel dropped)
    assert intersect.tolist() == [2, 3, 0] and area_pred.tolist() == [3, 4, 0] and area_label.tolist() == [3, 4, 0]
    assert union.tolist() == [4, 5, 0]
    areas = SegmentationAreas.empty(3)
    areas.add(pred, label)
    summary, per_class = segmentation_metrics(areas, ["wall", "floor", "sky"])
    assert summary["aAcc"] == pytest.approx(100 * 5 / 7)
    assert summary["mIoU"] == pytest.approx(100 * (2 / 4 + 3 / 5) / 2)
    assert summary["mAcc"] == pytest.approx(100 * (2 / 3 + 3 / 4) / 2)
    assert math.isnan(per_class["sky"]["IoU"]) and per_class["floor"]["IoU"] == pytest.approx(60.0)


def test_equals_mmsegs_iou_metric_on_random_images():
    from mmseg.evaluation import IoUMetric

    rng = np.random.default_rng(0)
    num_classes = 7
    metric = IoUMetric(ignore_index=255)
    metric.dataset_meta = {"classes": [f"c{index}" for index in range(num_classes)]}
    areas = SegmentationAreas.empty(num_classes)
    for _ in range(5):
        label = rng.integers(0, num_classes - 1, (37, 53))           # class 6 never in the labels
        label[rng.random(label.shape) < 0.1] = 255                   # ignored pixels
        pred = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, num_classes + 2, label.shape))
        pred[pred == 255] = 0
        sample = {"pred_sem_seg": {"data": torch.from_numpy(pred)[None]},
                  "gt_sem_seg": {"data": torch.from_numpy(label)[None]}}
        metric.process({}, [sample])
        ours = image_areas(pred, label, num_classes)
        for mine, theirs in zip(ours, metric.results[-1], strict=True):
            assert mine.tolist() == theirs.numpy().astype(np.int64).tolist()   # identical integer areas
        areas.add(pred, label)
    reference = metric.compute_metrics(metric.results)
    summary, _ = segmentation_metrics(areas)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert round(summary[key], 2) == pytest.approx(float(reference[key]), abs=1e-4), key  # theirs: float32
