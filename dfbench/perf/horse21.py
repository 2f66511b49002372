"""``dfbench perf horse21``: the label-scarce protocol's training, streamed vs the release's all-in-RAM way.

Both sides use synthetic activations of a real selection's shapes (default: GDF's "Ours" on SD1.5 at
512 px — 1280×32², 1280×32², 640×64², 320×64², 3,520 channels; random values: the cost does not depend
on them) for Horse-21's 30 training images at 256². Each side runs in a fresh child process, so its
peak RSS is its own:

* ``streamed`` (dfbench): the native maps of the training images in a
  :class:`~dfbench.heads.pixel_features.PixelFeatureBank`, every labelled pixel a training sample,
  the 10 members stacked (one batched step trains all ten, each on its own 64 pixels);
* ``release``: every training pixel's upsampled feature materialised (``collect_features`` +
  ``X.permute(1, 0, 2, 3).reshape(d, -1)``, ``train_interpreter.py:40-57``) for as many images as
  asked, then the release's loop for one member (``DataLoader`` shuffle + drop_last, batch 64, Adam);
  its ensemble costs 10 such iterations per step of ours.

Seconds per iteration are medians over timed steps after warm-up; the full training time is
extrapolated for the release's minimum (early stopping cannot fire before epoch 5: ≥ 4 epochs + 52
batches per member) and maximum (100 epochs) schedules.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from dfbench.perf.common import peak_rss_gib

#: GDF "Ours" on SD1.5 at 512 px (the gdf-ours-sd15-horse21 preset): (channels, side) per activation
SD15_OURS_SHAPES = ((1280, 32), (1280, 32), (640, 64), (320, 64))
SIDE, TRAIN_IMAGES, NUM_CLASSES, BATCH, MEMBERS = 256, 30, 21, 64, 10


def _maps(images: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    return [{f"a{index}": torch.randn(channels, side, side, generator=generator)
             for index, (channels, side) in enumerate(SD15_OURS_SHAPES)} for _ in range(images)]


def measure_streamed(images: int = TRAIN_IMAGES, steps: int = 20) -> dict[str, Any]:
    """s per stacked 10-member step and peak RSS of dfbench's streamed training (run in a child)."""
    from dfbench.heads.pixel_features import PixelFeatureBank
    from dfbench.tasks.horse21.pixel_classifier import PixelClassifierEnsemble

    generator = torch.Generator().manual_seed(0)
    bank = PixelFeatureBank(_maps(images, generator), (SIDE, SIDE))
    pixels = images * SIDE * SIDE
    labels = torch.randint(0, NUM_CLASSES, (pixels,), generator=generator)
    ensemble = PixelClassifierEnsemble(MEMBERS, bank.dim, NUM_CLASSES)
    ensemble.initialise(0, list(range(MEMBERS)))
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=1e-3)
    times = []
    for step in range(steps + 3):
        start = time.perf_counter()
        chosen = torch.stack([torch.randint(0, pixels, (BATCH,), generator=generator) for _ in range(MEMBERS)])
        flat = chosen.reshape(-1)
        features = bank.gather(flat // (SIDE * SIDE), flat % (SIDE * SIDE) // SIDE, flat % SIDE)
        logits = ensemble(features.view(MEMBERS, BATCH, -1))
        losses = F.cross_entropy(logits.reshape(-1, NUM_CLASSES), labels[flat], reduction="none").view(
            MEMBERS, -1).mean(1)
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
        losses.tolist()
        if step >= 3:
            times.append(time.perf_counter() - start)
    return {"images": images, "channels": bank.dim, "bank_gib": bank.nbytes() / 2**30,
            "s_per_step_10_members": statistics.median(times), "peak_rss_gib": peak_rss_gib()}


def measure_release(images: int, steps: int = 20) -> dict[str, Any]:
    """The release's way for ``images`` images: materialise X, then s per one-member iteration."""
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    maps = _maps(images, generator)
    dim = sum(channels for channels, _ in SD15_OURS_SHAPES)
    start = time.perf_counter()
    features = torch.zeros((images, dim, SIDE, SIDE))
    for row, image in enumerate(maps):
        features[row] = torch.cat([F.interpolate(value[None], size=(SIDE, SIDE), mode="bilinear")[0]
                                   for value in image.values()])
    del maps
    features = features.permute(1, 0, 2, 3).reshape(dim, -1).permute(1, 0)
    labels = torch.randint(0, NUM_CLASSES, (len(features),), generator=generator)
    materialise_s = time.perf_counter() - start
    member = torch.nn.Sequential(torch.nn.Linear(dim, 128), torch.nn.ReLU(), torch.nn.BatchNorm1d(128),
                                 torch.nn.Linear(128, 32), torch.nn.ReLU(), torch.nn.BatchNorm1d(32),
                                 torch.nn.Linear(32, NUM_CLASSES))
    optimizer = torch.optim.Adam(member.parameters(), lr=1e-3)
    loader = iter(DataLoader(TensorDataset(features, labels), batch_size=BATCH, shuffle=True, drop_last=True))
    times = []
    for step in range(steps + 3):
        start = time.perf_counter()
        x, y = next(loader)
        loss = F.cross_entropy(member(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        if step >= 3:
            times.append(time.perf_counter() - start)
    return {"images": images, "channels": dim, "materialise_s": materialise_s,
            "features_gib": features.element_size() * features.numel() / 2**30,
            "s_per_iteration_1_member": statistics.median(times), "peak_rss_gib": peak_rss_gib()}


def _child(kind: str, images: int, steps: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "dfbench.perf.horse21", kind, str(images), str(steps)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_horse21(release_images: tuple[int, ...] = (1, 2, 4, 8), steps: int = 20,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Streamed (30 images) vs the release's all-in-RAM approach (``release_images`` images each, then
    extrapolated to 30), each in its own child process; times per step and the full-training estimates."""
    from dfbench.perf.common import machine_description

    results: dict[str, Any] = {"machine": machine_description(torch.device("cpu")),
                               "selection": "SD1.5 GDF Ours at 512 px (3,520 channels), Horse-21 train: 30 × 256²"}
    log(f"streamed: {TRAIN_IMAGES} images, {steps} stacked steps …")
    streamed = _child("streamed", TRAIN_IMAGES, steps)
    results["streamed (dfbench), 30 images"] = streamed
    release = []
    for images in release_images:
        log(f"release: {images} images materialised, {steps} iterations …")
        release.append(_child("release", images, steps))
        results[f"release (all in RAM), {images} images"] = release[-1]
    # RSS grows linearly with the images held: fit the last two points and extrapolate to 30
    (small, large) = release[-2], release[-1]
    per_image = (large["peak_rss_gib"] - small["peak_rss_gib"]) / (large["images"] - small["images"])
    release_30_gib = large["peak_rss_gib"] + per_image * (TRAIN_IMAGES - large["images"])
    batches = TRAIN_IMAGES * SIDE * SIDE // BATCH
    minimum, maximum = 4 * batches + 52, 100 * batches
    ours_step = streamed["s_per_step_10_members"]
    release_step = MEMBERS * statistics.median(entry["s_per_iteration_1_member"] for entry in release)
    results["estimate, 30 images, one seed"] = {
        "release_peak_rss_gib (extrapolated)": release_30_gib, "streamed_peak_rss_gib": streamed["peak_rss_gib"],
        "iterations per member: min (early stop) / max": f"{minimum} / {maximum}",
        "streamed_s_per_ensemble_step": ours_step, "release_s_per_ensemble_step (10 members)": release_step,
        "speedup (release / streamed)": release_step / ours_step,
        "streamed_hours_min_schedule": minimum * ours_step / 3600,
        "release_hours_min_schedule": minimum * release_step / 3600,
    }
    return results


def from_args(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """``dfbench perf horse21``: at least 20 timed steps."""
    return run_horse21(steps=max(args.repeats, 20), log=log)


if __name__ == "__main__":
    kind, count, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    measured = measure_streamed(count, repeats) if kind == "streamed" else measure_release(count, repeats)
    print(json.dumps(measured))
