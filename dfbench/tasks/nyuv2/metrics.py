"""Monocular depth metrics as probe3d's ``evaluate_depth`` (``evals/utils/metrics.py:52-96``).

Per image, then averaged over images (``image_average``): a pixel is valid when its ground truth is
> 0; the prediction is zeroed off the valid pixels; ``num_valid`` is clamped to ≥ 1 (an image with no
valid pixel scores 0 everywhere and still counts in the average, as there).

* δk: share of valid pixels with max(g / max(p, 1e-9), p / g) < 1.25^k, k = 1, 2, 3;
* RMSE: √(Σ (g − p)² / num_valid);
* AbsRel: Σ |p − g| / g / num_valid and log10: Σ |log10 max(p, 1e-9) − log10 g| / num_valid (the two
  probe3d does not compute, with the same valid pixels and clamps).

The scale-and-shift-invariant variants (keys with ``_si``) first fit p ← s·p + t per image by least
squares over the valid pixels (``match_scale_and_shift``, ``metrics.py:135-173``; a singular system
leaves p as it is). Computed in float64 (probe3d: float32 on the GPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dfbench.tasks.base import bootstrap_stderr

#: the metrics of one evaluation, in the order records list them
METRIC_KEYS = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")
EPSILON = 1e-9


def match_scale_and_shift(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``scale · prediction + shift`` with (scale, shift) the least-squares fit to ``target`` over its
    valid pixels (target > 0); ``prediction`` unchanged when the 2×2 system is singular."""
    prediction = np.asarray(prediction, dtype=np.float64)
    mask = (np.asarray(target) > 0).astype(np.float64)
    target = np.asarray(target, dtype=np.float64)
    a_00, a_01, a_11 = (mask * prediction * prediction).sum(), (mask * prediction).sum(), mask.sum()
    b_0, b_1 = (mask * prediction * target).sum(), (mask * target).sum()
    det = a_00 * a_11 - a_01 * a_01
    if det == 0:
        return prediction
    scale = (a_11 * b_0 - a_01 * b_1) / det
    shift = (-a_01 * b_0 + a_00 * b_1) / det
    return prediction * scale + shift


def image_depth_metrics(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The metrics of one image (``prediction`` and ``target`` H×W metres, same shape)."""
    prediction, target = np.asarray(prediction, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {target.shape} differ in shape")
    valid = target > 0
    num_valid = max(int(valid.sum()), 1)
    prediction = np.where(valid, prediction, 0.0)
    clamped = np.maximum(prediction, EPSILON)
    safe_target = np.where(valid, target, 1.0)
    ratio = np.maximum(target / clamped, prediction / np.maximum(target, EPSILON))
    metrics = {f"delta{k}": float(((ratio < 1.25**k) & valid).sum() / num_valid) for k in (1, 2, 3)}
    metrics["rmse"] = float(np.sqrt((((target - prediction) ** 2) * valid).sum() / num_valid))
    metrics["abs_rel"] = float((np.abs(prediction - target) / safe_target * valid).sum() / num_valid)
    metrics["log10"] = float((np.abs(np.log10(clamped) - np.log10(safe_target)) * valid).sum() / num_valid)
    return {key: metrics[key] for key in METRIC_KEYS}


def depth_metrics(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> dict[str, float]:
    """Scale-aware and scale-and-shift-invariant (``_si``) metrics, each averaged over the images."""
    if len(predictions) != len(targets) or not targets:
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} ground-truth maps")
    aware = [image_depth_metrics(prediction, target) for prediction, target in zip(predictions, targets, strict=True)]
    invariant = [image_depth_metrics(match_scale_and_shift(prediction, target), target)
                 for prediction, target in zip(predictions, targets, strict=True)]
    result = {key: float(np.mean([values[key] for values in aware])) for key in METRIC_KEYS}
    result.update({f"{key}_si": float(np.mean([values[key] for values in invariant])) for key in METRIC_KEYS})
    rmse = np.array([values["rmse"] for values in aware])      # resampling images: the mean RMSE
    result["rmse_stderr"] = bootstrap_stderr(len(rmse), lambda chosen: float(rmse[chosen].mean()))
    return result
