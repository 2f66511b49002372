"""ADE20K and Cityscapes semantic segmentation in mmsegmentation's native layouts.

::

    ADEChallengeData2016/images/{training,validation}/<stem>.jpg
    ADEChallengeData2016/annotations/{training,validation}/<stem>.png    # 0 = other, 1…150 = classes
    cityscapes/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
    cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png  # 0…18, 255 = ignore

Labels are returned as mmseg's pipelines give them to ``IoUMetric``: ADE20K with
``reduce_zero_label`` (0 → 255 ignored, c → c − 1, so 0…149), Cityscapes trainIds as stored.
Class names come from mmseg's own dataset classes. Every problem with a layout or a file is one
:class:`~dfbench.errors.DfbenchInputError` line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dfbench.errors import DfbenchInputError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class SegmentationLayout:
    """Where a dataset keeps its images and labels, and how its labels are encoded."""

    name: str
    folder: str                 # the dataset folder's usual name (``--data-root`` may point at it or its parent)
    images: str                 # relative to the dataset folder; ``{split}`` is filled
    labels: str
    splits: dict[str, str]      # dfbench split → folder name
    image_suffix: str
    label_suffix: str
    num_classes: int
    reduce_zero_label: bool
    download_hint: str


ADE20K = SegmentationLayout(
    "ade20k", "ADEChallengeData2016", "images/{split}", "annotations/{split}",
    {"train": "training", "val": "validation"}, ".jpg", ".png", 150, True,
    "get ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu/ and unpack it (its ADEChallengeData2016/ "
    "folder is the data root)",
)
CITYSCAPES = SegmentationLayout(
    "cityscapes", "cityscapes", "leftImg8bit/{split}", "gtFine/{split}",
    {"train": "train", "val": "val"}, "_leftImg8bit.png", "_gtFine_labelTrainIds.png", 19, False,
    "get leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/, "
    "make *_labelTrainIds.png with cityscapesscripts (createTrainIdLabelImgs) or mmseg's tools/dataset_converters",
)


@dataclass(frozen=True)
class SegmentationSample:
    """One image and its label file; ``stem`` names its prediction file (``<stem>.png``)."""

    stem: str
    image: Path
    label: Path


def dataset_root(layout: SegmentationLayout, data_root: str | Path) -> Path:
    """``data_root`` itself, or its ``layout.folder`` child, whichever holds the layout."""
    root = Path(data_root)
    for candidate in (root, root / layout.folder):
        if (candidate / layout.images.split("/")[0]).is_dir():
            return candidate
    raise DfbenchInputError(f"{layout.name} root {root}: no {layout.images.split('/')[0]}/ folder here or in "
                            f"{layout.folder}/; {layout.download_hint}")


def load_samples(layout: SegmentationLayout, data_root: str | Path, split: str) -> list[SegmentationSample]:
    """Every image of ``split`` with its label, sorted by stem; a missing folder or label is one line."""
    if split not in layout.splits:
        raise DfbenchInputError(f"{layout.name} split {split!r}: choose one of {', '.join(layout.splits)}")
    root = dataset_root(layout, data_root)
    images = root / layout.images.format(split=layout.splits[split])
    labels = root / layout.labels.format(split=layout.splits[split])
    for folder in (images, labels):
        if not folder.is_dir():
            raise DfbenchInputError(f"{layout.name} {split}: missing folder {folder}; {layout.download_hint}")
    samples = []
    for image in sorted(images.rglob(f"*{layout.image_suffix}")):
        stem = image.name[: -len(layout.image_suffix)]
        label = labels / image.parent.relative_to(images) / f"{stem}{layout.label_suffix}"
        if not label.is_file():
            raise DfbenchInputError(f"{layout.name} {split}: image {image} has no label {label}")
        samples.append(SegmentationSample(stem, image, label))
    if not samples:
        raise DfbenchInputError(f"{layout.name} {split}: no *{layout.image_suffix} images in {images}")
    return samples


def load_label(layout: SegmentationLayout, path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A label map H×W (int64) as the metric sees it (ADE20K: ``reduce_zero_label``).

    ``size`` (W, H) is the image's size, which the label must match. A corrupt file, a colour image,
    a class id ≥ the class count or a size mismatch is one line naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            mode, label_size, values = opened.mode, opened.size, np.asarray(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DfbenchInputError(f"{layout.name} label {path}: not a readable PNG ({error.__class__.__name__})"
                                ) from None
    if mode not in ("L", "P", "I", "I;16"):
        raise DfbenchInputError(f"{layout.name} label {path}: mode {mode}; labels are single-channel class ids")
    if size is not None and label_size != tuple(size):
        raise DfbenchInputError(f"{layout.name} label {path}: {label_size[0]}×{label_size[1]}, but its image is "
                                f"{size[0]}×{size[1]}")
    labels = values.astype(np.int64)
    if layout.reduce_zero_label:
        bad = labels > layout.num_classes
        labels = np.where(labels == 0, IGNORE_INDEX, labels - 1)
    else:
        bad = (labels >= layout.num_classes) & (labels != IGNORE_INDEX)
    if bad.any():
        value = int(values[bad].flat[0])
        raise DfbenchInputError(f"{layout.name} label {path}: class id {value} at {int(bad.sum())} pixels; "
                                f"{layout.name} has {layout.num_classes} classes"
                                + (" (1…150, 0 = other)" if layout.reduce_zero_label else ", 255 = ignore"))
    return labels


def mmseg_metainfo(layout: SegmentationLayout) -> dict:
    """mmseg's own ``METAINFO`` of the dataset: ``classes`` and ``palette``."""
    from dfbench.tasks.segmentation.mmseg_compat import ensure_mmcv_ops  # mmcv: only when mmseg reads the data

    ensure_mmcv_ops()
    from mmseg.datasets import ADE20KDataset, CityscapesDataset

    return (ADE20KDataset if layout is ADE20K else CityscapesDataset).METAINFO


def class_names(layout: SegmentationLayout) -> list[str]:
    """The class names, from mmseg's own dataset definitions."""
    return list(mmseg_metainfo(layout)["classes"])
