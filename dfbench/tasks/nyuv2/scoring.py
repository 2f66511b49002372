"""What the NYUv2 depth protocols share: the run's skeleton (the training and evaluated images, their ground
truth, the metrics of full-size predictions, probe3d's centre crop) and the scoring of saved predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dfbench.errors import DfbenchInputError
from dfbench.tasks.base import Protocol, RunContext, TaskOutput, seeded_subset
from dfbench.tasks.nyuv2.augment import centre_box
from dfbench.tasks.nyuv2.dataset import DepthSample, ground_truth, load_samples
from dfbench.tasks.nyuv2.metrics import depth_metrics

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedRun

#: evaluated images kept for the run's figure
EXAMPLE_IMAGES = 4


@dataclass(frozen=True)
class DepthProtocol(Protocol):
    """A depth probe trained on ``train`` and scored on the split; subclasses implement :meth:`probe`."""

    #: scored on the centred square crop (probe3d), not the whole image
    crops = False

    def probe(self, context: RunContext, run: ResolvedRun, train: list[DepthSample], evaluated: list[DepthSample],
              targets: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
        """Train the probe and predict ``evaluated`` at full size: (predictions, details, timings)."""
        raise NotImplementedError

    def training_samples(self, run: ResolvedRun) -> list[Any]:
        """What the probe trains on: the labelled set's training split (``train_limit``: a seeded subset)."""
        return seeded_subset(load_samples(run.data_root, "train", run.options.depth), run.options.train_limit,
                             run.seed)

    def run(self, task: Any, context: RunContext, run: ResolvedRun) -> TaskOutput:
        train = self.training_samples(run)
        evaluated = seeded_subset(load_samples(run.data_root, run.split, run.options.depth), run.limit, run.seed)
        targets = {sample.stem: ground_truth(sample) for sample in evaluated}
        if self.crops:
            for sample in evaluated:
                crop_box(targets[sample.stem].shape, run.options, sample)
        predictions, details, timings = self.probe(context, run, train, evaluated, targets)
        output = self.evaluate(predictions, targets, run.options)
        output.split = run.split
        output.selection = details.pop("selection")
        output.details = {"train_images": len(train), **details,
                          "examples": [[sample.stem, str(sample.image), str(sample.depth)]
                                       for sample in evaluated[:EXAMPLE_IMAGES]]}
        output.timings = timings
        return output

    def evaluate(self, predictions: dict[str, np.ndarray], targets: dict[str, np.ndarray],
                 options: Any) -> TaskOutput:
        """Metrics of full-size predictions (the crop, where the protocol scores one, taken from both)."""
        pairs = []
        for stem, target in targets.items():
            prediction = predictions[stem]
            if self.crops:
                top, left, side = crop_box(target.shape, options, stem)
                prediction = prediction[top : top + side, left : left + side]
                target = target[top : top + side, left : left + side]
            pairs.append((prediction, target))
        metrics = depth_metrics([p for p, _ in pairs], [t for _, t in pairs])
        return TaskOutput({**metrics, "images": float(len(pairs))}, {}, predictions)

    def score(self, task: Any, run: ResolvedRun, folder: Path) -> TaskOutput:
        folder = Path(folder)
        if not folder.is_dir():
            raise DfbenchInputError(f"predictions {folder}: no such folder")
        samples = seeded_subset(load_samples(run.data_root, run.split, run.options.depth), run.limit, run.seed)
        missing = [sample.stem for sample in samples if not (folder / f"{sample.stem}.npy").is_file()]
        if missing:
            raise DfbenchInputError(f"predictions {folder}: no <stem>.npy for {len(missing)} of {len(samples)} nyuv2 "
                                    f"{run.split} images (first: {missing[0]}.npy)")
        targets = {sample.stem: ground_truth(sample) for sample in samples}
        predictions = {}
        for stem, target in targets.items():
            path = folder / f"{stem}.npy"
            prediction = read_prediction(path, target.shape)
            top, left, side = crop_box(target.shape, run.options, stem) if self.crops else (0, 0, None)
            scored = prediction[top : top + side, left : left + side] if side else prediction
            if not np.isfinite(scored).all():
                raise DfbenchInputError(f"predictions {path}: NaN or inf inside the evaluated "
                                        f"{'crop' if side else 'image'}")
            predictions[stem] = prediction
        output = self.evaluate(predictions, targets, run.options)
        output.split = run.split
        return output


def crop_box(shape: tuple[int, ...], options: Any, sample: DepthSample | str) -> tuple[int, int, int]:
    """(top, left, side) of probe3d's evaluated centre crop of an image of ``shape`` (option ``crop``)."""
    try:
        return centre_box(shape[0], shape[1], options.crop)
    except ValueError as error:
        name = sample.image if isinstance(sample, DepthSample) else sample
        raise DfbenchInputError(f"nyuv2 {name}: {error}; pass --option crop=N with N ≤ the shorter side") from None


def read_prediction(path: Path, shape: tuple[int, int]) -> np.ndarray:
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
