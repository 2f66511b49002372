"""Monocular depth on NYU Depth v2 (labeled set, 795 train / 654 test): protocols ``cleandift-linear``
(v1) and ``probe3d-dpt`` (v1). Data: :mod:`dfbench.tasks.nyuv2.dataset`; metrics:
:mod:`dfbench.tasks.nyuv2.metrics` (probe3d's ``evaluate_depth``: per image, then averaged;
scale-aware and, with ``_si``, scale-and-shift-invariant).

``cleandift-linear`` — CleanDIFT's depth probe (``src/depth.py: DepthPred``, ``configs/sd21_depth_prober.yaml``):
the whole image through the backbone (squashed, as CleanDIFT's bilinear resize to 768²), the selected
activations combined into one map (bilinear to the largest, concatenated), a 1×1 convolution to 256
uniform bins in [0.1, 10] m (AdaBins' linear normalisation). Training follows ``DepthPred.forward``
with ``interpolate_features=NONE``: the loss (CleanDIFT's SigLoss) is taken at the features'
resolution against the ground truth resized bilinearly (``align_corners=False``) to it. Evaluation:
the prediction resized bilinearly (``align_corners=False``) to the ground truth's size, as their
notebook does. Features come from the feature cache when one is given (no augmentation), so a probe
trains in minutes. CleanDIFT does not publish the probe's optimiser settings: AdamW, lr 1e-3,
weight decay 0.01, batch 8, 10 epochs are dfbench's.

``probe3d-dpt`` — probe3d's ``train_depth.py`` with ``configs/probe/depth_dpt.yaml``: the centred
square crop (NYU: 480×480), four selected activations each resized (nearest) to a grid of the model
input / 16 (probe3d's ``DIFT.forward``), the DPT head (:class:`~dfbench.tasks.nyuv2.probes.DptDepthProbe`,
hidden 512, kernel 3, bins in [0.001, 10] m), its output resized bilinearly (``align_corners=True``)
to the crop, loss 10·SigLoss + 0.5·gradient loss; AdamW lr 5e-4, 10 epochs, batch 8, the learning
rate warmed up over 1.5 epochs then cosine-decayed per step; training images augmented (colour jitter,
random resized crop; :mod:`dfbench.tasks.nyuv2.augment`). Features are extracted on the fly for
every training step (augmented crops differ each epoch), as probe3d runs its frozen backbone; the
feature cache is not used. Scored on the centred crop of the test images.

Saved predictions (``run --save-predictions``, ``dfbench score``): ``<image stem>.npy``, float32
metres at the ground truth's size; for ``probe3d-dpt`` the pixels outside the evaluated crop are NaN.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dfbench.atomic import atomic_write_npy
from dfbench.errors import DfbenchInputError
from dfbench.features import combine_to_grid, image_features
from dfbench.options import require_at_least_one
from dfbench.tasks.base import (
    MetricSpec,
    ProtocolSpec,
    RunContext,
    Task,
    TaskOutput,
    seeded_subset,
)
from dfbench.tasks.nyuv2.augment import centre_box
from dfbench.tasks.nyuv2.dataset import DOWNLOAD_HINT, DepthSample, load_depth, load_samples
from dfbench.tasks.nyuv2.dpt import run_dpt
from dfbench.tasks.nyuv2.metrics import METRIC_KEYS, depth_metrics
from dfbench.tasks.nyuv2.probes import NORMALISATIONS, LinearBinsProbe

#: test images whose features are held at once by ``cleandift-linear`` (they are predicted, then dropped)
EVAL_CHUNK = 32
EXAMPLE_IMAGES = 4
#: probe3d's DIFT wrapper: dense features at (H/16, W/16) of the model input


@dataclass(frozen=True)
class DepthProbeOptions:
    """What both depth protocols share (``--option key=value``)."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    min_depth: float = 0.1
    max_depth: float = 10.0
    bins: int = 256
    normalisation: str = "linear"
    train_limit: int | None = None

    def validate(self, where: str) -> None:
        require_at_least_one(self, ("epochs", "batch_size", "bins", "train_limit"), where)
        if self.lr <= 0 or self.weight_decay < 0:
            raise DfbenchInputError(f"{where} options lr={self.lr}, weight_decay={self.weight_decay}: lr must be > 0 "
                                    "and weight_decay ≥ 0")
        if not 0 < self.min_depth < self.max_depth:
            raise DfbenchInputError(f"{where} options min_depth={self.min_depth}, max_depth={self.max_depth}: need "
                                    "0 < min_depth < max_depth")
        if self.normalisation not in NORMALISATIONS:
            raise DfbenchInputError(f"{where} option normalisation={self.normalisation!r}: choose "
                                    f"{', '.join(NORMALISATIONS)}")


