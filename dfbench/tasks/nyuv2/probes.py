"""Depth readouts on frozen features and their losses: CleanDIFT's linear-bins probe and probe3d's DPT probe.

Both predict depth as a distribution over uniform bins (AdaBins' "UD" bins with the "linear"
normalisation, the default of CleanDIFT's ``DepthPred`` (``src/depth.py:80-150``) and of probe3d's
``DepthBinPrediction`` (``evals/models/probes.py:80-120``)): logits → ReLU + 0.1 → divided by their
sum → weighted sum of the bin centres ``linspace(min_depth, max_depth, 256)``. ``softmax`` is
available as an alternative normalisation.

* :class:`LinearBinsProbe`: a 1×1 convolution C → 256 (CleanDIFT: bins in [0.1, 10] m).
* :class:`DptDepthProbe`: probe3d's DPT head (``probes.py:135-211``) over four feature maps of one
  grid — 1×1 convolutions to ``hidden`` channels, ×2 upsampling, four refinement blocks from the
  last map to the first, ×4, two 3×3 convolutions, ×2 (all bilinear, ``align_corners=True``), so the
  output is 16× the grid; bins in [0.001, 10] m. Its parameter names are probe3d's, so a probe3d
  checkpoint's ``probe.head`` state dict loads.

Losses: :func:`cleandift_sig_loss` (``src/depth.py:40-57``), :func:`probe3d_depth_loss` = 10 ×
:func:`probe3d_sig_loss` + 0.5 × :func:`gradient_loss` (``evals/utils/losses.py:49-129``); the
schedule :func:`warmup_cosine_factor` (``evals/utils/optim.py:124-133``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMALISATIONS = ("linear", "softmax")
#: the dtypes a trained probe may be scored in
PROBE_DTYPES = ("bfloat16", "float16", "float32")


class BinDepth(nn.Module):
    """Bin logits B×K×H×W → depth B×1×H×W: the normalised bin weights times uniform bin centres."""

    def __init__(self, min_depth: float, max_depth: float, bins: int = 256, normalisation: str = "linear"):
        super().__init__()
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation {normalisation!r}: choose one of {NORMALISATIONS}")
        self.min_depth, self.max_depth, self.bins, self.normalisation = min_depth, max_depth, bins, normalisation

    def centres(self, device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.linspace(self.min_depth, self.max_depth, self.bins, device=device, dtype=dtype)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.normalisation == "linear":
            weights = torch.relu(logits) + 0.1
            weights = weights / weights.sum(dim=1, keepdim=True)
        else:
            weights = torch.softmax(logits, dim=1)
        return torch.einsum("bkhw,k->bhw", weights, self.centres(logits.device, logits.dtype))[:, None]


class LinearBinsProbe(nn.Module):
    """CleanDIFT's probe: a 1×1 convolution to ``bins`` logits, then :class:`BinDepth`."""

    def __init__(self, channels: int, min_depth: float = 0.1, max_depth: float = 10.0, bins: int = 256,
                 normalisation: str = "linear"):
        super().__init__()
        self.conv_depth: nn.Conv2d = nn.Conv2d(channels, bins, kernel_size=1)
        self.predict = BinDepth(min_depth, max_depth, bins, normalisation)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Depth B×1×h×w at the features' own resolution."""
        return self.predict(self.conv_depth(features))


class ResidualConvUnit(nn.Module):
    """x + (conv → ReLU → conv → ReLU)(x), same width, 'same' padding."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, kernel_size, padding=pad), nn.ReLU(True),
                                  nn.Conv2d(channels, channels, kernel_size, padding=pad), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class FusionBlock(nn.Module):
    """One DPT refinement: the level's map through a residual unit plus the running output, then a second unit."""

    def __init__(self, channels: int, kernel_size: int, with_skip: bool = True):
        super().__init__()
        if with_skip:
            self.resConfUnit1 = ResidualConvUnit(channels, kernel_size)
        self.resConfUnit2 = ResidualConvUnit(channels, kernel_size)

    def forward(self, level: torch.Tensor, running: torch.Tensor | None = None) -> torch.Tensor:
        if running is not None:
            level = self.resConfUnit1(level) + running
        return self.resConfUnit2(level)


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)


class DptHead(nn.Module):
    """probe3d's ``DPT``: four maps of one grid (channels ``input_channels``) → ``out_channels`` at 16× the grid."""

    def __init__(self, input_channels: list[int] | tuple[int, ...], out_channels: int, hidden: int = 512,
                 kernel_size: int = 3):
        super().__init__()
        if len(input_channels) != 4:
            raise ValueError(f"the DPT head takes 4 feature maps, got {len(input_channels)}")
        for index, channels in enumerate(input_channels):
            setattr(self, f"conv_{index}", nn.Conv2d(channels, hidden, 1))
        for index in range(4):
            setattr(self, f"ref_{index}", FusionBlock(hidden, kernel_size, with_skip=index != 3))
        self.out_conv = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(True),
                                      nn.Conv2d(hidden, out_channels, 3, padding=1))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        projected = [_upsample(getattr(self, f"conv_{index}")(value), 2) for index, value in enumerate(maps)]
        running: torch.Tensor | None = None
        for index in (3, 2, 1, 0):           # from the last map to the first
            running = getattr(self, f"ref_{index}")(projected[index], running)
        assert running is not None
        return _upsample(self.out_conv(_upsample(running, 4)), 2)


