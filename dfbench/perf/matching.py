"""``dfbench perf matching``: ``spair/dift-nn`` matching and scoring alone, on synthetic features of SD2.1
``up_blocks.1``'s shape for SPair-sized images (no extraction)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dfbench.perf.common import machine_description

SPAIR_IMAGE_SIZES = ((375, 500), (500, 375), (333, 500))  # (H, W): typical PASCAL-sized SPair images


def run_matching(pairs: int = 12234, images: int = 1800, channels: int = 1280, feature_size: int = 48,
                 keypoints: int = 10, storage_dtype: str = "float16", seed: int = 0,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time the ``spair/dift-nn`` matching and scoring alone on synthetic features of real shapes.

    ``images`` feature maps channels×feature_size² (SD2.1 ``up_blocks.1`` at 768 px: 1280×48×48)
    are held in ``storage_dtype`` (the cache's default), images have SPair-like sizes, and
    ``pairs`` random pairs with ``keypoints`` keypoints each are matched and scored exactly as the
    task does (target norms once per target image, pairs ordered by target).
    """
    from dfbench.tasks.spair.dataset import SpairPair
    from dfbench.tasks.spair.matching import match_pairs
    from dfbench.tasks.spair.scoring import PairPrediction, score_predictions

    generator = torch.Generator().manual_seed(seed)
    log(f"generating {images} synthetic feature maps {channels}×{feature_size}² ({storage_dtype}) …")
    store_dtype = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[storage_dtype]
    features = {f"img{i}": torch.randn(channels, feature_size, feature_size, generator=generator).to(store_dtype)
                for i in range(images)}
    sizes = {f"img{i}": SPAIR_IMAGE_SIZES[i % len(SPAIR_IMAGE_SIZES)] for i in range(images)}
    synthetic = []
    for index in range(pairs):
        src, trg = torch.randint(0, images, (2,), generator=generator).tolist()
        src_h, src_w = sizes[f"img{src}"]
        trg_h, trg_w = sizes[f"img{trg}"]
        src_kps = torch.stack([torch.randint(0, src_w, (keypoints,), generator=generator),
                               torch.randint(0, src_h, (keypoints,), generator=generator)], 1).tolist()
        trg_kps = torch.stack([torch.randint(0, trg_w, (keypoints,), generator=generator),
                               torch.randint(0, trg_h, (keypoints,), generator=generator)], 1).tolist()
        synthetic.append(SpairPair(
            f"pair{index}", "synthetic", Path(f"img{src}"), Path(f"img{trg}"), tuple(map(tuple, src_kps)),
            tuple(map(tuple, trg_kps)), (0, 0, src_w, src_h), (0, 0, trg_w / 2, trg_h / 2), (src_w, src_h),
            (trg_w, trg_h), {"src_imname": f"img{src}", "trg_imname": f"img{trg}"}))
    keyed = {f"synthetic/img{i}": features[f"img{i}"] for i in range(images)}
    keyed_sizes = {f"synthetic/img{i}": sizes[f"img{i}"] for i in range(images)}
    log(f"matching {pairs} pairs …")
    start = time.perf_counter()
    predictions: list[PairPrediction] = match_pairs(synthetic, keyed, keyed_sizes, progress=True)
    matched = time.perf_counter()
    score_predictions(predictions)
    scored = time.perf_counter()
    return {"pairs": pairs, "images": images, "feature_shape": [channels, feature_size, feature_size],
            "keypoints_per_pair": keypoints, "storage_dtype": storage_dtype, "match_s": matched - start,
            "score_s": scored - matched, "ms_per_pair": 1000 * (scored - start) / pairs,
            "machine": machine_description(torch.device("cpu"))}


def from_args(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """``dfbench perf matching``: --pairs, --images."""
    return run_matching(args.pairs, args.images, log=log)
