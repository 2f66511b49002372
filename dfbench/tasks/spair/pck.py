"""PCK: the Percentage of Correct Keypoints at a threshold α·(reference size)."""

from __future__ import annotations

import torch


def bbox_reference(bbox: tuple[float, float, float, float]) -> float:
    """max(w, h) of an [x1, y1, x2, y2] box: SPair's per-object reference size."""
    x1, y1, x2, y2 = bbox
    return max(x2 - x1, y2 - y1)


def image_reference(size_wh: tuple[int, int]) -> float:
    """max(W, H) of the image."""
    return float(max(size_wh))


def correct_keypoints(predicted: torch.Tensor, truth: torch.Tensor, reference: float, alpha: float) -> torch.Tensor:
    """Boolean K: ``‖predicted − truth‖ ≤ alpha · reference`` (a point exactly on the threshold counts)."""
    distance = (predicted.double() - truth.double()).norm(dim=1)
    return distance <= alpha * reference
