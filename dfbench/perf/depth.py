"""``dfbench perf depth``: an epoch of each NYUv2 depth probe at full size, from features in memory.

NYUv2's 795 training images, batch 8 (100 steps an epoch), synthetic features of the real shapes
(random values: the cost does not depend on them), each measurement in a fresh child process so its
peak RSS is its own:

* ``linear`` — ``cleandift-linear`` as it trains from the cache: 795 maps of SD2.1 ``up_blocks.1`` at
  768 px (1280×48×48, float16, as the task holds them, 5.9 MB each) and 48×48 targets, timed through
  the task's own :func:`~dfbench.tasks.nyuv2.linear.train_linear_bins`;
* ``dpt`` — ``probe3d-dpt``'s head step: probe3d's DPT head (hidden 512) on SD2.1's four up-block
  levels at 480 px resized to the 30×30 grid (1280, 1280, 640, 320 channels), output resized to the
  480×480 crop, 10·SigLoss + 0.5·gradient loss, AdamW;
* ``extract`` — what ``probe3d-dpt`` adds per step: SD2.1 (random weights) extracting the four
  up-blocks of 8 crops at 480 px (t=1, one noise), the frozen backbone run of every training step.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from dfbench.perf.common import peak_rss_gib

TRAIN_IMAGES, BATCH, CROP = 795, 8, 480
LINEAR_SHAPE = (1280, 48, 48)
DPT_CHANNELS, DPT_GRID = (1280, 1280, 640, 320), CROP // 16


def measure_linear(device: str, steps: int) -> dict[str, Any]:
    """s per step of ``cleandift-linear`` with all 795 training maps held (float16), and the peak RSS."""
    from dfbench.tasks.nyuv2.linear import train_linear_bins
    from dfbench.tasks.nyuv2.options import LinearBinsOptions

    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(LINEAR_SHAPE, generator=generator).half() for _ in range(TRAIN_IMAGES)]
    targets = [torch.rand(LINEAR_SHAPE[1:], generator=generator) * 9.5 + 0.5 for _ in range(TRAIN_IMAGES)]
    train_linear_bins(maps[:BATCH], targets[:BATCH], LinearBinsOptions(epochs=1), 0, device)   # warm-up
    start = time.perf_counter()
    train_linear_bins(maps[: steps * BATCH], targets[: steps * BATCH], LinearBinsOptions(epochs=1), 0, device)
    if device == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / steps
    return {"features": "1280×48×48 float16 × 795 (SD2.1 up_blocks.1 at 768 px)",
            "held_gib": sum(m.numel() * m.element_size() for m in maps) / 2**30, "s_per_step": per_step,
            "peak_rss_gib": peak_rss_gib()}


def measure_dpt(device: str, steps: int) -> dict[str, Any]:
    """s per step (median after a warm-up) of the DPT head at batch 8, and the peak RSS."""
    from dfbench.tasks.nyuv2.probes import DptDepthProbe, probe3d_depth_loss

    generator = torch.Generator().manual_seed(0)
    probe = DptDepthProbe(list(DPT_CHANNELS)).to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=5e-4)
    maps = [torch.randn(BATCH, channels, DPT_GRID, DPT_GRID, generator=generator).to(device)
            for channels in DPT_CHANNELS]
    target = (torch.rand(BATCH, 1, CROP, CROP, generator=generator) * 9.5 + 0.5).to(device)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        output = F.interpolate(probe(list(maps)), size=(CROP, CROP), mode="bilinear", align_corners=True)
        loss = probe3d_depth_loss(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        if step:
            times.append(time.perf_counter() - start)
    return {"head_parameters": sum(p.numel() for p in probe.parameters()), "s_per_step": statistics.median(times),
            "peak_rss_gib": peak_rss_gib(),
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def measure_extract(device: str, steps: int) -> dict[str, Any]:
    """s per step of SD2.1 (random weights) extracting the four up-blocks of 8 crops at 480 px."""
    from PIL import Image

    from dfbench.resolve import build_backbone
    from dfbench.settings import DTypeName, ExtractSettings

    dtype: DTypeName = "bfloat16" if device == "cuda" else "float32"
    backbone = build_backbone("sd21", init="random", device=device, dtype=dtype)
    settings = ExtractSettings(resolution=CROP, timestep=1, dtype=dtype, batch_size=BATCH)
    images = [Image.new("RGB", (CROP, CROP), (120, 90, 60))] * BATCH
    names = ["up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3"]
    backbone.extract(images, names, settings)   # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        features = backbone.extract(images, names, settings)
        float(features["up_blocks.3"].sum())
        times.append(time.perf_counter() - start)
    return {"dtype": dtype, "s_per_step": statistics.median(times), "peak_rss_gib": peak_rss_gib()}


def _child(kind: str, device: str, steps: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "dfbench.perf.depth", kind, device, str(steps)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"perf depth {kind} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_depth(device: str | None = None, steps: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time both probes' steps (and probe3d-dpt's per-step extraction) and extrapolate to an epoch."""
    from dfbench.perf.common import machine_description

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    per_epoch = math.ceil(TRAIN_IMAGES / BATCH)
    results: dict[str, Any] = {"machine": machine_description(torch.device(device)),
                               "setting": f"NYUv2 train: {TRAIN_IMAGES} images, batch {BATCH}, {per_epoch} steps an "
                                          "epoch; synthetic features of the real shapes"}
    for kind in ("linear", "dpt", "extract"):
        log(f"depth {kind}: {steps} steps on {device} …")
        results[kind] = _child(kind, device, steps)
        results[kind]["s_per_epoch"] = results[kind]["s_per_step"] * per_epoch
    results["cleandift-linear s/epoch (cached features)"] = results["linear"]["s_per_epoch"]
    results["probe3d-dpt s/epoch (head only, features in memory)"] = results["dpt"]["s_per_epoch"]
    results["probe3d-dpt s/epoch (with per-step extraction)"] = results["dpt"]["s_per_epoch"] + \
        results["extract"]["s_per_epoch"]
    return results


def from_args(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """``dfbench perf depth``: --repeats timed steps."""
    return run_depth(args.device, args.repeats, log=log)


if __name__ == "__main__":
    kind, device, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    measure = {"linear": measure_linear, "dpt": measure_dpt, "extract": measure_extract}[kind]
    print(json.dumps(measure(device, count)))
