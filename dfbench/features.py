"""Features for a set of images, the one way every task gets them: batched extraction or the cache.

Each distinct image is extracted once (in batches of ``settings.images_per_batch``, or read from the
feature cache and only the missing ones extracted). Features carry their geometry: each image's
original size and its content box in the model input are recorded, and every activation is cropped
to the part that covers the image's content (with ``resize_mode="pad"`` the padding is cut away, so
a task that maps the maps to original pixels stays aligned; ``squash`` fills the whole input and
nothing changes). The cropped activations go to ``keep`` (what the task holds on to: one combined
map, or float16 copies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dfbench.backbones.protocol import Backbone
from dfbench.cache import CacheItem, image_key, load_features
from dfbench.images import content_box, image_size, load_image
from dfbench.pipeline import Prefetcher
from dfbench.settings import ExtractSettings


@dataclass
class ImageFeatures:
    """What a task keeps per image key, each image's original size (H, W), its content box in the
    model input (left, top, width, height; the whole input unless ``pad``), and the canonical selection."""

    features: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    selection: list[str] = field(default_factory=list)


def crop_to_content(activation: torch.Tensor, box: tuple[int, int, int, int], input_size: int) -> torch.Tensor:
    """The part of a C×h×w map (covering the res×res model input) that covers the image's content box.

    The map is resampled bilinearly at the centres of the cells of the content region, at the map's
    own stride (round(box · h / res) cells); a box on cell boundaries gives those cells exactly."""
    left, top, width, height = box
    if (left, top, width, height) == (0, 0, input_size, input_size):
        return activation
    _, rows, cols = activation.shape
    out_rows, out_cols = max(1, round(height * rows / input_size)), max(1, round(width * cols / input_size))
    # centres of the output cells, in input pixels, then in grid_sample's [-1, 1] (align_corners=False)
    ys = top + (torch.arange(out_rows, dtype=torch.float64) + 0.5) * height / out_rows
    xs = left + (torch.arange(out_cols, dtype=torch.float64) + 0.5) * width / out_cols
    grid_y, grid_x = torch.meshgrid(ys / input_size * 2 - 1, xs / input_size * 2 - 1, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].to(activation)
    return F.grid_sample(activation[None].float(), grid, mode="bilinear", align_corners=False)[0].to(activation.dtype)


def combine_activations(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """One map N×C×h×w from several activations: each resized (bilinear) to the largest map,
    L2-normalised per location, concatenated along channels; a single activation is used as it is."""
    maps = list(features.values())
    if len(maps) == 1:
        return maps[0]
    height = max(m.shape[2] for m in maps)
    width = max(m.shape[3] for m in maps)
    resized = [F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
               if m.shape[2:] != (height, width) else m for m in maps]
    return torch.cat([F.normalize(m, dim=1) for m in resized], dim=1)


def combine_to_grid(activations: dict[str, torch.Tensor]) -> torch.Tensor:
    """One C×h×w float32 map: every activation resized (bilinear) to the largest map, concatenated."""
    height = max(value.shape[1] for value in activations.values())
    width = max(value.shape[2] for value in activations.values())
    maps = [F.interpolate(value[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
            if value.shape[1:] != (height, width) else value.float() for value in activations.values()]
    return torch.cat(maps).cpu()


def image_features(backbone: Backbone, images: dict[str, tuple[Path, str]], selection: list[str],
                   settings: ExtractSettings, cache: Any = None, progress: bool = False,
                   keep: Callable[[dict[str, torch.Tensor]], Any] | None = None, crop: bool = True) -> ImageFeatures:
    """Features of ``images`` ({key: (path, category)}), extracted once each, in sorted key order.

    ``cache`` is a :class:`~dfbench.cache.FeatureCache` (or ``None``); ``keep`` maps one image's
    activations {name: C×h×w}, cropped to its content (``crop=False``: the maps of the whole model
    input, padding included; the content boxes are still recorded), to what is stored (default: themselves)."""
    keys = sorted(images)
    result = ImageFeatures()
    resolution = settings.resolution or backbone.default_resolution

    def keep_content(key: str, activations: dict[str, torch.Tensor], size: tuple[int, int]) -> Any:
        result.sizes[key] = size
        box = content_box(size[1], size[0], resolution, settings.resize_mode)
        result.boxes[key] = box
        if crop:
            activations = {name: crop_to_content(value, box, resolution) for name, value in activations.items()}
        return keep(activations) if keep else activations

    if cache is not None:

        store = cache.open(backbone, settings)
        items = [CacheItem(image_key(images[key][0]), images[key][0], images[key][1]) for key in keys]
        loaded = load_features(backbone, items, selection, settings, store, progress)
        for key, item in zip(keys, items, strict=True):
            result.selection = list(loaded[item.key])
            result.features[key] = keep_content(key, loaded[item.key], image_size(item.path))
        return result
    chunk = settings.images_per_batch
    bar = tqdm(total=len(keys), desc=f"extract {backbone.name}", unit="img", disable=not progress)
    batches = [keys[start : start + chunk] for start in range(0, len(keys), chunk)]
    decoded = Prefetcher([[images[key][0] for key in batch] for batch in batches], load_image)  # ahead of the model
    for batch, loaded_images in zip(batches, decoded, strict=True):
        extracted = backbone.extract(loaded_images, selection, settings, categories=[images[k][1] for k in batch])
        result.selection = list(extracted)
        for index, (key, image) in enumerate(zip(batch, loaded_images, strict=True)):
            activations = {name: value[index] for name, value in extracted.items()}
            result.features[key] = keep_content(key, activations, (image.height, image.width))
        bar.update(len(batch))
    bar.close()
    return result
