"""Per-pixel features read off native-resolution activations, as if they had been upsampled.

A pixel classifier sees, at each output pixel, the concatenation of every selected activation
upsampled to the output size (the ddpm-segmentation release's ``collect_features``: bilinear,
``align_corners=False``). Materialising that costs H·W·D floats per image (256² × 3,520 channels is
0.9 GB); :class:`PixelFeatureBank` keeps the activations at their own resolution and computes the
upsampled vector of any pixel on demand from its four bilinear taps, with PyTorch's own source-index
rule, so a batch of pixels from many images costs only that batch.

``mode="nearest-bilinear"`` is GDF's variant (``extract_feature.py:113-125``, ``--aggregate_output``: each
activation resized *nearest* to the largest map, then ``scarce_segmentation/task-pixel.py:50`` upsamples
bilinearly). GDF aggregates each model's features by themselves (one ``extract_feature.py`` run per model) and
task-pixel.py upsamples each model's file (lines 46-53), so in an amalgamation — activations named
``<source>:<name>`` — the largest map is taken per source.
"""

from __future__ import annotations

import numpy as np
import torch

UPSAMPLE_MODES = ("bilinear", "nearest-bilinear")


def source_of(name: str) -> str:
    """The source of an amalgamation's activation ``<source>:<name>`` (``""`` for a single backbone's)."""
    return name.partition(":")[0] if ":" in name else ""


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index for a *nearest* resize: ``floor(i · in / out)`` capped at
    ``in − 1`` (PyTorch's ``mode="nearest"`` and OpenCV's ``INTER_NEAREST``)."""
    scale = np.float32(in_size / out_size)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


def bilinear_taps(in_size: torch.Tensor, out_size: int, positions: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(low index, high index, weight of high) along one axis for output ``positions`` when a map of
    ``in_size`` (per position) is resized bilinearly to ``out_size`` with ``align_corners=False``:
    source = (i + 0.5) · in / out − 0.5, clamped at 0 (PyTorch's ``area_pixel_compute_source_index``)."""
    scale = in_size.to(torch.float32) / out_size
    source = (scale * (positions.to(torch.float32) + 0.5) - 0.5).clamp(min=0)
    low = source.to(torch.int64)
    high = torch.minimum(low + 1, in_size - 1)
    return low, high, source - low


class PixelFeatureBank:
    """Activations of several images at their native resolution, read at output pixels.

    ``images`` is one ``{activation name: C×h×w}`` per image (same names and channels in each;
    sizes may differ between images). :meth:`gather` returns, for pixels (image, row, column) of
    the ``out_size`` grid, the concatenated upsampled feature vectors (float32)."""

    def __init__(self, images: list[dict[str, torch.Tensor]], out_size: tuple[int, int], mode: str = "bilinear"):
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsampling mode {mode!r}: choose one of {', '.join(UPSAMPLE_MODES)}")
        if not images:
            raise ValueError("a feature bank needs at least one image")
        self.names = list(images[0])
        self.out_size = out_size
        self.mode = mode
        self.values: dict[str, torch.Tensor] = {}       # name → (Σ h·w) × C, channel-last rows
        self.offsets: dict[str, torch.Tensor] = {}
        self.heights: dict[str, torch.Tensor] = {}
        self.widths: dict[str, torch.Tensor] = {}
        for name in self.names:
            maps = [image[name] for image in images]
            self.values[name] = torch.cat([value.permute(1, 2, 0).reshape(-1, value.shape[0]) for value in maps])
            sizes = torch.tensor([value.shape[1] * value.shape[2] for value in maps])
            self.offsets[name] = torch.cumsum(sizes, 0) - sizes
            self.heights[name] = torch.tensor([value.shape[1] for value in maps])
            self.widths[name] = torch.tensor([value.shape[2] for value in maps])
        # GDF's intermediate grid: the largest map of each image (its width decides, as GDF's v.shape[-1]), per
        # source of an amalgamation
        self.grid_heights: dict[str, torch.Tensor] = {}
        self.grid_widths: dict[str, torch.Tensor] = {}
        for source in dict.fromkeys(source_of(name) for name in self.names):
            members = [name for name in self.names if source_of(name) == source]
            widest = torch.stack([self.widths[name] for name in members]).argmax(0)
            images_index = torch.arange(len(images))
            self.grid_heights[source] = torch.stack([self.heights[name] for name in members])[widest, images_index]
            self.grid_widths[source] = torch.stack([self.widths[name] for name in members])[widest, images_index]
        self.channels = [self.values[name].shape[1] for name in self.names]
        # the taps of every output row and column, per image: tables images × output size
        self.row_taps = {name: [table.reshape(-1) for table in self._taps(name, 0)] for name in self.names}
        self.column_taps = {name: [table.reshape(-1) for table in self._taps(name, 1)] for name in self.names}

    @property
    def dim(self) -> int:
        """Channels of a feature vector (the selection's channels summed)."""
        return sum(self.channels)

    @property
    def num_images(self) -> int:
        return len(self.heights[self.names[0]])

    def nbytes(self) -> int:
        """Memory the activations take."""
        return sum(value.element_size() * value.numel() for value in self.values.values())

    def _taps(self, name: str, axis: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(low, high, weight of high), each images × output size, along ``axis`` of activation ``name``."""
        out = self.out_size[axis]
        sizes = (self.heights if axis == 0 else self.widths)[name][:, None].expand(-1, out)
        positions = torch.arange(out).expand(self.num_images, -1)
        if self.mode == "bilinear":
            return bilinear_taps(sizes, out, positions)
        grid = (self.grid_heights if axis == 0 else self.grid_widths)[source_of(name)][:, None].expand(-1, out)
        low, high, weight = bilinear_taps(grid, out, positions)
        scale = sizes.to(torch.float32) / grid.to(torch.float32)  # nearest from the largest grid to this map

        def nearest(index: torch.Tensor) -> torch.Tensor:
            return torch.minimum((index.to(torch.float32) * scale).floor().to(torch.int64), sizes - 1)

        return nearest(low), nearest(high), weight

    def gather(self, image: torch.Tensor, row: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
        """Feature vectors P×D (float32) at pixels (``image``, ``row``, ``column``) of the output grid."""
        row_key = image * self.out_size[0] + row
        column_key = image * self.out_size[1] + column
        parts = []
        for name in self.names:
            top, bottom, wy = (table.index_select(0, row_key) for table in self.row_taps[name])
            left, right, wx = (table.index_select(0, column_key) for table in self.column_taps[name])
            base = self.offsets[name].index_select(0, image)
            width = self.widths[name].index_select(0, image)
            index = torch.stack([top * width + left, top * width + right, bottom * width + left,
                                 bottom * width + right], dim=1) + base[:, None]
            weights = torch.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], dim=1)
            corners = self.values[name].index_select(0, index.view(-1)).float().view(len(image), 4, -1)
            parts.append((corners * weights[:, :, None]).sum(1))
        return torch.cat(parts, dim=1)

    def image_rows(self, image: int, start: int, stop: int) -> torch.Tensor:
        """Feature vectors of one image's pixels ``start``…``stop − 1`` in row-major order of the output grid."""
        flat = torch.arange(start, stop)
        index = torch.full_like(flat, image)
        return self.gather(index, flat // self.out_size[1], flat % self.out_size[1])
