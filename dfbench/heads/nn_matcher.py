"""Zero-shot correspondence: nearest neighbour by cosine on bilinearly upsampled features (DIFT).

DIFT upsamples both feature maps C×h×w to the images' original H×W, L2-normalises every pixel's
vector, and for each source keypoint takes the target pixel of highest cosine. Done literally that
costs C×H×W memory per image (1280×500×375 floats ≈ 1 GB for SPair). This module computes the
same argmax without ever materialising an upsampled map, using that bilinear upsampling ``U`` is
linear:

* the source vector at a keypoint is one bilinear interpolation of the low-res map;
* the numerator ``<s, U(T)(p)>`` equals ``U(<s, T>)(p)``: dot products at low resolution
  (K×h×w), then the K small maps upsampled;
* the denominator ``‖U(T)(p)‖`` depends on the target image only. Each output pixel mixes the
  four corners of one low-res cell with weights ``w``, so ``‖U(T)(p)‖² = wᵀ G w`` where ``G`` is
  the 4×4 Gram matrix of that cell's corner vectors: 16 products of C×h×w maps instead of a
  C×H×W upsampling (≈ 1 ms instead of ≈ 1 s for 1280×48×48 → 500×375 on a CPU core).

The result equals DIFT's to float rounding (tested against a literal implementation), with one
difference that makes it reproducible: with ``align_corners=False`` every output pixel beyond the
outermost cell centres repeats that cell's value (the taps clamp to one cell), so a border band of
about half a cell is a plateau of equal scores. PyTorch's kernel computes those pixels as
``(1 − λ)·a + λ·a``, equal to ``a`` only up to rounding, so which plateau pixel wins DIFT's argmax
depends on the last bits of the features (the thread count, the CPU). Here a clamped tap has weight
exactly 1 and the numerator is upsampled by explicit separable weights, so a plateau is exactly flat
and the argmax takes its first pixel (row-major), as DIFT's ``np.argmax`` does for exact ties
(``eval_spair.py:117-119``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N×C×h×w to ``size`` = (H, W), as ``nn.Upsample(mode='bilinear')`` (DIFT)."""
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


