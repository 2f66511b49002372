"""Features for a set of images, the one way every task gets them: batched extraction or the cache.

Each distinct image is extracted once (in batches of ``settings.images_per_batch``, or read from the
feature cache and only the missing ones extracted), its activations handed to ``keep`` (what the task
holds on to: e.g. one combined map, or float16 copies) and its original size recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from dfbench.images import load_image


@dataclass
class ImageFeatures:
    """What a task keeps per image key, each image's original size (H, W), and the canonical selection."""

    features: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    selection: list[str] = field(default_factory=list)


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


def image_features(backbone: Any, images: dict[str, tuple[Path, str]], selection: list[str], settings: Any,
                   cache: Any = None, progress: bool = False,
                   keep: Callable[[dict[str, torch.Tensor]], Any] | None = None) -> ImageFeatures:
    """Features of ``images`` ({key: (path, category)}), extracted once each, in sorted key order.

    ``cache`` is a :class:`~dfbench.cache.FeatureCache` (or ``None``); ``keep`` maps one image's
    activations {name: C×h×w} to what is stored (default: the activations themselves)."""
    keep = keep or (lambda activations: activations)
    keys = sorted(images)
    result = ImageFeatures()
    if cache is not None:
        from dfbench.cache import CacheItem, image_key, load_features

        store = cache.open(backbone, settings)
        items = [CacheItem(image_key(images[key][0]), images[key][0], images[key][1]) for key in keys]
        loaded = load_features(backbone, items, selection, settings, store, progress)
        for key, item in zip(keys, items, strict=True):
            result.selection = list(loaded[item.key])
            result.features[key] = keep(loaded[item.key])
            with Image.open(item.path) as image:
                result.sizes[key] = (image.height, image.width)
        return result
    chunk = settings.images_per_batch
    bar = tqdm(total=len(keys), desc=f"extract {backbone.name}", unit="img", disable=not progress)
    for start in range(0, len(keys), chunk):
        batch = keys[start : start + chunk]
        loaded_images = [load_image(images[key][0]) for key in batch]
        extracted = backbone.extract(loaded_images, selection, settings, categories=[images[k][1] for k in batch])
        result.selection = list(extracted)
        for index, (key, image) in enumerate(zip(batch, loaded_images, strict=True)):
            result.features[key] = keep({name: value[index] for name, value in extracted.items()})
            result.sizes[key] = (image.height, image.width)
        bar.update(len(batch))
    bar.close()
    return result
