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
random resized crop; :mod:`dfbench.tasks.nyuv2.augment`). It follows probe3d at commit a1f1464; option
``train_data`` trains on probe3d's own training set, the GeoNet NYU release
(:func:`~dfbench.tasks.nyuv2.dataset.geonet_samples`), instead of the labelled set's 795 images. Features are
extracted on the fly for every training step (augmented crops differ each epoch), as probe3d runs its frozen
backbone; the feature cache is not used. Scored on the centred crop of the test images.

Saved predictions (``run --save-predictions``, ``dfbench score``): ``<image stem>.npy``, float32
metres at the ground truth's size; for ``probe3d-dpt`` the pixels outside the evaluated crop are NaN.
"""

from __future__ import annotations

from pathlib import Path

from dfbench.atomic import atomic_write_npy
from dfbench.tasks.base import MetricSpec, Task, TaskOutput
from dfbench.tasks.nyuv2.dataset import DOWNLOAD_HINT, check_official_files, load_depth, load_samples, nyuv2_root
from dfbench.tasks.nyuv2.dpt import Probe3dDpt
from dfbench.tasks.nyuv2.linear import CleanDiftLinear
from dfbench.tasks.nyuv2.metrics import METRIC_KEYS
from dfbench.tasks.nyuv2.mini import mini_nyuv2_root
from dfbench.tasks.nyuv2.options import DptOptions, LinearBinsOptions
from dfbench.tasks.nyuv2.plots import plot_depth_examples


class NyuV2Task(Task):
    """NYU Depth v2 monocular depth (795 train / 654 test labelled images): RMSE, AbsRel, δ1 of a probe."""

    name = "nyuv2"
    protocols = {
        "cleandift-linear": CleanDiftLinear("cleandift-linear", 1, LinearBinsOptions,
                                            "CleanDIFT's 1×1-conv probe to 256 depth bins on frozen features, "
                                            "SigLoss"),
        "probe3d-dpt": Probe3dDpt("probe3d-dpt", 1, DptOptions,
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

        return mini_nyuv2_root()

    def data_folder(self, data_root: str) -> Path:
        """The folder layout, or the official ``nyu_depth_v2_labeled.mat`` written into it once."""

        return nyuv2_root(data_root)

    def split_images(self, data_root: str | Path, split: str) -> list[tuple[Path, str]]:
        return [(sample.image, "") for sample in load_samples(data_root, split)]

    def check_layout(self, folder: Path, split: str) -> None:
        """The official files in ``folder``, checked without writing the layout (that happens at first use)."""
        check_official_files(folder)

    # ------------------------------------------------------------------ figures, saved predictions, scoring
    def figures(self, output: TaskOutput, title: str, folder: Path) -> list[Path]:

        rows = [(stem, Path(image), load_depth(depth), output.predictions[stem])
                for stem, image, depth in output.details.get("examples", [])]
        return [plot_depth_examples(rows, title, folder / "depth-examples.png")] if rows else []

    def save_predictions(self, output: TaskOutput, folder: Path) -> Path:
        folder = Path(folder)
        for stem, prediction in output.predictions.items():
            atomic_write_npy(folder / f"{stem}.npy", prediction)
        return folder
