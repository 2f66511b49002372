"""``dfbench perf segmentation``: seconds per training iteration of ``gdf-uper`` at GDF's crops and of the
``linear`` probe, for tiny and full-size SD1.5 (random weights), the peak memory, and the linear protocol from
the feature cache against live extraction."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dfbench.backbones.protocol import Backbone
from dfbench.perf.common import machine_description, peak_rss_gib, timed
from dfbench.settings import ExtractSettings


def _gdf_uper_iteration_s(backbone: Backbone, dataset: str, preset: str, crop: int | None, repeats: int,
                          log: Callable[[str], None]) -> dict[str, Any]:
    """Seconds per ``gdf-uper`` training iteration (batch 2 at the crop size: preprocessing, extraction,
    adapter, UPerHead + aux losses, backward, AdamW step), median of ``repeats`` after one warm-up."""
    from dfbench.registry import get_preset
    from dfbench.tasks.segmentation.dataset import ADE20K, CITYSCAPES
    from dfbench.tasks.segmentation.uper import GDF_RECIPES, GdfUperOptions, activation_shapes, build_segmentor

    preset_settings = get_preset(preset)
    settings = ExtractSettings.from_dict({**preset_settings.settings, "resolution": backbone.default_resolution})
    selection = backbone.canonical_selection(preset_settings.selection)
    recipe = GDF_RECIPES[dataset].scaled_to(crop)
    options = GdfUperOptions()
    classes = (ADE20K if dataset == "ade20k" else CITYSCAPES).num_classes
    model = build_segmentor(backbone, selection, settings, activation_shapes(backbone, selection, settings),
                            classes, options, recipe, sync_bn=False).to(backbone.device)
    # mmengine / mmseg imports after build_segmentor, which installs the mmcv.ops stand-in they need
    from mmengine.optim import OptimWrapper
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay))
    generator = torch.Generator().manual_seed(0)
    size = recipe.crop

    def batch() -> dict[str, Any]:
        samples = []
        for _ in range(options.batch_size):
            sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                                 pad_shape=(size, size)))
            sample.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, size, size), generator=generator))
            samples.append(sample)
        images = [torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
                  for _ in range(options.batch_size)]
        return {"inputs": images, "data_samples": samples}

    model.train()
    log(f"gdf-uper {dataset} crop {size}: {backbone.name} …")
    step_s = timed(lambda: model.train_step(batch(), wrapper), repeats, backbone.device, warmup=1)
    return {"s_per_iter": step_s, "crop": size, "batch": options.batch_size,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "peak_rss_gib": peak_rss_gib()}


def _linear_step_s(channels: int, size: int, repeats: int) -> float:
    """Seconds per ``linear`` probe step at full-size feature shapes (8 images × 512 labelled pixels)."""
    from dfbench.tasks.segmentation.linear import LinearProbeOptions, train_probe

    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(channels, size, size, generator=generator) for _ in range(8)]
    labels = [torch.randint(0, 150, (size * 8, size * 8), generator=generator) for _ in range(8)]
    steps = 20
    options = LinearProbeOptions(steps=steps)
    return timed(lambda: train_probe(maps, labels, 150, options, 0, "cpu"), repeats, torch.device("cpu")) / steps


def _linear_run_s(backbone: Backbone, cache_dir: Path, settings: dict[str, Any], selection: list[str]) -> float:
    """Wall time of one ``ade20k/linear`` run (50 steps) on the mini set with ``cache_dir``."""
    from dfbench.runner import RunSpec, run_one

    spec = RunSpec(backbone=backbone.name, task="ade20k/linear", selection=selection, data_root="mini",
                   settings=settings, options={"steps": 50}, cache_dir=str(cache_dir))
    start = time.perf_counter()
    run_one(spec, cache_dir / "results", progress=False, figures=False, backbone=backbone)
    return time.perf_counter() - start


def run_segmentation(full_size: bool = True, repeats: int = 2, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Segmentation on CPU, random weights: seconds per training iteration of ``gdf-uper`` (ADE20K
    crop 512, Cityscapes crop 1024) and of ``linear``, peak RSS, and the ``linear`` protocol's
    end-to-end speed-up from cached features vs live extraction (the ADE20K mini set)."""
    import tempfile

    from dfbench.resolve import build_backbone

    results: dict[str, Any] = {"machine": machine_description(torch.device("cpu"))}
    names = ["tiny-sd15", "sd15"] if full_size else ["tiny-sd15"]
    for name in names:
        log(f"building {name} with random weights …")
        backbone = build_backbone(name, init="random" if name == "sd15" else None)
        for dataset in ("ade20k", "cityscapes"):
            results[f"gdf-uper {dataset} {name}"] = _gdf_uper_iteration_s(
                backbone, dataset, f"gdf-ours-sd15-{dataset}", None, repeats, log)
        selection = ["up_blocks.1", "up_blocks.2"]
        settings = {"resolution": backbone.default_resolution}
        with tempfile.TemporaryDirectory() as root:
            log(f"linear on the ADE20K mini set, {name}: live extraction, then from the cache …")
            live = _linear_run_s(backbone, Path(root), settings, selection)
            cached = _linear_run_s(backbone, Path(root), settings, selection)
        results[f"linear ade20k-mini {name}"] = {"live_s": live, "cached_s": cached, "speedup": live / cached,
                                                 "peak_rss_gib": resource.getrusage(
                                                     resource.RUSAGE_SELF).ru_maxrss / 2**20}
        del backbone
    results["linear step, SD1.5 Ours shapes (3520 ch at 64²)"] = {"s_per_step": _linear_step_s(3520, 64, repeats)}
    return results


def from_args(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """``dfbench perf segmentation [--quick]``."""
    return run_segmentation(not args.quick, max(args.repeats, 2), log=log)
