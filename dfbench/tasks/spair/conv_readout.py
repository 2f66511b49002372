"""Meng et al.'s (NeurIPS 2024, GDF) trained correspondence readout.

Every selected activation is resized bilinearly to 128×128 and the maps are concatenated along
channels; one 3×3 convolution (C → C, no bias) is trained with a CLIP-style symmetric
cross-entropy: each source keypoint must pick its true target location among all 128² target
locations by cosine similarity / τ (τ = 0.07), and each target keypoint its source location.
At evaluation the convolved maps are upsampled to 512², each source keypoint (scaled to the 512
grid) takes the target location of highest cosine, and the prediction is scaled back to the target
image's original size (GDF's ``find_nn_source_correspondences`` / ``rescale_points``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_GRID = 128
MATCH_GRID = 512
TEMPERATURE = 0.07


class ConvReadout(nn.Module):
    """One 3×3 convolution, ``channels`` → ``out_channels`` (default ``channels``), padding 1, no bias."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, padding=1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features)


def readout_channels(channels: int, names: Sequence[str]) -> int:
    """The readout's output channels: ``channels``, halved when the activations come from several sources (an
    amalgamation's ``<source>:<name>``), as GDF's ``AggregationNetwork`` (``aggregation_network.py`` 20-22:
    ``out_dim = dim if len(configs) == 1 else dim // 2``)."""
    sources = {name.partition(":")[0] for name in names if ":" in name}
    return channels // 2 if len(sources) > 1 else channels


def grid_features(activations: dict[str, torch.Tensor], grid: int = FEATURE_GRID) -> torch.Tensor:
    """Each C×h×w activation resized to grid×grid (bilinear) and concatenated: a 1×ΣC×grid×grid map."""
    maps = [F.interpolate(value[None].float(), size=(grid, grid), mode="bilinear", align_corners=False)
            for value in activations.values()]
    return torch.cat(maps, dim=1)


def points_to_grid_index(points: torch.Tensor, size_wh: tuple[int, int], grid: int) -> torch.Tensor:
    """(x, y) points in an image of ``size_wh`` → flat indices on a grid×grid map (scale, round, clip)."""
    width, height = size_wh
    x = (points[:, 0].double() * grid / width).round().clamp(0, grid - 1)
    y = (points[:, 1].double() * grid / height).round().clamp(0, grid - 1)
    return (y * grid + x).long()


def grid_index_to_points(index: torch.Tensor, size_wh: tuple[int, int], grid: int) -> torch.Tensor:
    """Flat grid indices → (x, y) in an image of ``size_wh`` (GDF scales grid coordinates by W/grid)."""
    width, height = size_wh
    x = (index % grid).double() * width / grid
    y = torch.div(index, grid, rounding_mode="floor").double() * height / grid
    return torch.stack([x, y], dim=1)


def symmetric_clip_loss(src: torch.Tensor, trg: torch.Tensor, src_index: torch.Tensor, trg_index: torch.Tensor,
                        temperature: float = TEMPERATURE) -> torch.Tensor:
    """Mean of the source→target and target→source cross-entropies over keypoints.

    ``src``, ``trg``: 1×C×g×g maps; ``src_index``, ``trg_index``: K flat grid indices of the keypoints.
    Only the K keypoint rows of the g²×g² cosine matrix are formed.
    """
    source = F.normalize(src.flatten(2)[0], dim=0)   # C×g²
    target = F.normalize(trg.flatten(2)[0], dim=0)
    forward = source[:, src_index].T @ target / temperature   # K×g²
    backward = target[:, trg_index].T @ source / temperature
    return (F.cross_entropy(forward, trg_index) + F.cross_entropy(backward, src_index)) / 2
