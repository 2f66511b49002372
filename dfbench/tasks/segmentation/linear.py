"""Protocol ``ade20k/linear`` and ``cityscapes/linear``: a 1×1-conv linear probe on frozen (cacheable) features,
trained on sampled labelled pixels, scored as mmseg's IoUMetric (see :mod:`dfbench.tasks.segmentation.task`)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dfbench.errors import DfbenchInputError
from dfbench.features import combine_to_grid, image_features
from dfbench.options import require_at_least_one
from dfbench.tasks.base import RunContext, TaskOutput
from dfbench.tasks.segmentation.dataset import IGNORE_INDEX, SegmentationSample
from dfbench.tasks.segmentation.scoring import SegmentationProtocol, image_labels, score_maps

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedRun


@dataclass(frozen=True)
class LinearProbeOptions:
    """Options of the ``linear`` protocol (``--option key=value``)."""

    steps: int = 1000
    lr: float = 1e-2  # standardised features: 1e-3 needs several thousand steps to converge on the mini sets
    weight_decay: float = 1e-4
    batch_size: int = 8
    pixels_per_image: int = 512
    train_limit: int | None = None

    def validate(self, where: str) -> None:
        require_at_least_one(self, ("steps", "batch_size", "pixels_per_image", "train_limit"), where)
        if self.lr <= 0:
            raise DfbenchInputError(f"{where} option lr={self.lr}: must be > 0")


@dataclass(frozen=True)
class LinearProbe(SegmentationProtocol):
    """The linear probe on frozen features."""

    def evaluate(self, task: Any, context: RunContext, run: ResolvedRun, train: list[SegmentationSample],
                 evaluated: list[SegmentationSample]) -> TaskOutput:
        started = time.perf_counter()
        backbone, layout, options = run.backbone, task.layout, run.options
        images = {f"{name}/{sample.stem}": (sample.image, "") for name, samples in (("train", train),
                  ("eval", evaluated)) for sample in samples}
        found = image_features(backbone, images, run.selection, run.settings, context.cache, context.progress,
                               keep=combine_to_grid)
        extracted = time.perf_counter()
        train_maps = [found.features[f"train/{sample.stem}"] for sample in train]
        train_labels = [torch.from_numpy(label) for label in image_labels(layout, train).values()]
        probe, mean, std = train_probe(train_maps, train_labels, layout.num_classes, options, run.seed,
                                       backbone.device, context.progress)
        labels = image_labels(layout, evaluated)
        predictions = {stem: predict(probe, mean, std, found.features[f"eval/{stem}"], label.shape, backbone.device)
                       for stem, label in labels.items()}
        output = score_maps(layout, labels, predictions)
        output.selection, output.split = found.selection, run.split
        output.details = {"train_images": len(train)}
        output.timings = {"extract_s": extracted - started, "train_eval_s": time.perf_counter() - extracted,
                          "images": float(len(found.sizes))}
        return output


def sample_at_pixels(maps: torch.Tensor, points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Vectors K×C at integer pixels ``points`` (K×2, x y) of the map C×h×w bilinearly upsampled to
    ``size`` = (H, W) — exactly ``F.interpolate(…, mode="bilinear", align_corners=False)`` there."""
    height, width = size
    grid = torch.stack([(points[:, 0] + 0.5) / width * 2 - 1, (points[:, 1] + 0.5) / height * 2 - 1], dim=1)
    sampled = F.grid_sample(maps[None].float(), grid[None, None].to(maps.device, torch.float32), mode="bilinear",
                            padding_mode="border", align_corners=False)
    return sampled[0, :, 0].T


def train_probe(maps: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int, options: LinearProbeOptions,
                seed: int, device: Any, progress: bool = False) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A 1×1 conv trained on standardised ``maps`` (C×h×w each) against ``labels`` (H×W each, 255 ignored).

    Each step takes ``batch_size`` images and ``pixels_per_image`` of their labelled pixels (seeded
    draws). Bilinear upsampling is linear with weights summing to 1, so the upsampled logits at a
    pixel are the probe applied to the upsampled features there: the features are read off at those
    pixels (:func:`sample_at_pixels`, no gradient) and the loss is the mean cross-entropy over them."""
    stacked = torch.cat([value.flatten(1) for value in maps], dim=1)
    mean, std = stacked.mean(1), stacked.std(1).clamp(min=1e-6)
    labelled = [torch.nonzero(label != IGNORE_INDEX).flip(1) for label in labels]   # (x, y) of labelled pixels
    torch.manual_seed(seed)
    probe = torch.nn.Conv2d(maps[0].shape[0], num_classes, kernel_size=1).to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    order_rng, order = random.Random(seed), list[int]()
    pixel_rng = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(options.steps), desc="linear probe", unit="step", disable=not progress):
        vectors, targets = [], []
        for _ in range(min(options.batch_size, len(maps))):
            if not order:
                order = order_rng.sample(range(len(maps)), len(maps))
            index = order.pop()
            if not len(labelled[index]):
                continue
            chosen = labelled[index][torch.randint(len(labelled[index]), (options.pixels_per_image,),
                                                   generator=pixel_rng)]
            size = (labels[index].shape[0], labels[index].shape[1])
            vectors.append((sample_at_pixels(maps[index], chosen, size) - mean) / std)
            targets.append(labels[index][chosen[:, 1], chosen[:, 0]])
        if not vectors:
            continue
        logits = F.linear(torch.cat(vectors).to(device), probe.weight[:, :, 0, 0], probe.bias)
        loss = F.cross_entropy(logits, torch.cat(targets).to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe.eval(), mean[:, None, None], std[:, None, None]


def predict(probe: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor, features: torch.Tensor,
            shape: tuple[int, int], device: Any) -> np.ndarray:
    """Class ids H×W (0…C−1, the metric's encoding) of one image."""
    with torch.no_grad():
        logits = probe(((features - mean) / std)[None].to(device))
        logits = F.interpolate(logits, size=shape, mode="bilinear", align_corners=False)
    return logits[0].argmax(0).cpu().numpy().astype(np.int64)
