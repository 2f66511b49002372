"""``dfbench perf throughput``: images/s of a single clean pass per backbone at its default resolution, the
FLOPs per image (PyTorch's FlopCounterMode) and the fraction of a given peak (for GPUs). With ``--compile``
each backbone is also timed compiled (:mod:`dfbench.backbones.compiled`), side by side with eager: the first
compiled call (the compilation) apart, then the same repeats."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from dfbench.images import to_model_input
from dfbench.perf.common import machine_description, perf_image, timed
from dfbench.settings import DTypeName, ExtractSettings


def run_throughput(backbones: list[str], dtype: DTypeName = "bfloat16", batch_size: int = 8, repeats: int = 5,
                   device: str | None = None, peak_tflops: float | None = None, compile: bool = False,
                   log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Images/s of one clean pass (VAE encode + truncated UNet) per backbone at its default resolution."""
    from torch.utils.flop_counter import FlopCounterMode

    from dfbench.resolve import build_backbone

    rows = []
    for name in backbones:
        log(f"building {name} ({dtype}) …")
        backbone = build_backbone(name, init="random", device=device, dtype=dtype)
        resolution = backbone.default_resolution
        pixels = to_model_input([perf_image()] * batch_size, resolution, "squash")
        settings = ExtractSettings(resolution=resolution, add_noise=False, batch_size=batch_size, dtype=dtype)
        run = functools.partial(backbone.extract, pixels, ["up_blocks.1"], settings)
        seconds = timed(run, repeats, backbone.device, warmup=2)
        with FlopCounterMode(display=False) as counter:
            backbone.extract(pixels[:1], ["up_blocks.1"], settings)
        flops_per_image = counter.get_total_flops()
        row = {"backbone": name, "resolution": resolution, "dtype": dtype, "batch": batch_size,
               "images_per_s": batch_size / seconds, "gflop_per_image": flops_per_image / 1e9,
               "achieved_tflops": flops_per_image * batch_size / seconds / 1e12,
               "machine": machine_description(backbone.device)}
        if peak_tflops:
            row["fraction_of_peak"] = row["achieved_tflops"] / peak_tflops
        if compile:
            log(f"compiling {name} …")
            fast = functools.partial(backbone.extract, pixels, ["up_blocks.1"], settings.replace(compile=True))
            row["compile_s"] = timed(fast, 1, backbone.device)
            compiled_seconds = timed(fast, repeats, backbone.device, warmup=1)
            row["compiled_images_per_s"] = batch_size / compiled_seconds
            row["compile_speedup"] = seconds / compiled_seconds
            if peak_tflops:
                row["compiled_fraction_of_peak"] = flops_per_image * batch_size / compiled_seconds / 1e12 / peak_tflops
        rows.append(row)
        del backbone, run  # free the model before building the next
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def from_args(args: Any, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """``dfbench perf throughput``: --backbone (default sd15 sd21 sdxl), --dtype (default bfloat16),
    --batch-size, --peak-tflops; at least 3 timed repeats."""
    return run_throughput(args.backbone or ["sd15", "sd21", "sdxl"], args.dtype or "bfloat16", args.batch_size,
                          max(args.repeats, 3), args.device, args.peak_tflops, bool(getattr(args, "compile", False)),
                          log=log)
