"""Label-scarce segmentation (Horse-21 and the ddpm-segmentation release's sibling sets).

Frozen features, a few labelled images, a pixel classifier (the release's protocol, which GDF's
``scarce_segmentation`` reuses):

* features per pixel: the selected activations upsampled bilinearly to ``resolution``² (256, the
  release's ``dim``) and concatenated (``src/feature_extractors.py:234-246``) — read off the native
  maps per batch (:class:`~dfbench.heads.pixel_features.PixelFeatureBank`), never materialised;
* labels resized nearest to the same grid; in training, a class with fewer than 20 pixels in an
  image is relabelled to ignore in that image, and ignored pixels are left out
  (``train_interpreter.py:50-60``);
* an ensemble of 10 MLPs (:mod:`dfbench.tasks.horse21.pixel_classifier`), the prediction the mode of their
  argmaxes;
* mIoU as the release's ``compute_iou`` (``src/pixel_classifier.py:126-153``): pooled over the test
  set, every class of ``range(C)`` but the ignore label counts, an absent class scores 0
  (intersection / (1e-8 + union)); pixels whose label is the ignore label still count in the union
  of the class predicted there. Reported in percent (100 × ``compute_iou``).

Protocols: ``ddpm`` (v1) — the release's fixed split; ``gdf-resplit`` (v1) — GDF's re-splits
(``scarce_segmentation/segmentation/datasets.py:45-58``): train and test pooled, shuffled with
Python's ``random`` seeded with the seed, the first |train| images train, the rest test; features
GDF's way (each activation resized nearest to the largest map, then bilinear). Both run ``seeds``
seeds (the run's ``--seed`` and the next ones) and report the mean and standard deviation
(``np.std``, ddof 0) of mIoU. The seeds vary the classifiers (initialisation, pixel order) and, in
``gdf-resplit``, the split; the features are extracted once, with the run's ``--seed``, as GDF does.

Saved predictions: ``<stem>.png`` (or the release's ``<stem>.npy``), uint8 class ids, at the
protocol's resolution, one folder per seed: the first seed at the top, the others in
``seed-<s>/``; ``gdf-resplit`` files lie in ``train/`` or ``test/`` after the image's release folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfbench.atomic import atomic_write_png
from dfbench.errors import DfbenchInputError
from dfbench.images import image_size
from dfbench.plots import plot_per_category
from dfbench.tasks.base import MetricSpec, Task, TaskOutput
from dfbench.tasks.horse21.dataset import (
    DOWNLOAD_HINT,
    HORSE_21,
    DdpmDataset,
    DdpmSample,
    load_label,
    load_split,
    resize_nearest,
)
from dfbench.tasks.horse21.mini import mini_horse21_root
from dfbench.tasks.horse21.protocols import DdpmOptions, GdfResplit, GdfResplitOptions, ReleaseSplit
from dfbench.tasks.segmentation.plots import plot_overlays


class LabelScarceTask(Task):
    """Label-scarce segmentation on one set of the ddpm-segmentation release (see the module docstring).

    A sibling set (``CAT_15``, ``CELEBA_19``, ``BEDROOM_28``, ``FFHQ_34``, ``ADE_BEDROOM_30`` of
    :mod:`dfbench.tasks.horse21.dataset`) is a subclass with ``name``, ``dataset`` and a mini set,
    plus one registry line."""

    dataset: DdpmDataset = HORSE_21
    protocols = {
        "ddpm": ReleaseSplit("ddpm", 1, DdpmOptions, "the release's split and pixel-classifier ensemble, "
                             "mIoU as its compute_iou, mean ± std over seeds"),
        "gdf-resplit": GdfResplit("gdf-resplit", 1, GdfResplitOptions, "GDF's random re-splits of train + test "
                                  "(one per seed), its nearest-then-bilinear features, mean ± std"),
    }
    default_protocol = "ddpm"
    default_split = "test"
    download_hint = DOWNLOAD_HINT
    sweep_protocol, sweep_options, sweep_train_split = "ddpm", {"seeds": 1}, "train"
    metrics = {"mIoU": MetricSpec(True, True, "%"), "mIoU_std": MetricSpec(False, False, "%"),
               "mIoU_stderr": MetricSpec(False, False, "%"),
               "images": MetricSpec(unit="images"), "seeds": MetricSpec(unit="seeds")}
    leaderboard_metrics = ("mIoU", "mIoU_std")

    def split_images(self, data_root: str | Path, split: str) -> list[tuple[Path, str]]:
        return [(sample.image, "") for sample in load_split(self.dataset, data_root, split)]

    def sample_label(self, sample: DdpmSample, resolution: int) -> np.ndarray:
        """A sample's label map at ``resolution``², checked against its image (train or test alike)."""
        return load_label(self.dataset, sample.label, resolution, image_size(sample.image))

    # ------------------------------------------------------------------ figures, saved predictions, scoring
    def figures(self, output: TaskOutput, title: str, folder: Path) -> list[Path]:

        figures = [plot_per_category(output.per_category, "IoU", title, folder / "per-class-iou.png",
                                     items="classes")]
        first = output.predictions[min(output.predictions)]
        rows = []
        for key, image, label in output.details.get("overlay_images", []):
            shape = image_size(image)       # label and prediction shown at the photo's size (nearest)
            rows.append((key, Path(image), resize_nearest(load_label(self.dataset, label, shape[0]), shape),
                         resize_nearest(first[key], shape)))
        if rows:
            figures.append(plot_overlays(rows, class_palette(self.dataset.num_classes), title,
                                         folder / "overlays.png", list(self.dataset.class_names)))
        return figures

    def save_predictions(self, output: TaskOutput, folder: Path) -> Path:

        folder = Path(folder)
        first = min(output.predictions)
        for seed, predicted in output.predictions.items():
            target = folder if seed == first else folder / f"seed-{seed}"
            for key, prediction in predicted.items():
                atomic_write_png(target / f"{key}.png", prediction)
        return folder

    def read_prediction(self, folder: Path, key: str, resolution: int) -> np.ndarray:
        """A saved prediction (``<key>.png`` or ``<key>.npy``) as class ids at ``resolution``²."""
        from PIL import Image, UnidentifiedImageError

        path = folder / f"{key}.png"
        if not path.is_file():
            path = folder / f"{key}.npy"
        try:
            if path.suffix == ".png":
                with Image.open(path) as opened:
                    values = np.asarray(opened)
            else:
                values = np.load(path, allow_pickle=False)
        except (OSError, ValueError, UnidentifiedImageError) as error:
            raise DfbenchInputError(f"predictions {path}: not readable ({error.__class__.__name__})") from None
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.integer):
            raise DfbenchInputError(f"predictions {path}: shape {values.shape}, dtype {values.dtype}; expected one "
                                    "channel of class ids")
        if ((values < 0) | (values >= self.dataset.num_classes)).any():
            raise DfbenchInputError(f"predictions {path}: values outside 0…{self.dataset.num_classes - 1}")
        return resize_nearest(values, resolution)



def class_palette(num_classes: int) -> list[list[int]]:
    """Distinct RGB colours for ``num_classes`` classes (matplotlib's tab20, tab20b, tab20c)."""
    from matplotlib import colormaps

    colours = [colour for name in ("tab20", "tab20b", "tab20c") for colour in colormaps[name].colors]  # type: ignore[attr-defined]  # ListedColormap
    return [[round(255 * channel) for channel in colours[index % len(colours)][:3]] for index in range(num_classes)]


class Horse21Task(LabelScarceTask):
    """Horse-21 (21 classes, 30 train / 30 test images of the ddpm-segmentation release)."""

    name = "horse21"
    dataset = HORSE_21

    def mini_root(self) -> Path:

        return mini_horse21_root()

