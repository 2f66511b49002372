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

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dfbench.atomic import atomic_write_png
from dfbench.errors import DfbenchInputError
from dfbench.features import image_features
from dfbench.heads.pixel_features import UPSAMPLE_MODES, PixelFeatureBank
from dfbench.options import require_at_least_one
from dfbench.tasks.base import (
    MetricSpec,
    ProtocolSpec,
    RunContext,
    Task,
    TaskOutput,
    seeded_subset,
)
from dfbench.tasks.horse21.dataset import (
    DOWNLOAD_HINT,
    HORSE_21,
    DdpmDataset,
    DdpmSample,
    load_label,
    load_split,
    resize_nearest,
)
from dfbench.tasks.horse21.metrics import miou_stderr, pooled_iou, release_areas

OVERLAY_IMAGES = 4
#: pixels of one image predicted at once
PREDICT_CHUNK = 8192


@dataclass(frozen=True)
class DdpmOptions:
    """Options of ``ddpm`` (``--option key=value``); the defaults are the release's."""

    seeds: int = 5
    members: int = 10
    epochs: int = 100
    resolution: int = 256
    upsample: str = "bilinear"
    min_pixels: int = 20
    train_limit: int | None = None

    def validate(self, where: str) -> None:
        require_at_least_one(self, ("seeds", "members", "epochs", "resolution", "train_limit"), where)
        if self.min_pixels < 0:
            raise DfbenchInputError(f"{where} option min_pixels={self.min_pixels}: must be ≥ 0")
        if self.upsample not in UPSAMPLE_MODES:
            raise DfbenchInputError(f"{where} option upsample={self.upsample!r}: choose {', '.join(UPSAMPLE_MODES)}")


@dataclass(frozen=True)
class GdfResplitOptions(DdpmOptions):
    """Options of ``gdf-resplit``: as ``ddpm``, with GDF's nearest-then-bilinear feature resizing."""

    upsample: str = "nearest-bilinear"


def drop_small_classes(label: np.ndarray, num_classes: int, ignore_label: int, min_pixels: int = 20
                       ) -> tuple[np.ndarray, list[int]]:
    """``label`` with every class that has 1…``min_pixels − 1`` pixels set to ``ignore_label``
    (the release's training-set rule), and the classes dropped."""
    label = label.copy()
    counts = np.bincount(label.ravel(), minlength=256)
    dropped = [index for index in range(num_classes) if index != ignore_label and 0 < counts[index] < min_pixels]
    for index in dropped:
        label[label == index] = ignore_label
    return label, dropped


def gdf_resplit(train: list[DdpmSample], test: list[DdpmSample], seed: int
                ) -> tuple[list[DdpmSample], list[DdpmSample]]:
    """GDF's ``shuffle_split``: [('train', i)…] + [('test', i)…] shuffled by ``random`` seeded with
    ``seed`` (GDF's ``setup_seed``); the first ``len(train)`` train, the rest test."""
    pool = [("train", index) for index in range(len(train))] + [("test", index) for index in range(len(test))]
    random.Random(seed).shuffle(pool)
    images = {"train": train, "test": test}
    chosen = [images[origin][index] for origin, index in pool]
    return chosen[: len(train)], chosen[len(train):]


def feature_key(sample: DdpmSample) -> str:
    """A sample's key among the extracted images (release folder and stem: train and test may share stems)."""
    return f"{sample.origin}/{sample.stem}"


