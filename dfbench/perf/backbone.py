"""``dfbench perf backbone``: seconds per image and peak RSS of any registered backbone (random weights),
each backbone in a fresh child process so its peak RSS (VmHWM) is its own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def measure(name: str, resolution: int | None, selection: list[str], repeats: int, device: str,
            settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """In this process: build ``name`` with random weights, one warm-up image, then ``repeats`` timed images
    (``settings``: e.g. ``dtype``, ``text_encoders``: a DiT's T5 left out is never built with weights)."""
    import statistics

    import torch

    from dfbench.perf.common import machine_description, perf_image, vm_hwm_gib
    from dfbench.resolve import resolve_features

    started = time.perf_counter()
    given = {**(settings or {}), **({"resolution": resolution} if resolution else {})}
    features = resolve_features(name, selection=selection, settings=given, device=device, init="random")
    built = time.perf_counter() - started
    backbone, selection, resolved = features.backbone, features.selection, features.settings
    image = perf_image()
    backbone.extract([image], selection, resolved)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backbone.extract([image], selection, resolved)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    model = getattr(backbone, "model", None) or getattr(backbone, "denoiser", None)   # a ViT's, a denoiser's
    return {"backbone": name, "resolution": resolved.resolution, "selection": selection,
            "dtype": resolved.dtype, "text_encoders": resolved.text_encoders,
            "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2) if model else None,
            "build_s": built, "s_per_image": statistics.median(times), "peak_rss_gib": vm_hwm_gib(),
            "machine": machine_description(torch.device(device))}


def run_backbones(names: list[str], resolution: int | None, selection: list[str], repeats: int = 1,
                  device: str = "cpu", log: Callable[[str], None] = print,
                  settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """:func:`measure` for each backbone, each in its own child process."""
    rows = []
    for name in names:
        log(f"{name}: random weights, {repeats} timed image(s) …")
        done = subprocess.run([sys.executable, "-m", "dfbench.perf.backbone", name, str(resolution or 0),
                               ",".join(selection), str(repeats), device, json.dumps(settings or {})],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"perf backbone {name} failed: {done.stderr.strip()[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def from_args(args: Any, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """``dfbench perf backbone``: --backbone (default dinov2-base dinov2-giant), --select (default blocks.11),
    --dtype and --text-encoders (a DiT's T5 is left out with ``none``/``clip``)."""
    settings = {key: value for key, value in (("dtype", args.dtype), ("text_encoders", args.text_encoders)) if value}
    return run_backbones(args.backbone or ["dinov2-base", "dinov2-giant"], args.resolution,
                         args.select or ["blocks.11"], args.repeats, args.device or "cpu", log=log, settings=settings)


if __name__ == "__main__":
    name, resolution, selection, repeats, device, settings = sys.argv[1:7]
    print(json.dumps(measure(name, int(resolution) or None, selection.split(","), int(repeats), device,
                             json.loads(settings))))
