"""``dfbench perf backbone``: seconds per image and peak RSS of any registered backbone (random weights),
each backbone in a fresh child process so its peak RSS (VmHWM) is its own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def measure(name: str, resolution: int | None, selection: list[str], repeats: int, device: str) -> dict[str, Any]:
    """In this process: build ``name`` with random weights, one warm-up image, then ``repeats`` timed images."""
    import statistics

    import torch

    from dfbench.perf.common import machine_description, perf_image, vm_hwm_gib
    from dfbench.resolve import resolve_features

    started = time.perf_counter()
    features = resolve_features(name, selection=selection, settings={"resolution": resolution} if resolution else {},
                                device=device, init="random")
    built = time.perf_counter() - started
    backbone, selection, settings = features.backbone, features.selection, features.settings
    image = perf_image()
    backbone.extract([image], selection, settings)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backbone.extract([image], selection, settings)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"backbone": name, "resolution": settings.resolution, "selection": selection,
            "parameters_millions": round(sum(p.numel() for p in backbone.model.parameters()) / 1e6, 2)
            if hasattr(backbone, "model") else None,
            "build_s": built, "s_per_image": statistics.median(times), "peak_rss_gib": vm_hwm_gib(),
            "machine": machine_description(torch.device(device))}


def run_backbones(names: list[str], resolution: int | None, selection: list[str], repeats: int = 1,
                  device: str = "cpu", log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """:func:`measure` for each backbone, each in its own child process."""
    rows = []
    for name in names:
        log(f"{name}: random weights, {repeats} timed image(s) …")
        done = subprocess.run([sys.executable, "-m", "dfbench.perf.backbone", name, str(resolution or 0),
                               ",".join(selection), str(repeats), device], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"perf backbone {name} failed: {done.stderr.strip()[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def from_args(args: Any, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """``dfbench perf backbone``: --backbone (default dinov2-base dinov2-giant), --select (default blocks.11)."""
    return run_backbones(args.backbone or ["dinov2-base", "dinov2-giant"], args.resolution,
                         args.select or ["blocks.11"], args.repeats, args.device or "cpu", log=log)


if __name__ == "__main__":
    name, resolution, selection, repeats, device = sys.argv[1:6]
    print(json.dumps(measure(name, int(resolution) or None, selection.split(","), int(repeats), device)))
