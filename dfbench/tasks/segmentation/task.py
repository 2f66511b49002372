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

from pathlib import Path

from dfbench.atomic import atomic_write_png
from dfbench.plots import plot_per_category
from dfbench.tasks.base import MetricSpec, Task, TaskOutput
from dfbench.tasks.segmentation.dataset import (
    ADE20K,
    CITYSCAPES,
    SegmentationLayout,
    class_names,
    load_label,
    load_samples,
    mmseg_metainfo,
)
from dfbench.tasks.segmentation.hf_ade20k import hf_ade20k_root, is_hf_source
from dfbench.tasks.segmentation.linear import LinearProbe, LinearProbeOptions
from dfbench.tasks.segmentation.mini import mini_segmentation_root
from dfbench.tasks.segmentation.plots import plot_overlays
from dfbench.tasks.segmentation.uper import GdfUper, GdfUperOptions


class SegmentationTask(Task):
    """Semantic segmentation on one dataset layout (see the module docstring)."""

    layout: SegmentationLayout = ADE20K
    protocols = {"linear": LinearProbe("linear", 1, LinearProbeOptions,
                                       "a 1×1-conv linear probe on frozen features, mIoU as mmseg's IoUMetric"),
                 "gdf-uper": GdfUper("gdf-uper", 1, GdfUperOptions,
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

        return mini_segmentation_root(self.layout)

    def split_images(self, data_root: str | Path, split: str) -> list[tuple[Path, str]]:
        return [(sample.image, "") for sample in load_samples(self.layout, data_root, split)]

    # ------------------------------------------------------------------ figures, saved predictions, scoring
    def figures(self, output: TaskOutput, title: str, folder: Path) -> list[Path]:

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


class Ade20kTask(SegmentationTask):
    """ADE20K (150 classes, mmseg's ADEChallengeData2016 layout): semantic segmentation, mIoU."""

    name = "ade20k"
    layout = ADE20K
    download_hint = ADE20K.download_hint + " (or a Hugging Face datasets copy: hf:<id> or a save_to_disk folder)"

    def data_folder(self, data_root: str) -> Path:
        """The folder layout, or a Hugging Face source (``hf:<id>``, a ``save_to_disk`` folder) written
        into it once (:mod:`dfbench.tasks.segmentation.hf_ade20k`)."""

        return hf_ade20k_root(data_root) if is_hf_source(data_root) else Path(data_root)


class CityscapesTask(SegmentationTask):
    """Cityscapes (19 trainId classes, leftImg8bit + gtFine): semantic segmentation, mIoU."""

    name = "cityscapes"
    layout = CITYSCAPES
    download_hint = CITYSCAPES.download_hint