@dataclass(frozen=True)
class LinearBinsOptions(DepthProbeOptions):
    """Options of ``cleandift-linear``: CleanDIFT's bins (256 in [0.1, 10] m); optimiser settings dfbench's."""


@dataclass(frozen=True)
class DptOptions(DepthProbeOptions):
    """Options of ``probe3d-dpt``; the defaults are probe3d's."""

    lr: float = 5e-4
    min_depth: float = 0.001
    warmup_epochs: float = 1.5
    hidden: int = 512
    kernel_size: int = 3
    crop: int | None = None
    augment: bool = True

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.hidden < 1 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise DfbenchInputError(f"{where} options hidden={self.hidden}, kernel_size={self.kernel_size}: hidden "
                                    "≥ 1 and an odd kernel_size")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise DfbenchInputError(f"{where} option warmup_epochs={self.warmup_epochs}: must be in [0, epochs)")
        if self.crop is not None and self.crop < 1:
            raise DfbenchInputError(f"{where} option crop={self.crop}: must be ≥ 1 (none: the shorter side)")


class NyuV2Task(Task):
    """NYU Depth v2 monocular depth (795 train / 654 test labelled images): RMSE, AbsRel, δ1 of a probe."""

    name = "nyuv2"
    protocols = {
        "cleandift-linear": ProtocolSpec("cleandift-linear", 1, LinearBinsOptions,
                                         "CleanDIFT's 1×1-conv probe to 256 depth bins on frozen features, SigLoss"),
        "probe3d-dpt": ProtocolSpec("probe3d-dpt", 1, DptOptions,
                                    "probe3d's DPT depth head on four feature levels, 480² centre crop, "
                                    "10·SigLoss + 0.5·gradient loss, augmentation"),
    }
    default_protocol = "cleandift-linear"
    default_split = "test"
    download_hint = DOWNLOAD_HINT
    sweep_protocol, sweep_train_split = "cleandift-linear", "train"
    metrics = {
        **{f"{key}{suffix}": MetricSpec(key.startswith("delta"), key == "rmse" and suffix == "",
                                        "m" if key == "rmse" else "ratio")
           for suffix in ("", "_si") for key in METRIC_KEYS},
        "rmse_stderr": MetricSpec(False, False, "m"), "images": MetricSpec(unit="images"),
    }
    leaderboard_metrics = ("rmse", "abs_rel", "delta1", "rmse_si", "delta1_si")

    def mini_root(self) -> Path:
        from dfbench.tasks.nyuv2.mini import mini_nyuv2_root

        return mini_nyuv2_root()

    def data_folder(self, data_root: str) -> Path:
        """The folder layout, or the official ``nyu_depth_v2_labeled.mat`` written into it once."""
        from dfbench.tasks.nyuv2.dataset import nyuv2_root

        return nyuv2_root(data_root)

    def split_images(self, data_root: str | Path, split: str) -> list[tuple[Path, str]]:
        return [(sample.image, "") for sample in load_samples(data_root, split)]

    @staticmethod
    def ground_truth(sample: DepthSample) -> np.ndarray:
        """A sample's depth (metres, 0 = invalid), checked against its image's size."""
        from dfbench.images import image_size

        return load_depth(sample.depth, image_size(sample.image))

    def run(self, context: RunContext, backbone: Any, selection: list[str], settings: Any, data_root: Path,
            split: str, protocol: str, options: LinearBinsOptions | DptOptions) -> TaskOutput:
        train = seeded_subset(load_samples(data_root, "train"), options.train_limit, context.seed)
        evaluated = seeded_subset(load_samples(data_root, split), context.limit, context.seed)
        targets = {sample.stem: self.ground_truth(sample) for sample in evaluated}
        if protocol == "probe3d-dpt":
            for sample in evaluated:
                self.crop_box(targets[sample.stem].shape, options, sample)
            assert isinstance(options, DptOptions)
            predictions, details, timings = run_dpt(context, backbone, selection, settings, train, evaluated,
                                                    targets, options)
        else:
            assert isinstance(options, LinearBinsOptions)
            predictions, details, timings = run_linear(context, backbone, selection, settings, train, evaluated,
                                                       targets, options)
        output = self.evaluate(predictions, targets, protocol, options)
        output.split = split
        output.selection = details.pop("selection")
        output.details = {**details, "train_images": len(train),
                          "examples": [[sample.stem, str(sample.image), str(sample.depth)]
                                       for sample in evaluated[:EXAMPLE_IMAGES]]}
        output.timings = timings
        return output

    def crop_box(self, shape: tuple[int, ...], options: Any, sample: DepthSample | str) -> tuple[int, int, int]:
        """(top, left, side) of the evaluated crop of an image of ``shape`` under ``probe3d-dpt``."""
        try:
            return centre_box(shape[0], shape[1], options.crop)
        except ValueError as error:
            name = sample.image if isinstance(sample, DepthSample) else sample
            raise DfbenchInputError(f"nyuv2 {name}: {error}; pass --option crop=N with N ≤ the shorter side") \
                from None

    def evaluate(self, predictions: dict[str, np.ndarray], targets: dict[str, np.ndarray], protocol: str,
                 options: Any) -> TaskOutput:
        """Metrics of full-size predictions (the ``probe3d-dpt`` crop taken from both)."""
        pairs = []
        for stem, target in targets.items():
            prediction = predictions[stem]
            if protocol == "probe3d-dpt":
                top, left, side = self.crop_box(target.shape, options, stem)
                prediction = prediction[top : top + side, left : left + side]
                target = target[top : top + side, left : left + side]
            pairs.append((prediction, target))
        metrics = depth_metrics([p for p, _ in pairs], [t for _, t in pairs])
        return TaskOutput({**metrics, "images": float(len(pairs))}, {}, predictions)

    # ------------------------------------------------------------------ figures, saved predictions, scoring
    def figures(self, output: TaskOutput, title: str, folder: Path) -> list[Path]:
        from dfbench.tasks.nyuv2.plots import plot_depth_examples

        rows = [(stem, Path(image), load_depth(depth), output.predictions[stem])
                for stem, image, depth in output.details.get("examples", [])]
        return [plot_depth_examples(rows, title, folder / "depth-examples.png")] if rows else []

    def save_predictions(self, output: TaskOutput, folder: Path) -> Path:
        folder = Path(folder)
        for stem, prediction in output.predictions.items():
            atomic_write_npy(folder / f"{stem}.npy", prediction)
        return folder

    def read_prediction(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        """A saved prediction: 2-D float metres at the ground truth's ``shape``."""
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DfbenchInputError(f"predictions {path}: not readable ({error.__class__.__name__})") from None
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.floating):
            raise DfbenchInputError(f"predictions {path}: shape {values.shape}, dtype {values.dtype}; expected a 2-D "
                                    "float array of metres")
        if values.shape != tuple(shape):
            raise DfbenchInputError(f"predictions {path}: {values.shape[0]}×{values.shape[1]}, the ground truth is "
                                    f"{shape[0]}×{shape[1]}; save predictions at the ground truth's size")
        return values

    def score(self, data_root: Path, split: str, protocol: str, options: Any, folder: Path,
              limit: int | None = None, seed: int = 0) -> TaskOutput:
        folder = Path(folder)
        if not folder.is_dir():
            raise DfbenchInputError(f"predictions {folder}: no such folder")
        samples = seeded_subset(load_samples(data_root, split), limit, seed)
        missing = [sample.stem for sample in samples if not (folder / f"{sample.stem}.npy").is_file()]
        if missing:
            raise DfbenchInputError(f"predictions {folder}: no <stem>.npy for {len(missing)} of {len(samples)} nyuv2 "
                                    f"{split} images (first: {missing[0]}.npy)")
        targets = {sample.stem: self.ground_truth(sample) for sample in samples}
        predictions = {}
        for stem, target in targets.items():
            path = folder / f"{stem}.npy"
            prediction = self.read_prediction(path, target.shape)
            top, left, side = (self.crop_box(target.shape, options, stem) if protocol == "probe3d-dpt"
                               else (0, 0, None))
            scored = prediction[top : top + side, left : left + side] if side else prediction
            if not np.isfinite(scored).all():
                raise DfbenchInputError(f"predictions {path}: NaN or inf inside the evaluated "
                                        f"{'crop' if side else 'image'}")
            predictions[stem] = prediction
        output = self.evaluate(predictions, targets, protocol, options)
        output.split = split
        return output


