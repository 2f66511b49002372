"""ADE20K and Cityscapes semantic segmentation: protocols ``linear`` (v1) and ``gdf-uper`` (v1).

``gdf-uper``: GDF's UPerNet on mmsegmentation + mmengine; see
:mod:`dfbench.tasks.segmentation.uper`.

``linear``: a 1×1 convolution (a per-pixel linear classifier) on the frozen features. The
selected activations of each image are resized (bilinear) to the largest selected map and
concatenated; each channel is standardised with the training set's mean and std. The probe is
trained with AdamW on cross-entropy against the labels at their own resolution — at seeded samples
of labelled pixels, whose features are read off the bilinearly upsampled maps (ignored pixels left
out) — on the ``train`` split, with no augmentation —
features come from the feature cache when one is given, so a probe trains in minutes. Evaluation:
argmax of the upsampled logits on ``val``, scored exactly as mmseg's ``IoUMetric``
(:mod:`dfbench.tasks.segmentation.metrics`): mIoU (primary), mAcc, aAcc and per-class IoU.

Saved predictions (``run --save-predictions``, ``dfbench score``): one single-channel PNG per image,
``<image stem>.png``, in the dataset's annotation encoding — ADE20K 1…150 as in its annotation
files, Cityscapes trainIds 0…18 — at the image's size. ``dfbench score`` also accepts the names mmseg's
``IoUMetric(output_dir=…)`` / ``format_only`` writes, ``<image file name without suffix>.png``
(Cityscapes ``<city>_<seq>_<frame>_leftImg8bit.png``; for ADE20K the two names are the same); Cityscapes'
own evaluation likewise matches files by the ``<city>_<seq>_<frame>`` prefix. (mmseg's
``CityscapesMetric`` writes labelIds 0…33 instead of trainIds: those files are refused by the range check.)
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dfbench.atomic import atomic_write_png
from dfbench.errors import DfbenchInputError
from dfbench.features import combine_to_grid, image_features
from dfbench.images import image_size
from dfbench.options import require_at_least_one
from dfbench.tasks.base import (
    MetricSpec,
    ProtocolSpec,
    RunContext,
    Task,
    TaskOutput,
    bootstrap_stderr,
    seeded_subset,
)
from dfbench.tasks.segmentation.dataset import (
    ADE20K,
    CITYSCAPES,
    IGNORE_INDEX,
    SegmentationLayout,
    SegmentationSample,
    class_names,
    load_label,
    load_samples,
    mmseg_metainfo,
)
from dfbench.tasks.segmentation.metrics import image_areas, pooled_areas, segmentation_metrics
from dfbench.tasks.segmentation.uper import GdfUperOptions, train_and_predict

#: validation images shown in the overlay figure
OVERLAY_IMAGES = 4


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


class SegmentationTask(Task):
    """Semantic segmentation on one dataset layout (see the module docstring)."""

    layout: SegmentationLayout = ADE20K
    protocols = {"linear": ProtocolSpec("linear", 1, LinearProbeOptions,
                                        "a 1×1-conv linear probe on frozen features, mIoU as mmseg's IoUMetric"),
                 "gdf-uper": ProtocolSpec("gdf-uper", 1, GdfUperOptions,
                                          "GDF's UPerNet on frozen features (mmseg + mmengine Runner, 80k iters)",
                                          distributed=True)}
    default_protocol = "linear"
    default_split = "val"
    sweep_protocol, sweep_train_split = "linear", "train"
    metrics = {"mIoU": MetricSpec(True, True, "%"), "mIoU_stderr": MetricSpec(False, False, "%"),
               "mAcc": MetricSpec(True, False, "%"),
               "aAcc": MetricSpec(True, False, "%"), "images": MetricSpec(unit="images")}
    leaderboard_metrics = ("mIoU", "mAcc", "aAcc")

    def mini_root(self) -> Path:
        from dfbench.tasks.segmentation.mini import mini_segmentation_root

        return mini_segmentation_root(self.layout)

    def split_images(self, data_root: str | Path, split: str) -> list[tuple[Path, str]]:
        return [(sample.image, "") for sample in load_samples(self.layout, data_root, split)]

    def run(self, context: RunContext, backbone: Any, selection: list[str], settings: Any, data_root: Path,
            split: str, protocol: str, options: LinearProbeOptions | GdfUperOptions) -> TaskOutput:
        train = seeded_subset(load_samples(self.layout, data_root, "train"), options.train_limit, context.seed)
        evaluated = seeded_subset(load_samples(self.layout, data_root, split), context.limit, context.seed)
        if protocol == "gdf-uper":
            assert isinstance(options, GdfUperOptions)
            selection = backbone.canonical_selection(selection)
            predictions, details, timings = train_and_predict(self.layout, context, backbone, selection, settings,
                                                              data_root, split, train, evaluated, options)
            output = self._score(self.labels(evaluated), predictions)
            output.selection, output.split, output.details = selection, split, details
            output.timings = {**timings, "images": float(len(evaluated))}
        else:
            assert isinstance(options, LinearProbeOptions)
            output = self._run_linear(context, backbone, selection, settings, split, train, evaluated, options)
        # the figure's images: the first few evaluated ones
        output.details["overlay_images"] = [[sample.stem, str(sample.image), str(sample.label)]
                                            for sample in evaluated[:OVERLAY_IMAGES]]
        return output

    def _run_linear(self, context: RunContext, backbone: Any, selection: list[str], settings: Any, split: str,
                    train: list[SegmentationSample], evaluated: list[SegmentationSample],
                    options: LinearProbeOptions) -> TaskOutput:
        started = time.perf_counter()
        images = {f"{name}/{sample.stem}": (sample.image, "") for name, samples in (("train", train),
                  ("eval", evaluated)) for sample in samples}
        found = image_features(backbone, images, selection, settings, context.cache, context.progress,
                               keep=combine_to_grid)
        extracted = time.perf_counter()
        train_maps = [found.features[f"train/{sample.stem}"] for sample in train]
        train_labels = [torch.from_numpy(label) for label in self.labels(train).values()]
        probe, mean, std = train_probe(train_maps, train_labels, self.layout.num_classes, options, context.seed,
                                       backbone.device, context.progress)
        labels = self.labels(evaluated)
        predictions = {stem: predict(probe, mean, std, found.features[f"eval/{stem}"], label.shape, backbone.device)
                       for stem, label in labels.items()}
        output = self._score(labels, predictions)
        output.selection, output.split = found.selection, split
        output.details = {"train_images": len(train)}
        output.timings = {"extract_s": extracted - started, "train_eval_s": time.perf_counter() - extracted,
                          "images": float(len(found.sizes))}
        return output

    def labels(self, samples: list[SegmentationSample]) -> dict[str, np.ndarray]:
        """Each sample's label map as the metric sees it, checked against its image's size; by stem."""
        return {sample.stem: load_label(self.layout, sample.label, image_size(sample.image)[::-1])
                for sample in samples}

    def _score(self, labels: dict[str, np.ndarray], predictions: dict[str, np.ndarray]) -> TaskOutput:
        per_image = [image_areas(predictions[stem], label, self.layout.num_classes, IGNORE_INDEX)
                     for stem, label in labels.items()]
        areas = pooled_areas(per_image, self.layout.num_classes)
        summary, per_class = segmentation_metrics(areas, class_names(self.layout))
        # resampling images: the pooled mIoU of each resample
        summary["mIoU_stderr"] = bootstrap_stderr(len(per_image), lambda chosen: segmentation_metrics(
            pooled_areas([per_image[index] for index in chosen], self.layout.num_classes))[0]["mIoU"])
        table = {name: {"IoU": values["IoU"]} for name, values in per_class.items() if not np.isnan(values["IoU"])}
        return TaskOutput({**summary, "images": float(len(labels))}, table, predictions)

    # ------------------------------------------------------------------ figures, saved predictions, scoring
    def figures(self, output: TaskOutput, title: str, folder: Path) -> list[Path]:
        from dfbench.plots import plot_per_category
        from dfbench.tasks.segmentation.plots import plot_overlays

        figures = [plot_per_category(output.per_category, "IoU", title, folder / "per-class-iou.png",
                                     items="classes")]
        rows = [(stem, Path(image), load_label(self.layout, label), output.predictions[stem])
                for stem, image, label in output.details.get("overlay_images", [])]
        if rows:
            palette = mmseg_metainfo(self.layout)["palette"]
            figures.append(plot_overlays(rows, palette, title, folder / "overlays.png", class_names(self.layout)))
        return figures

    def save_predictions(self, output: TaskOutput, folder: Path) -> Path:
        folder = Path(folder)
        for stem, prediction in output.predictions.items():
            encoded = prediction + 1 if self.layout.reduce_zero_label else prediction
            atomic_write_png(folder / f"{stem}.png", encoded)
        return folder

    def score(self, data_root: Path, split: str, protocol: str, options: Any, folder: Path,
              limit: int | None = None, seed: int = 0) -> TaskOutput:
        folder = Path(folder)
        if not folder.is_dir():
            raise DfbenchInputError(f"predictions {folder}: no such folder")
        samples = seeded_subset(load_samples(self.layout, data_root, split), limit, seed)
        paths = {sample.stem: prediction_file(folder, sample) for sample in samples}
        missing = [sample for sample in samples if paths[sample.stem] is None]
        if missing:
            hint = " (it holds predictions.json: made for spair?)" if (folder / "predictions.json").exists() else ""
            names = " or ".join(dict.fromkeys(path.name for path in prediction_names(folder, missing[0])))
            raise DfbenchInputError(f"predictions {folder}: no prediction for {len(missing)} of {len(samples)} "
                                    f"{self.layout.name} {split} images (first: {names}){hint}")
        labels = self.labels(samples)
        predictions = {}
        for stem, label in labels.items():
            path = paths[stem]
            assert path is not None                         # the missing ones were refused above
            # the label checks: readable, one channel, in range, at the image's size
            decoded = load_label(self.layout, path, label.shape[::-1])
            if self.layout.reduce_zero_label and (decoded == IGNORE_INDEX).any():
                raise DfbenchInputError(f"predictions {path}: value 0 is not a class; predictions are 1…150")
            predictions[stem] = decoded
        output = self._score(labels, predictions)
        output.split = split
        return output



def prediction_names(folder: Path, sample: Any) -> list[Path]:
    """Where a sample's saved prediction may be: ``<stem>.png`` (dfbench's name), then mmseg's
    ``<image file name without suffix>.png`` (``…_leftImg8bit.png`` for Cityscapes)."""
    return [folder / f"{sample.stem}.png", folder / f"{Path(sample.image.name).stem}.png"]


def prediction_file(folder: Path, sample: Any) -> Path | None:
    """The first of :func:`prediction_names` that exists, else None."""
    return next((path for path in prediction_names(folder, sample) if path.is_file()), None)


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


class Ade20kTask(SegmentationTask):
    """ADE20K (150 classes, mmseg's ADEChallengeData2016 layout): semantic segmentation, mIoU."""

    name = "ade20k"
    layout = ADE20K
    download_hint = ADE20K.download_hint + " (or a Hugging Face datasets copy: hf:<id> or a save_to_disk folder)"

    def data_folder(self, data_root: str) -> Path:
        """The folder layout, or a Hugging Face source (``hf:<id>``, a ``save_to_disk`` folder) written
        into it once (:mod:`dfbench.tasks.segmentation.hf_ade20k`)."""
        from dfbench.tasks.segmentation.hf_ade20k import hf_ade20k_root, is_hf_source

        return hf_ade20k_root(data_root) if is_hf_source(data_root) else Path(data_root)


class CityscapesTask(SegmentationTask):
    """Cityscapes (19 trainId classes, leftImg8bit + gtFine): semantic segmentation, mIoU."""

    name = "cityscapes"
    layout = CITYSCAPES
    download_hint = CITYSCAPES.download_hint
