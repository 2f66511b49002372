"""``dfbench perf cache``: cache-hit read throughput against recomputation, and bytes per image per
activation."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dfbench.perf.common import machine_description
from dfbench.settings import ExtractSettings


def run_cache(images: int = 32, full_size_images: int = 64, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Cache hit read throughput vs recomputation, and bytes on disk per image per activation.

    * tiny-sd15 at 64 px (``up_blocks.1``): ``images`` real photos extracted into a fresh cache
      (recomputation), then read back from it (hit);
    * full-size shapes: ``full_size_images`` synthetic maps of SD2.1 ``up_blocks.1`` at 768 px
      (1280 × 48 × 48) and of SD1.5 ``up_blocks.1`` at 512 px (1280 × 32 × 32) written through the
      store and read back; their recomputation cost is the recipe timing of ``dfbench perf recipes``.
    """
    import tempfile

    from dfbench.cache import CacheItem, FeatureCache, image_key, load_features
    from dfbench.resolve import build_backbone
    from dfbench.tasks.spair.dataset import spair_images
    from dfbench.tasks.spair.mini import mini_spair_root

    results: dict[str, Any] = {"machine": machine_description(torch.device("cpu"))}
    with tempfile.TemporaryDirectory() as root:
        backbone = build_backbone("tiny-sd15")
        settings = ExtractSettings(resolution=64, batch_size=8)
        photos = spair_images(mini_spair_root(), "trn") + spair_images(mini_spair_root(), "test")
        items = [CacheItem(image_key(path), path, category) for path, category in photos][:images]
        store = FeatureCache(Path(root) / "tiny").open(backbone, settings)
        start = time.perf_counter()
        load_features(backbone, items, ["up_blocks.1"], settings, store)
        computed = time.perf_counter() - start
        reader = FeatureCache(Path(root) / "tiny").open(backbone, settings)
        start = time.perf_counter()
        load_features(backbone, items, ["up_blocks.1"], settings, reader)
        read = time.perf_counter() - start
        results["tiny-sd15@64 up_blocks.1"] = {
            "images": len(items), "recompute_images_per_s": len(items) / computed,
            "cache_hit_images_per_s": len(items) / read,
            "bytes_per_image_per_activation": reader.summary()["bytes"] / len(items)}
        for label, shape in {"sd21@768 up_blocks.1": (1280, 48, 48), "sd15@512 up_blocks.1": (1280, 32, 32)}.items():
            for dtype in ("float16", "float32"):
                log(f"full-size shape {label} ({dtype}) …")
                store = FeatureCache(Path(root) / f"{label}-{dtype}", dtype).open(backbone, settings)
                generator = torch.Generator().manual_seed(0)
                keys = [f"img{i:04d}" for i in range(full_size_images)]
                for start_index in range(0, full_size_images, 8):
                    store.write({key: {"up_blocks.1": torch.randn(shape, generator=generator)}
                                 for key in keys[start_index : start_index + 8]})
                reader = FeatureCache(Path(root) / f"{label}-{dtype}", dtype).open(backbone, settings)
                start = time.perf_counter()
                for key in keys:
                    reader.load(key, ["up_blocks.1"])
                read = time.perf_counter() - start
                results[f"{label} {dtype}"] = {
                    "images": full_size_images, "cache_hit_images_per_s": full_size_images / read,
                    "bytes_per_image_per_activation": reader.summary()["bytes"] / full_size_images}
    return results


def from_args(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """``dfbench perf cache``."""
    return run_cache(log=log)
