"""``dfbench perf fusion``: a fusion preset's extraction against its parts (random weights, real sizes).

In one process, on the same photo: each source alone at its input size with its activations, then the
fusion's ``extract`` (the same modules, run one after the other), then the matching-time descriptor of
a pair (``combine_pair``: Tale's pair-fitted PCA, resizing, normalisation); medians of ``repeats`` runs after
one warm-up. The overhead of the fusion is its extraction time minus the sum of its parts.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _median_seconds(step: Callable[[], Any], repeats: int, device: str) -> float:
    step()                                                              # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_fusion(preset_name: str = "tale-of-two", backbone: str | None = None, device: str = "cpu",
               dtype: str = "float32", repeats: int = 1, backbone_options: dict[str, Any] | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Seconds per image of each source and of the fusion, the overhead, and the pair descriptor's cost
    (``backbone_options`` over the preset's, e.g. smaller input sizes for a quick check)."""
    import skimage.data
    from PIL import Image

    from dfbench.backbones.fusion import FusionBackbone
    from dfbench.perf.common import machine_description, perf_image, vm_hwm_gib
    from dfbench.registry import get_preset
    from dfbench.resolve import resolve_features

    name = backbone or get_preset(preset_name).backbone
    log(f"{name}: building with random weights ({dtype}, {device}) …")
    features = resolve_features(name, preset=preset_name, settings={"dtype": dtype}, device=device,
                                backbone_options=backbone_options, init="random")
    assert isinstance(features.backbone, FusionBackbone), f"{name} is not a fusion"
    fused, settings, selection = features.backbone, features.settings, features.selection
    image, other = perf_image(), Image.fromarray(skimage.data.astronaut())
    rows: dict[str, Any] = {"fusion": name, "preset": preset_name, "recipe": fused.describe(), "dtype": dtype,
                            "repeats": repeats, "sources": {}}
    for source, activations in fused.by_source(selection).items():
        log(f"  {source} alone: {', '.join(activations)} …")
        source_settings = fused.source_settings(source, settings)
        part = fused.sources[source]
        seconds = _median_seconds(functools.partial(part.extract, [image], activations, source_settings,
                                                    categories=["cat"]), repeats, device)
        rows["sources"][source] = {"resolution": source_settings.resolution, "s_per_image": seconds}
    log("  the fusion …")
    rows["fused_s_per_image"] = _median_seconds(lambda: fused.extract([image], selection, settings, ["cat"]),
                                                repeats, device)
    parts = sum(row["s_per_image"] for row in rows["sources"].values())
    rows["parts_s_per_image"] = parts
    rows["overhead_s"] = rows["fused_s_per_image"] - parts
    rows["overhead_percent"] = 100 * rows["overhead_s"] / parts
    first = {key: value[0] for key, value in fused.extract([image], selection, settings, ["cat"]).items()}
    second = {key: value[0] for key, value in fused.extract([other], selection, settings, ["person"]).items()}
    log("  the pair descriptor (combine_pair) …")
    rows["pair_descriptor_s"] = _median_seconds(lambda: fused.combine_pair(first, second), max(repeats, 3), device)
    rows["descriptor_shape"] = list(fused.combine_pair(first, second)[0].shape)
    rows["peak_rss_gib"] = vm_hwm_gib()
    rows["machine"] = machine_description(torch.device(device))
    return rows


def from_args(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """``dfbench perf fusion``: --preset (default tale-of-two), optionally one --backbone."""
    backbones = args.backbone or [None]
    return run_fusion(args.preset, backbones[0], args.device or "cpu", args.dtype or "float32", args.repeats,
                      log=log)