class LabelScarceTask(Task):
    """Label-scarce segmentation on one set of the ddpm-segmentation release (see the module docstring).

    A sibling set (``CAT_15``, ``CELEBA_19``, ``BEDROOM_28``, ``FFHQ_34``, ``ADE_BEDROOM_30`` of
    :mod:`dfbench.tasks.horse21.dataset`) is a subclass with ``name``, ``dataset`` and a mini set,
    plus one registry line."""

    dataset: DdpmDataset = HORSE_21
    protocols = {
        "ddpm": ProtocolSpec("ddpm", 1, DdpmOptions, "the release's split and pixel-classifier ensemble, "
                             "mIoU as its compute_iou, mean ± std over seeds"),
        "gdf-resplit": ProtocolSpec("gdf-resplit", 1, GdfResplitOptions, "GDF's random re-splits of train + test "
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

    def key(self, sample: DdpmSample, protocol: str) -> str:
        """A sample's prediction name: its stem, under its release folder in ``gdf-resplit``."""
        return f"{sample.origin}/{sample.stem}" if protocol == "gdf-resplit" else sample.stem

    def splits(self, data_root: Path, protocol: str, seed: int, train_limit: int | None, limit: int | None
               ) -> tuple[list[DdpmSample], list[DdpmSample]]:
        """(train, test) of one seed: the release's split, or GDF's re-split of the pooled folders."""
        if protocol == "gdf-resplit":
            train, test = gdf_resplit(load_split(self.dataset, data_root, "train", release_limit=False),
                                      load_split(self.dataset, data_root, "test", release_limit=False), seed)
        else:
            train, test = load_split(self.dataset, data_root, "train"), load_split(self.dataset, data_root, "test")
        return seeded_subset(train, train_limit, seed), seeded_subset(test, limit, seed)

    def sample_label(self, sample: DdpmSample, resolution: int) -> np.ndarray:
        """A sample's label map at ``resolution``², checked against its image (train or test alike)."""
        from dfbench.images import image_size

        return load_label(self.dataset, sample.label, resolution, image_size(sample.image))

    def run(self, context: RunContext, backbone: Any, selection: list[str], settings: Any, data_root: Path,
            split: str, protocol: str, options: DdpmOptions) -> TaskOutput:
        from dfbench.tasks.horse21.pixel_classifier import EnsembleOptions, train_ensemble

        if split != "test":
            raise DfbenchInputError(f"{self.name}/{protocol} evaluates the test split (train is the classifiers' "
                                    f"training set); drop --split {split}")
        seeds = [context.seed + offset for offset in range(options.seeds)]
        plans = {seed: self.splits(data_root, protocol, seed, options.train_limit, context.limit) for seed in seeds}
        samples = {feature_key(sample): sample for train, test in plans.values() for sample in train + test}
        started = time.perf_counter()
        found = image_features(backbone, {key: (sample.image, "") for key, sample in samples.items()}, selection,
                               settings, context.cache, context.progress)
        keys = sorted(samples)
        device = backbone.device
        bank = PixelFeatureBank([{name: value.to(device) for name, value in found.features[key].items()}
                                 for key in keys], (options.resolution, options.resolution), options.upsample)
        index = {key: position for position, key in enumerate(keys)}
        # every label read and checked once; the seeds of `ddpm` share them all
        labels = {key: self.sample_label(samples[key], options.resolution) for key in keys}
        extracted = time.perf_counter()
        ensemble_options = EnsembleOptions(members=options.members, max_epochs=options.epochs)
        per_seed, per_class, predictions, training, areas, dropped_total = {}, {}, {}, {}, {}, 0
        for seed, (train, test) in plans.items():
            pixels, dropped = self.training_pixels(train, index, labels, options)
            dropped_total += dropped
            context.log(f"{self.name}/{protocol} seed {seed}: {len(train)} training images, {len(pixels)} labelled "
                        f"pixels, {bank.dim} channels")
            ensemble, records = train_ensemble(
                bank, pixels, self.dataset.num_classes, seed, context.folder / "pixel-classifiers" / f"seed-{seed}",
                ensemble_options, device, context.progress)
            predicted = {self.key(sample, protocol): predict_image(ensemble, bank, index[feature_key(sample)])
                         for sample in tqdm(test, desc=f"predict seed {seed}", unit="img",
                                            disable=not context.progress)}
            areas[seed] = [release_areas(predicted[self.key(sample, protocol)], labels[feature_key(sample)],
                                         self.dataset.num_classes) for sample in test]
            ious = pooled_iou(areas[seed], self.dataset.num_classes, self.dataset.ignore_label)
            per_seed[seed], per_class[seed], predictions[seed] = 100 * float(np.mean(list(ious.values()))), ious, \
                predicted
            training[seed] = {"train_images": [self.key(sample, protocol) for sample in train],
                              "test_images": len(test), "train_pixels": len(pixels), "members": records}
        values = np.array(list(per_seed.values()))
        names = self.dataset.class_names
        table = {names[klass]: {"IoU": 100 * float(np.mean([per_class[seed][klass] for seed in seeds])),
                                "IoU_std": 100 * float(np.std([per_class[seed][klass] for seed in seeds]))}
                 for klass in per_class[seeds[0]]}
        first_test = plans[seeds[0]][1]
        # the first seed's test images resampled (the spread over seeds is mIoU_std)
        stderr = miou_stderr(areas[seeds[0]], self.dataset.num_classes, self.dataset.ignore_label)
        output = TaskOutput(
            {"mIoU": float(values.mean()), "mIoU_std": float(values.std()), "mIoU_stderr": stderr,
             "images": float(len(first_test)), "seeds": float(len(seeds))}, table, predictions)
        output.selection, output.split = found.selection, split
        output.details = {
            "per_seed_mIoU": {str(seed): value for seed, value in per_seed.items()}, "seeds": seeds,
            "channels": bank.dim, "feature_bank_bytes": bank.nbytes(), "small_annotations_dropped": dropped_total,
            "training": {str(seed): value for seed, value in training.items()},
            "overlay_images": [[self.key(sample, protocol), str(sample.image), str(sample.label)]
                               for sample in first_test[:OVERLAY_IMAGES]],
            "resolution": options.resolution, "protocol_seed_note": "seeds vary the classifiers"
            + (" and the split" if protocol == "gdf-resplit" else "") + "; features extracted once",
        }
        output.timings = {"extract_s": extracted - started, "train_eval_s": time.perf_counter() - extracted}
        return output

    def training_pixels(self, train: list[DdpmSample], index: dict[str, int], labels: dict[str, np.ndarray],
                        options: DdpmOptions) -> tuple[Any, int]:
        """The labelled pixels of the training images (small annotations dropped) and how many were dropped."""
        from dfbench.tasks.horse21.pixel_classifier import PixelSet

        parts, dropped = [], 0
        for sample in train:
            label, small = drop_small_classes(labels[feature_key(sample)], self.dataset.num_classes,
                                              self.dataset.ignore_label, options.min_pixels)
            dropped += len(small)
            rows, columns = np.nonzero(label != self.dataset.ignore_label)
            image = np.full(len(rows), index[feature_key(sample)])
            parts.append((image, rows, columns, label[rows, columns]))
        images, pixel_rows, pixel_columns, pixel_labels = (torch.from_numpy(np.concatenate(values))
                                                           for values in zip(*parts, strict=True))
        return PixelSet(images.long(), pixel_rows.long(), pixel_columns.long(), pixel_labels.to(torch.uint8)), dropped

    # ------------------------------------------------------------------ figures, saved predictions, scoring
    def figures(self, output: TaskOutput, title: str, folder: Path) -> list[Path]:
        from dfbench.images import image_size
        from dfbench.plots import plot_per_category
        from dfbench.tasks.segmentation.plots import plot_overlays

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

    def score(self, data_root: Path, split: str, protocol: str, options: Any, folder: Path,
              limit: int | None = None, seed: int = 0) -> TaskOutput:
        folder = Path(folder)
        if not folder.is_dir():
            raise DfbenchInputError(f"predictions {folder}: no such folder")
        if split != "test":
            raise DfbenchInputError(f"{self.name}/{protocol} scores the test split; drop --split {split}")
        _, test = self.splits(data_root, protocol, seed, None, limit)
        labels = [self.sample_label(sample, options.resolution) for sample in test]   # checked before predictions
        keys = [self.key(sample, protocol) for sample in test]
        missing = [key for key in keys if not (folder / f"{key}.png").is_file()
                   and not (folder / f"{key}.npy").is_file()]
        if missing:
            raise DfbenchInputError(f"predictions {folder}: no <stem>.png or .npy for {len(missing)} of {len(keys)} "
                                    f"{self.name} test images (first: {missing[0]}.png)"
                                    + (f"; gdf-resplit's test set is the --seed {seed} re-split"
                                       if protocol == "gdf-resplit" else ""))
        predictions = [self.read_prediction(folder, key, options.resolution) for key in keys]
        areas = [release_areas(prediction, label, self.dataset.num_classes)
                 for prediction, label in zip(predictions, labels, strict=True)]
        ious = pooled_iou(areas, self.dataset.num_classes, self.dataset.ignore_label)
        names = self.dataset.class_names
        # one set of predictions is one seed: the record's keys, with a zero spread
        stderr = miou_stderr(areas, self.dataset.num_classes, self.dataset.ignore_label)
        output = TaskOutput({"mIoU": 100 * float(np.mean(list(ious.values()))), "mIoU_std": 0.0,
                             "mIoU_stderr": stderr, "images": float(len(test)), "seeds": 1.0},
                            {names[klass]: {"IoU": 100 * value} for klass, value in ious.items()},
                            dict(zip(keys, predictions, strict=True)))
        output.split = split
        return output


def predict_image(ensemble: Any, bank: PixelFeatureBank, image: int) -> np.ndarray:
    """Class ids (uint8, H×W of the bank's grid) of one image of ``bank``, in chunks of pixels."""
    from dfbench.tasks.horse21.pixel_classifier import predict_pixels

    height, width = bank.out_size
    votes = [predict_pixels(ensemble, bank.image_rows(image, start, min(start + PREDICT_CHUNK, height * width)))
             for start in range(0, height * width, PREDICT_CHUNK)]
    return torch.cat(votes).view(height, width).numpy().astype(np.uint8)


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
        from dfbench.tasks.horse21.mini import mini_horse21_root

        return mini_horse21_root()