def bilinear_taps(positions: torch.Tensor, in_size: int, out_size: int) -> tuple[torch.Tensor, ...]:
    """For output pixels ``positions`` of a bilinear resize ``in_size`` → ``out_size`` with
    ``align_corners=False`` (PyTorch's convention): the low and high input indices and the
    weight of the high one."""
    # float32 arithmetic, like PyTorch's CPU kernel, so the weights agree to the last bits
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    source = ((positions.float() + 0.5) * scale - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    # past the last cell centre both taps are the same cell: weight exactly 1 on it (see the module docstring)
    frac = torch.where(high == low, torch.zeros_like(source), source - low.float())
    return low, high, frac


def bilinear_weights(positions: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """Interpolation weights len(positions)×in_size of output pixels ``positions`` (see
    :func:`bilinear_taps`)."""
    low, high, frac = bilinear_taps(positions, in_size, out_size)
    weights = torch.zeros(len(positions), in_size, dtype=torch.float32)
    rows = torch.arange(len(positions))
    weights[rows, low] += 1 - frac
    weights[rows, high] += frac
    return weights


def sample_at(features: torch.Tensor, points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Vectors K×C of the C×h×w map upsampled to ``size`` = (H, W), at integer pixels ``points`` (K×2, x y)."""
    height, width = size
    wy = bilinear_weights(points[:, 1], features.shape[1], height).to(features)
    wx = bilinear_weights(points[:, 0], features.shape[2], width).to(features)
    return torch.einsum("kh,chw,kw->kc", wy, features, wx)


def upsampled_norm(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """‖U(T)(p)‖ for every pixel p of the C×h×w map bilinearly upsampled to ``size``: an H×W map,
    computed from the 4×4 corner Gram matrix of each low-res cell (see the module docstring)."""
    values = features.float()
    _, height, width = values.shape
    device = values.device
    row_low, _, row_frac = (t.to(device) for t in bilinear_taps(torch.arange(size[0]), height, size[0]))
    col_low, _, col_frac = (t.to(device) for t in bilinear_taps(torch.arange(size[1]), width, size[1]))
    next_row = (torch.arange(height, device=device) + 1).clamp(max=height - 1)
    next_col = (torch.arange(width, device=device) + 1).clamp(max=width - 1)
    # corner vectors of the cell whose top-left is (i, j): (i, j), (i, j+1), (i+1, j), (i+1, j+1)
    corners = [values, values[:, :, next_col], values[:, next_row], values[:, next_row][:, :, next_col]]
    gram = torch.stack([torch.stack([(a * b).sum(0) for b in corners]) for a in corners])  # 4×4×h×w
    cell_gram = gram[:, :, row_low[:, None], col_low[None, :]]                               # 4×4×H×W
    wy = torch.stack([1 - row_frac, row_frac])[:, :, None]                                   # 2×H×1
    wx = torch.stack([1 - col_frac, col_frac])[:, None, :]                                   # 2×1×W
    weights = (wy[:, None] * wx[None]).reshape(4, *size)                                     # 4×H×W
    squared = torch.einsum("ahw,abhw,bhw->hw", weights, cell_gram, weights)
    return squared.clamp(min=0).sqrt()


def match_points(src: torch.Tensor, trg: torch.Tensor, src_points: torch.Tensor, src_size: tuple[int, int],
                 trg_size: tuple[int, int], trg_norm: torch.Tensor | None = None) -> torch.Tensor:
    """For each source keypoint, the target pixel (x, y) of highest cosine similarity.

    Args:
        src, trg: feature maps C×h×w of the source and target image.
        src_points: K×2 source keypoints (x, y) in original pixels (truncated to integers, as DIFT).
        src_size, trg_size: the original image sizes as (H, W).
        trg_norm: :func:`upsampled_norm` of ``trg`` at ``trg_size``, if already computed.

    Returns:
        K×2 long tensor of predicted target pixels (x, y).
    """
    points = src_points.long()
    points[:, 0] = points[:, 0].clamp(0, src_size[1] - 1)
    points[:, 1] = points[:, 1].clamp(0, src_size[0] - 1)
    vectors = sample_at(src.float(), points, src_size)                      # K×C
    numerator = torch.einsum("kc,chw->khw", vectors, trg.float())           # K×h×w
    wy = bilinear_weights(torch.arange(trg_size[0]), trg.shape[1], trg_size[0]).to(numerator)
    wx = bilinear_weights(torch.arange(trg_size[1]), trg.shape[2], trg_size[1]).to(numerator)
    numerator = torch.einsum("Hh,khw,Ww->kHW", wy, numerator, wx)           # K×H×W, = upsample(numerator)
    norm = trg_norm if trg_norm is not None else upsampled_norm(trg, trg_size)
    scores = numerator / norm.clamp(min=1e-12)                               # ∝ cosine (‖s‖ is constant per k)
    flat = scores.flatten(1).argmax(dim=1)
    width = trg_size[1]
    return torch.stack([flat % width, flat // width], dim=1)


def match_patch_grid(src: torch.Tensor, trg: torch.Tensor, src_points: torch.Tensor) -> torch.Tensor:
    """Tale of Two Features' zero-shot matching on the feature grid: each source point (K×2, x y, in
    cells of ``src``'s grid, fractional) takes the vector of the cell it falls in (truncated, as
    ``astype(np.int32)``), and is matched to the target cell of highest cosine. Returns K×2 long (column,
    row) cells of ``trg``. ``src``, ``trg``: C×h×w maps of the whole model input."""
    rows, cols = src.shape[1:]
    x = src_points[:, 0].floor().long().clamp(0, cols - 1)
    y = src_points[:, 1].floor().long().clamp(0, rows - 1)
    vectors = F.normalize(src.float()[:, y, x].T, dim=1)                     # K×C
    target = F.normalize(trg.float().flatten(1), dim=0)                      # C×(h·w)
    flat = (vectors @ target).argmax(dim=1)
    return torch.stack([flat % trg.shape[2], flat // trg.shape[2]], dim=1)
