"""Channel statistics of activations: which channels carry "massive activations" — a few channels whose magnitude
dwarfs the others' (Sun et al. 2024; DiTF finds two in FLUX.1-dev's block-28 features, 154 and 1446, and discards
them before its LayerNorm). ``dfbench activations B --stats --images …`` prints them for any backbone."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChannelOutlier:
    """A channel whose largest magnitude is ``ratio`` times the median channel's largest magnitude."""

    channel: int
    peak: float
    ratio: float


def massive_channels(features: torch.Tensor, threshold: float = 10.0) -> tuple[float, list[ChannelOutlier]]:
    """The median over channels of each channel's max |x| (over images and positions) of N×C×h×w ``features``,
    and every channel whose max |x| is more than ``threshold`` times that median, largest first."""
    peaks = features.detach().float().abs().amax(dim=(0, 2, 3))
    median = float(peaks.median())
    ratios = peaks / max(median, torch.finfo(torch.float32).tiny)
    chosen = torch.nonzero(ratios > threshold).flatten().tolist()
    outliers = [ChannelOutlier(channel, float(peaks[channel]), float(ratios[channel])) for channel in chosen]
    return median, sorted(outliers, key=lambda outlier: -outlier.ratio)
