"""``dfbench perf pipeline``: ``extract --dataset``'s wall time against the pure forward time of the same images,
side by side in one process.

For each model: the same images (real photos, the SPair mini set, repeated to ``images``) are extracted three
ways, each into a fresh feature cache where there is one:

* **forward** — the images decoded beforehand, only ``backbone.extract`` timed (batch after batch);
* **sequential** — decode, extract and write each batch's shard one after the other on one thread (the path
  before the stages overlapped);
* **overlapped** — :func:`dfbench.cache.cached_extract`: decoding ahead on a thread pool, shards written behind
  by a background writer.

The target is overlapped ≤ 1.1 × forward. With tiny models the forward pass is cheaper than decoding a JPEG, so
the floor there is the decode time, not the forward's: both are reported.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfbench.perf.common import machine_description

MODELS = {"tiny-sd15": 64, "sd15": 512}


def run_pipeline(models: dict[str, int], images: int, batch_size: int, init: str = "random",
                 dtype: str = "float32", device: str | None = None,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Rows of seconds and ratios per model (see the module docstring)."""
    from dfbench.cache import CacheItem, FeatureCache, cached_extract, image_key
    from dfbench.images import load_image
    from dfbench.resolve import build_backbone
    from dfbench.settings import ExtractSettings
    from dfbench.tasks.spair.dataset import spair_images
    from dfbench.tasks.spair.mini import mini_spair_root

    photos = spair_images(mini_spair_root(), "trn") + spair_images(mini_spair_root(), "test")
    photos = (photos * (images // len(photos) + 1))[:images]
    rows = []
    for name, resolution in models.items():
        log(f"{name} at {resolution} px, {images} images, batch {batch_size} …")
        backbone = build_backbone(name, init=None if name.startswith("tiny-") else init, dtype=dtype, device=device)
        settings = ExtractSettings.from_dict({"resolution": resolution, "batch_size": batch_size, "timestep": 261,
                                              "dtype": dtype})
        selection = ["up_blocks.1"]
        batches = [photos[start : start + batch_size] for start in range(0, len(photos), batch_size)]
        backbone.extract([load_image(photos[0][0])], selection, settings)            # warm-up
        decoded = [[load_image(path) for path, _ in batch] for batch in batches]
        start = time.perf_counter()
        for batch, pictures in zip(batches, decoded, strict=True):
            backbone.extract(pictures, selection, settings, categories=[category for _, category in batch])
        forward = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as root:
            store = FeatureCache(Path(root) / "sequential").open(backbone, settings)
            start = time.perf_counter()
            for number, batch in enumerate(batches):
                features = backbone.extract([load_image(path) for path, _ in batch], selection, settings,
                                            categories=[category for _, category in batch])
                store.write({f"{number}-{index}": {"up_blocks.1": features["up_blocks.1"][index]}
                             for index in range(len(batch))})
            sequential = time.perf_counter() - start
            store = FeatureCache(Path(root) / "overlapped").open(backbone, settings)
            items = [CacheItem(f"{number}-{index}-{image_key(path)}", path, category)
                     for number, batch in enumerate(batches) for index, (path, category) in enumerate(batch)]
            start = time.perf_counter()
            cached_extract(backbone, items, selection, settings, store)
            overlapped = time.perf_counter() - start
        start = time.perf_counter()
        for batch in batches:
            [load_image(path) for path, _ in batch]
        decode = time.perf_counter() - start
        rows.append({"model": name, "resolution": resolution, "images": images, "batch": batch_size,
                     "forward_s": forward, "decode_s": decode, "sequential_s": sequential,
                     "overlapped_s": overlapped, "sequential/forward": sequential / forward,
                     "overlapped/forward": overlapped / forward,
                     "machine": machine_description(backbone.device)})
    return rows


def from_args(args: Any, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """``dfbench perf pipeline`` (``--backbone``: models to time, each at its default size, or tiny-sd15 at 64
    and SD1.5 at 512; ``--quick``: tiny only; ``--dtype``, ``--device``, ``--batch-size``)."""
    models = dict(MODELS)
    if getattr(args, "backbone", None):
        from dfbench.resolve import build_backbone

        models = {name: build_backbone(name, weightless=True).default_resolution for name in args.backbone}
    if getattr(args, "quick", False):
        models = {"tiny-sd15": 64}
    images = 64 if all(name.startswith("tiny-") for name in models) else 16
    on_gpu = str(getattr(args, "device", None) or "").startswith("cuda")
    return run_pipeline(models, images * (8 if on_gpu else 1), batch_size=getattr(args, "batch_size", 8) or 8,
                        dtype=getattr(args, "dtype", None) or "float32", device=getattr(args, "device", None),
                        log=log)
