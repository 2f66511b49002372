"""ODISE's sliding-window extraction (settings ``tile`` / ``tile_stride``).

Tale of Two Features and GeoAware-SC (CleanDIFT's fused rows) extract Stable Diffusion through ODISE's
``FeatureExtractorBackbone.slide_forward`` (``third_party/ODISE/odise/modeling/backbone/feature_extractor.py``
189-259): the 960-px input is cut into squares of the backbone's 512-px input size, each square goes through the
whole model on its own, and each map is stitched back at the square's place, overlaps averaged (a sum and a count
per cell). The squares' side is ``min(tile, the input's side)`` (line 207, ``slide_training``), their step the side
itself (line 216), the grid ``max(size − side + step − 1, 0) // step + 1`` per axis (218-219), and the last square
of a row is moved back to end at the edge (229-232): a 960 input gives squares at 0 and 448 on each axis, four in
all, overlapping by 64 px. A square at pixel offset y lands at cell ``y // s`` of a map of stride ``s`` (238-241).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dfbench.errors import DfbenchInputError


def tile_offsets(size: int, side: int, step: int) -> list[int]:
    """The pixel offsets of the squares along one axis of ``size`` px (ODISE's grid; the last square ends at the
    edge)."""
    count = max(size - side + step - 1, 0) // step + 1
    return [max(min(index * step + side, size) - side, 0) for index in range(count)]


def stitch(tiles: torch.Tensor, offsets: Sequence[tuple[int, int]], side: int, size: int, name: str) -> torch.Tensor:
    """One image's map from its squares' maps ``tiles`` (T×C×h×w, the squares at pixel ``offsets`` (y, x) of a
    ``size``-px input): each placed at cell (y // s, x // s) of the whole map (s = side / h), overlaps averaged."""
    if tiles.dim() != 4:
        raise DfbenchInputError(f"settings.tile: activation {name} is not a spatial map (shape "
                                f"{tuple(tiles.shape[1:])}); tiling stitches maps only, select maps or drop --tile")
    _, channels, height, width = tiles.shape
    if side % height or side % width or side // height != side // width:
        raise DfbenchInputError(f"settings.tile={side}: activation {name}'s {height}×{width} map does not divide the "
                                "square evenly; choose a tile size that is a multiple of the model's largest stride")
    stride = side // height
    total = torch.zeros(channels, size // stride, size // stride, dtype=torch.float32)
    count = torch.zeros(1, size // stride, size // stride, dtype=torch.float32)
    for value, (top, left) in zip(tiles, offsets, strict=True):
        row, column = top // stride, left // stride
        region = total[:, row : row + height, column : column + width]
        region += value.float()[:, : region.shape[1], : region.shape[2]]
        count[:, row : row + height, column : column + width] += 1
    if bool((count == 0).any()):
        raise DfbenchInputError(f"settings.tile={side}: the squares leave cells of {name} uncovered; use a "
                                "tile_stride no larger than the tile")
    return total / count


def extract_tiled(backbone: Any, pixels: torch.Tensor, names: list[str], settings: Any,
                  categories: Sequence[str] | None, progress: bool = False) -> dict[str, torch.Tensor]:
    """``backbone.extract`` of model inputs ``pixels`` (N×3×R×R in [-1, 1]) square by square (see the module
    docstring): every square of every image in one call at the square's size, then each map stitched."""
    size = pixels.shape[-1]
    side = min(settings.tile, size)
    step = settings.tile_stride or side
    if step > side:
        raise DfbenchInputError(f"settings.tile_stride={step} is larger than the tile ({side} px): the squares "
                                "would leave gaps")
    offsets = [(top, left) for top in tile_offsets(size, side, step) for left in tile_offsets(size, side, step)]
    squares = torch.stack([image[:, top : top + side, left : left + side]
                           for image in pixels for top, left in offsets])
    square_categories = [category for category in categories for _ in offsets] if categories else None
    square_settings = settings.replace(tile=0, tile_stride=0, resolution=side)
    extracted = backbone.extract(squares, names, square_settings, square_categories, progress)
    return {name: torch.stack([stitch(value[index * len(offsets) : (index + 1) * len(offsets)], offsets, side, size,
                                      name) for index in range(len(pixels))])
            for name, value in extracted.items()}