# ------------------------------------------------------------------------------------------ cleandift-linear
def run_linear(context: RunContext, backbone: Any, selection: list[str], settings: Any, train: list[DepthSample],
               evaluated: list[DepthSample], targets: dict[str, np.ndarray], options: LinearBinsOptions
               ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
    """Train the linear-bins probe on cached/extracted features of ``train``; predict ``evaluated`` in chunks."""
    started = time.perf_counter()

    def keep(activations: dict[str, torch.Tensor]) -> torch.Tensor:
        return combine_to_grid(activations).half()  # float16 halves what 795 NYU maps hold (SD2.1: 5.9 MB each)

    found = image_features(backbone, {sample.stem: (sample.image, "") for sample in train}, selection, settings,
                           context.cache, context.progress, keep=keep)
    maps = [found.features[sample.stem] for sample in train]
    # the loss is taken at the features' resolution: the ground truth resized bilinearly to each map
    train_targets = [F.interpolate(torch.from_numpy(NyuV2Task.ground_truth(sample))[None, None],
                                   size=tuple(feature.shape[1:]), mode="bilinear", align_corners=False)[0, 0]
                     for sample, feature in zip(train, maps, strict=True)]
    extracted = time.perf_counter()
    probe, losses = train_linear_bins(maps, train_targets, options, context.seed, backbone.device, context.progress)
    del maps
    trained = time.perf_counter()
    predictions = {}
    for start in range(0, len(evaluated), EVAL_CHUNK):
        chunk = evaluated[start : start + EVAL_CHUNK]
        chunk_found = image_features(backbone, {sample.stem: (sample.image, "") for sample in chunk}, selection,
                                     settings, context.cache, False, keep=keep)
        for sample in chunk:
            with torch.no_grad():
                depth = probe(chunk_found.features[sample.stem][None].to(backbone.device).float())
                depth = F.interpolate(depth, size=targets[sample.stem].shape, mode="bilinear", align_corners=False)
            predictions[sample.stem] = depth[0, 0].cpu().numpy().astype(np.float32)
    details = {"selection": found.selection, "channels": int(probe.conv_depth.in_channels),
               "feature_size": list(found.features[train[0].stem].shape[1:]) if train else [],
               "final_train_loss": losses[-1] if losses else float("nan"), "epochs": options.epochs}
    timings = {"extract_s": extracted - started, "train_s": trained - extracted,
               "eval_s": time.perf_counter() - trained}
    return predictions, details, timings


def train_linear_bins(maps: list[torch.Tensor], targets: list[torch.Tensor], options: DepthProbeOptions, seed: int,
                      device: Any, progress: bool = False) -> tuple[LinearBinsProbe, list[float]]:
    """A :class:`LinearBinsProbe` trained with AdamW on CleanDIFT's SigLoss: ``maps`` C×h×w, ``targets``
    h×w metres (0 = invalid) at the maps' size; each step pools the valid pixels of ``batch_size`` images
    (a seeded shuffle per epoch). Returns the probe and the mean loss of each epoch."""
    from dfbench.tasks.nyuv2.probes import LinearBinsProbe, cleandift_sig_loss

    torch.manual_seed(seed)
    probe = LinearBinsProbe(maps[0].shape[0], options.min_depth, options.max_depth, options.bins,
                            options.normalisation).to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    order_rng, losses = random.Random(seed), []
    steps = options.epochs * math.ceil(len(maps) / options.batch_size)
    bar = tqdm(total=steps, desc="depth probe", unit="step", disable=not progress)
    for _ in range(options.epochs):
        order, epoch_losses = order_rng.sample(range(len(maps)), len(maps)), []
        for start in range(0, len(order), options.batch_size):
            batch = order[start : start + options.batch_size]
            predicted = [probe(maps[index][None].to(device).float())[0, 0] for index in batch]
            truth = [targets[index].to(device) for index in batch]
            bar.update()
            if sum(int((target > 0).sum()) for target in truth) < 2:
                continue                                   # no valid pixels to fit (the variance needs two)
            loss = cleandift_sig_loss(torch.cat([p.flatten() for p in predicted]),
                                      torch.cat([t.flatten() for t in truth]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
    bar.close()
    return probe.eval(), losses
