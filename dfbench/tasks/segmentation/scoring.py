"""What the segmentation protocols share: the run's skeleton (training and evaluated images, the overlay figure's
images), mmseg's IoUMetric on class-id maps, and the scoring of saved predictions (``<stem>.png`` or mmseg's
``<image name>.png``, encoded as the dataset's labels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dfbench.errors import DfbenchInputError
from dfbench.images import image_size
from dfbench.tasks.base import Protocol, RunContext, TaskOutput, bootstrap_stderr, seeded_subset
from dfbench.tasks.segmentation.dataset import (
    IGNORE_INDEX,
    SegmentationLayout,
    SegmentationSample,
    class_names,
    load_label,
    load_samples,
)
from dfbench.tasks.segmentation.metrics import image_areas, pooled_areas, segmentation_metrics

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedRun

#: validation images shown in the overlay figure
OVERLAY_IMAGES = 4


@dataclass(frozen=True)
class SegmentationProtocol(Protocol):
    """A probe trained on ``train`` and scored on the split; subclasses implement :meth:`evaluate`."""

    def evaluate(self, task: Any, context: RunContext, run: ResolvedRun, train: list[SegmentationSample],
                 evaluated: list[SegmentationSample]) -> TaskOutput:
        """Train on ``train``, predict and score ``evaluated``."""
        raise NotImplementedError

    def run(self, task: Any, context: RunContext, run: ResolvedRun) -> TaskOutput:
        train = seeded_subset(load_samples(task.layout, run.data_root, "train"), run.options.train_limit, run.seed)
        evaluated = seeded_subset(load_samples(task.layout, run.data_root, run.split), run.limit, run.seed)
        output = self.evaluate(task, context, run, train, evaluated)
        # the figure's images: the first few evaluated ones
        output.details["overlay_images"] = [[sample.stem, str(sample.image), str(sample.label)]
                                            for sample in evaluated[:OVERLAY_IMAGES]]
        return output

    def score(self, task: Any, run: ResolvedRun, folder: Path) -> TaskOutput:
        folder, layout = Path(folder), task.layout
        if not folder.is_dir():
            raise DfbenchInputError(f"predictions {folder}: no such folder")
        samples = seeded_subset(load_samples(layout, run.data_root, run.split), run.limit, run.seed)
        paths = {sample.stem: prediction_file(folder, sample) for sample in samples}
        missing = [sample for sample in samples if paths[sample.stem] is None]
        if missing:
            hint = " (it holds predictions.json: made for spair?)" if (folder / "predictions.json").exists() else ""
            names = " or ".join(dict.fromkeys(path.name for path in prediction_names(folder, missing[0])))
            raise DfbenchInputError(f"predictions {folder}: no prediction for {len(missing)} of {len(samples)} "
                                    f"{layout.name} {run.split} images (first: {names}){hint}")
        labels = image_labels(layout, samples)
        predictions = {}
        for stem, label in labels.items():
            path = paths[stem]
            assert path is not None                         # the missing ones were refused above
            # the label checks: readable, one channel, in range, at the image's size
            decoded = load_label(layout, path, label.shape[::-1])
            if layout.reduce_zero_label and (decoded == IGNORE_INDEX).any():
                raise DfbenchInputError(f"predictions {path}: value 0 is not a class; predictions are 1…150")
            predictions[stem] = decoded
        output = score_maps(layout, labels, predictions)
        output.split = run.split
        return output


def image_labels(layout: SegmentationLayout, samples: list[SegmentationSample]) -> dict[str, np.ndarray]:
    """Each sample's label map as the metric sees it, checked against its image's size; by stem."""
    return {sample.stem: load_label(layout, sample.label, image_size(sample.image)[::-1])
            for sample in samples}


def score_maps(layout: SegmentationLayout, labels: dict[str, np.ndarray], predictions: dict[str, np.ndarray]
               ) -> TaskOutput:
    """mmseg's IoUMetric (pooled areas), mAcc, aAcc, per-class IoU and the bootstrap error of mIoU."""
    per_image = [image_areas(predictions[stem], label, layout.num_classes, IGNORE_INDEX)
                 for stem, label in labels.items()]
    areas = pooled_areas(per_image, layout.num_classes)
    summary, per_class = segmentation_metrics(areas, class_names(layout))
    # resampling images: the pooled mIoU of each resample
    summary["mIoU_stderr"] = bootstrap_stderr(len(per_image), lambda chosen: segmentation_metrics(
        pooled_areas([per_image[index] for index in chosen], layout.num_classes))[0]["mIoU"])
    table = {name: {"IoU": values["IoU"]} for name, values in per_class.items() if not np.isnan(values["IoU"])}
    return TaskOutput({**summary, "images": float(len(labels))}, table, predictions)


def prediction_names(folder: Path, sample: Any) -> list[Path]:
    """Where a sample's saved prediction may be: ``<stem>.png`` (dfbench's name), then mmseg's
    ``<image file name without suffix>.png`` (``…_leftImg8bit.png`` for Cityscapes)."""
    return [folder / f"{sample.stem}.png", folder / f"{Path(sample.image.name).stem}.png"]


def prediction_file(folder: Path, sample: Any) -> Path | None:
    """The first of :func:`prediction_names` that exists, else None."""
    return next((path for path in prediction_names(folder, sample) if path.is_file()), None)