class DptDepthProbe(nn.Module):
    """probe3d's ``DepthHead(head_type="dpt", prediction_type="bindepth")``."""

    def __init__(self, input_channels: list[int] | tuple[int, ...], hidden: int = 512, kernel_size: int = 3,
                 min_depth: float = 0.001, max_depth: float = 10.0, bins: int = 256, normalisation: str = "linear"):
        super().__init__()
        self.head = DptHead(input_channels, bins, hidden, kernel_size)
        self.predict = BinDepth(min_depth, max_depth, bins, normalisation)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Depth B×1×(16h)×(16w) from four B×Cᵢ×h×w maps."""
        return self.predict(self.head(list(maps)))


# ----------------------------------------------------------------------------------------------- losses
def cleandift_sig_loss(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """CleanDIFT's ``SigLoss``: g = log(p + ε) − log(t + ε) over the pixels with t > 0 (all images
    pooled); √(Var(g) + 0.15 · mean(g)²), ``torch.var``'s unbiased variance."""
    valid = target > 0
    g = torch.log(prediction[valid] + eps) - torch.log(target[valid] + eps)
    return torch.sqrt(torch.var(g) + 0.15 * g.mean() ** 2)


def _pairs(predictions: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor | Sequence[torch.Tensor]
           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prediction, target) pairs: one batch tensor each, or lists of maps of different sizes."""
    if isinstance(predictions, torch.Tensor):
        return [(predictions, targets)]  # type: ignore[list-item]
    return list(zip(predictions, targets, strict=True))


def probe3d_sig_loss(predictions: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor | Sequence[torch.Tensor],
                     sigma: float = 0.85, eps: float = 1e-3) -> torch.Tensor:
    """probe3d's ``sig_loss``: √(mean(g²) − σ · mean(g)²), g = log(p + ε) − log(t + ε) over the
    pixels with t > 0, all images pooled (a batch tensor, or a list of maps of different sizes)."""
    g = torch.cat([(torch.log(p[t > 0] + eps) - torch.log(t[t > 0] + eps)) for p, t in _pairs(predictions, targets)])
    return torch.sqrt(g.pow(2).mean() - sigma * g.mean() ** 2)


def gradient_loss(predictions: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor | Sequence[torch.Tensor],
                  eps: float = 1e-3) -> torch.Tensor:
    """probe3d's multi-scale ``gradient_loss`` (MegaDepth): at strides 1, 2, 4, 6, the absolute
    differences of the log-depth error two pixels apart (vertically and horizontally) where both
    are valid, summed over the batch and divided by the scale's number of valid pixels; the four
    scales summed. Lists of maps of different sizes are pooled as one batch would be."""
    pairs = _pairs(predictions, targets)
    total = pairs[0][0].new_zeros(())
    for stride in (1, 2, 4, 6):
        differences, count = pairs[0][0].new_zeros(()), pairs[0][0].new_zeros(())
        for prediction, target in pairs:
            p, t = prediction[..., ::stride, ::stride], target[..., ::stride, ::stride]
            valid = (t > 0).to(p.dtype)
            error = (torch.log(p + eps) - torch.log(t + eps)) * valid
            vertical = (error[..., :-2, :] - error[..., 2:, :]).abs() * valid[..., :-2, :] * valid[..., 2:, :]
            horizontal = (error[..., :, :-2] - error[..., :, 2:]).abs() * valid[..., :, :-2] * valid[..., :, 2:]
            differences, count = differences + vertical.sum() + horizontal.sum(), count + valid.sum()
        total = total + differences / count
    return total


def probe3d_depth_loss(predictions: torch.Tensor | Sequence[torch.Tensor],
                       targets: torch.Tensor | Sequence[torch.Tensor], max_depth: float = 10.0) -> torch.Tensor:
    """probe3d's ``DepthLoss``: targets above ``max_depth`` ignored, 10 · SigLoss + 0.5 · gradient loss."""
    pairs = _pairs(predictions, targets)
    predicted = [p for p, _ in pairs]
    capped = [torch.where(t > max_depth, torch.zeros_like(t), t) for _, t in pairs]
    return 10.0 * probe3d_sig_loss(predicted, capped) + 0.5 * gradient_loss(predicted, capped)


def warmup_cosine_factor(step: int, max_step: float, warmup_step: float, min_factor: float = 0.01) -> float:
    """probe3d's ``cosine_decay_linear_warmup``: the learning-rate factor at ``step`` — linear from
    ``min_factor`` to 1 over the warm-up, then a quarter cosine from 1 down to ``min_factor``."""
    if step <= warmup_step:
        return (1 - min_factor) * (step / warmup_step) + min_factor
    progress = (step - warmup_step) / (max_step - warmup_step)
    return (1 - min_factor) * math.cos(0.5 * progress * math.pi) + min_factor
