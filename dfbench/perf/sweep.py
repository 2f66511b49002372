"""``dfbench perf sweep``: a sweep of 20 candidates × 3 timesteps on the SPair mini set against 60 separate runs.

Both sides share one backbone (model loading is not counted, which favours the separate runs) and
count what went through the UNet with a forward pre-hook (rows = images × ensemble members):

* ``sweep`` — :func:`dfbench.sweep.run_sweep` into a fresh cache: one forward per image per timestep,
  then 60 evaluations from the cache;
* ``separate`` — 60 ``run_one`` calls (one candidate at one timestep each) with no cache, as 60
  ``dfbench run`` commands would do.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: 20 SD1.5 candidates: the block outputs of up_blocks.1 and .2, their resnets and attentions, up_blocks.3's
CANDIDATES = ["up_blocks.1", "up_blocks.2", "up_blocks.1.resnets.?", "up_blocks.1.attentions.?",
              "up_blocks.2.resnets.?", "up_blocks.2.attentions.?", "up_blocks.3.resnets.?", "up_blocks.3.attentions.?"]
TIMESTEPS = [50, 261, 500]


def run_sweep_perf(backbone_name: str = "sd15", device: str | None = None, dtype: str = "float32",
                   separate_runs: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time the sweep and the 60 separate runs side by side; UNet rows per image for each.

    ``separate_runs`` times only that many of the 60 (spread over the timesteps) and scales the time
    to 60 — for a CPU, where 60 full-size runs take about an hour; the result says so."""
    import torch

    from dfbench.backbones.base import DiffusionBackbone
    from dfbench.perf.common import machine_description
    from dfbench.registry import TASKS
    from dfbench.resolve import build_backbone
    from dfbench.runner import RunSpec, run_one
    from dfbench.sweep import expand_candidates, run_sweep

    backbone = build_backbone(backbone_name, init="random", device=device, dtype=dtype)
    assert isinstance(backbone, DiffusionBackbone), "the sweep benchmark counts denoiser rows"
    rows = [0]
    backbone.denoiser.register_forward_pre_hook(lambda module, args: rows.__setitem__(0, rows[0] + args[0].shape[0]))
    names = expand_candidates(CANDIDATES, backbone.activation_names())
    images = len(TASKS.get("spair")().split_images(TASKS.get("spair")().mini_root(), "test"))
    settings = {"dtype": dtype}
    results: dict[str, Any] = {"machine": machine_description(backbone.device), "backbone": backbone_name,
                               "dtype": dtype, "candidates": len(names), "timesteps": TIMESTEPS, "images": images}
    with tempfile.TemporaryDirectory() as scratch:
        log(f"sweep: {len(names)} candidates × {len(TIMESTEPS)} timesteps …")
        started = time.perf_counter()
        run_sweep(backbone, "spair", CANDIDATES, TIMESTEPS, settings=settings, results_dir=Path(scratch) / "sweep",
                  cache_dir=str(Path(scratch) / "cache"), log=lambda message: None)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        results["sweep_s"] = time.perf_counter() - started
        results["sweep_unet_rows_per_image"] = rows[0] / images
        rows[0] = 0
        pairings = [(name, timestep) for timestep in TIMESTEPS for name in names]
        timed = pairings if not separate_runs else pairings[:: max(1, len(pairings) // separate_runs)][:separate_runs]
        log(f"separate: {len(timed)} of {len(pairings)} runs …")
        started = time.perf_counter()
        for name, timestep in timed:
            spec = RunSpec(backbone=backbone.name, task="spair/dift-nn", selection=[name],
                           settings={**settings, "timestep": timestep}, data_root="mini")
            run_one(spec, Path(scratch) / "separate", progress=False, figures=False, backbone=backbone)
        scale = len(pairings) / len(timed)
        results["separate_runs_timed"] = len(timed)
        results["separate_s"] = (time.perf_counter() - started) * scale
        results["separate_unet_rows_per_image"] = rows[0] / images * scale
        if scale != 1:
            results["separate_note"] = f"{len(timed)} of {len(pairings)} runs timed, scaled by {scale:g}"
    results["speedup"] = results["separate_s"] / results["sweep_s"]
    results["sweep_forwards_per_image_per_timestep"] = results["sweep_unet_rows_per_image"] / len(TIMESTEPS)
    return results


def from_args(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """``dfbench perf sweep``: one --backbone (default sd15); --repeats N times N of the separate runs."""
    backbones = args.backbone or ["sd15"]
    return run_sweep_perf(backbones[0], args.device, args.dtype or "float32",
                          args.repeats if args.repeats > 1 else None, log=log)
