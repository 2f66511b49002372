"""Protocol ``nyuv2/probe3d-dpt``: probe3d's DPT depth head trained on four feature levels of 480² centre
crops with its augmentation, 10·SigLoss + 0.5·gradient loss (the head and losses:
:mod:`dfbench.tasks.nyuv2.probes`; the crop and augmentation: :mod:`dfbench.tasks.nyuv2.augment`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dfbench.backbones.protocol import Backbone
from dfbench.errors import DfbenchInputError
from dfbench.images import load_image
from dfbench.settings import ExtractSettings
from dfbench.tasks.base import RunContext, seeded_subset
from dfbench.tasks.nyuv2.augment import augment, centre_box, centre_crop
from dfbench.tasks.nyuv2.dataset import DepthSample, geonet_samples
from dfbench.tasks.nyuv2.probes import DptDepthProbe, probe3d_depth_loss, warmup_cosine_factor
from dfbench.tasks.nyuv2.scoring import DepthProtocol

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedRun

#: the probe3d commit this protocol follows: after ac00369 (the gradient loss indexes the last two axes of a
#: batch) and fbe0cd2 (the DPT head and the prediction upsample bilinearly with align_corners), November 2025
PROBE3D_REFERENCE = "mbanani/probe3d@a1f1464"
#: probe3d's DPT reads features at 1/16 of the input (``DIFT.forward``)
DPT_STRIDE = 16


def dpt_inputs(backbone: Backbone, images: list[Any], names: list[str], settings: ExtractSettings,
               grid: int) -> list[torch.Tensor]:
    """The four selected activations of ``images`` (square crops), each resized (nearest) to grid×grid."""
    features = backbone.extract(images, names, settings)
    # the extraction ran under inference mode: clone, so the head's autograd may use the maps
    return [F.interpolate(features[name].clone(), size=(grid, grid), mode="nearest") for name in names]


@dataclass(frozen=True)
class Probe3dDpt(DepthProtocol):
    """probe3d's DPT head, scored on the centred square crop."""

    crops = True

    def training_samples(self, run: ResolvedRun) -> list[Any]:
        """probe3d's GeoNet release with option ``train_data``, else the labelled set's training split."""
        if run.options.train_data is None:
            return super().training_samples(run)
        return seeded_subset(geonet_samples(run.options.train_data), run.options.train_limit, run.seed)

    def probe(self, context: RunContext, run: ResolvedRun, train: list[Any], evaluated: list[DepthSample],
              targets: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
        return run_dpt(context, run, train, evaluated, targets)


def run_dpt(context: RunContext, run: ResolvedRun, train: list[Any], evaluated: list[DepthSample],
            targets: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
    """Train probe3d's DPT probe on augmented crops (features extracted per step); predict the test crops."""
    backbone, selection, settings, options = run.backbone, run.selection, run.settings, run.options
    names = backbone.canonical_selection(selection)
    if len(names) != 4:
        raise DfbenchInputError(f"nyuv2/probe3d-dpt: the DPT head takes 4 activations, got {len(names)} "
                                f"({', '.join(names)}); e.g. --preset probe3d-dift (up_blocks.0 … up_blocks.3)")
    resolution = run.resolution
    grid = resolution // DPT_STRIDE
    if grid < 1:
        raise DfbenchInputError(f"nyuv2/probe3d-dpt: resolution {resolution} gives no {DPT_STRIDE}-pixel grid; "
                                f"use ≥ {DPT_STRIDE}")
    if context.cache is not None:
        context.log("nyuv2/probe3d-dpt extracts features of augmented crops at every step; the feature cache "
                    "is not used")
    device = backbone.device
    rng = np.random.default_rng(run.seed)
    torch.manual_seed(run.seed)

    def load_pair(sample: Any, train_time: bool) -> tuple[Any, np.ndarray]:
        image, depth = sample.load() if train_time else (load_image(sample.image), targets[sample.stem])
        image, depth = centre_crop(image, depth, options.crop)
        if train_time and options.augment:
            image, depth = augment(image, depth, rng)
        return image, depth

    started = time.perf_counter()
    steps_per_epoch = math.ceil(len(train) / options.batch_size)
    total_steps = options.epochs * steps_per_epoch
    probe: DptDepthProbe | None = None
    optimizer: torch.optim.AdamW | None = None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    losses: list[float] = []
    bar = tqdm(total=total_steps, desc="DPT depth probe", unit="step", disable=not context.progress)
    for _ in range(options.epochs):
        order, epoch_losses = rng.permutation(len(train)), []
        for start in range(0, len(order), options.batch_size):
            pairs = [load_pair(train[index], True) for index in order[start : start + options.batch_size]]
            maps = dpt_inputs(backbone, [image for image, _ in pairs], names, settings, grid)
            if probe is None:
                probe = DptDepthProbe([value.shape[1] for value in maps], options.hidden, options.kernel_size,
                                      options.min_depth, options.max_depth, options.bins,
                                      options.normalisation).to(device)
                optimizer = torch.optim.AdamW(probe.parameters(), lr=options.lr, weight_decay=options.weight_decay)
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine_factor(
                    step, total_steps, options.warmup_epochs * steps_per_epoch))
            assert optimizer is not None and scheduler is not None
            predicted = probe(maps)
            sides = [depth.shape[0] for _, depth in pairs]
            truth = [torch.tensor(depth)[None, None].to(device) for _, depth in pairs]
            outputs = [F.interpolate(predicted[index : index + 1], size=(side, side), mode="bilinear",
                                     align_corners=True) for index, side in enumerate(sides)]
            batch: list[torch.Tensor] | torch.Tensor = outputs
            truths: list[torch.Tensor] | torch.Tensor = truth
            if len(set(sides)) == 1:   # one batch tensor, exactly as probe3d
                batch, truths = torch.cat(outputs), torch.cat(truth)
            loss = probe3d_depth_loss(batch, truths, options.max_depth)
            bar.update()
            if torch.isfinite(loss):
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                epoch_losses.append(float(loss.detach()))
            scheduler.step()
        losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
    bar.close()
    if probe is None:
        raise DfbenchInputError("nyuv2/probe3d-dpt: no training images to fit the probe on")
    trained = time.perf_counter()
    probe.eval()
    predictions = {}
    for start in tqdm(range(0, len(evaluated), options.batch_size), desc="predict", unit="batch",
                      disable=not context.progress):
        chunk = evaluated[start : start + options.batch_size]
        pairs = [load_pair(sample, False) for sample in chunk]
        with torch.no_grad():
            predicted = probe(dpt_inputs(backbone, [image for image, _ in pairs], names, settings, grid))
        for index, sample in enumerate(chunk):
            target = targets[sample.stem]
            top, left, side = centre_box(target.shape[0], target.shape[1], options.crop)
            crop = F.interpolate(predicted[index : index + 1], size=(side, side), mode="bilinear", align_corners=True)
            full = np.full(target.shape, np.nan, dtype=np.float32)
            full[top : top + side, left : left + side] = crop[0, 0].cpu().numpy()
            predictions[sample.stem] = full
    details = {"selection": names, "grid": grid, "final_train_loss": losses[-1] if losses else float("nan"),
               "epochs": options.epochs, "steps": total_steps, "reference": PROBE3D_REFERENCE,
               "train_set": "GeoNet NYU release" if options.train_data else "NYUv2 labelled train",
               "head_parameters": int(sum(parameter.numel() for parameter in probe.parameters()))}
    timings = {"train_s": trained - started, "eval_s": time.perf_counter() - trained}
    return predictions, details, timings
