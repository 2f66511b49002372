"""The label-scarce protocols, each with its own ``run`` and ``score``: ``ddpm`` (the release's split) and
``gdf-resplit`` (GDF's random re-splits); see :mod:`dfbench.tasks.horse21.task` for what they measure."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dfbench.errors import DfbenchInputError
from dfbench.features import image_features
from dfbench.heads.pixel_features import UPSAMPLE_MODES, PixelFeatureBank
from dfbench.options import require_at_least_one
from dfbench.tasks.base import Protocol, RunContext, TaskOutput, seeded_subset
from dfbench.tasks.horse21.dataset import DdpmDataset, DdpmSample, load_split
from dfbench.tasks.horse21.metrics import miou_stderr, pooled_iou, release_areas
from dfbench.tasks.horse21.pixel_classifier import EnsembleOptions, PixelSet, predict_pixels, train_ensemble

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedRun

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


@dataclass(frozen=True)
class ReleaseSplit(Protocol):
    """``ddpm``: the release's fixed split and pixel-classifier ensemble, ``seeds`` seeds."""

    #: the seeds re-split train + test (GDF), not only the classifiers
    resplits = False

    def key(self, sample: DdpmSample) -> str:
        """A sample's prediction name: its stem (under its release folder when the split is re-drawn)."""
        return f"{sample.origin}/{sample.stem}" if self.resplits else sample.stem

    def splits(self, task: Any, data_root: Path, seed: int, train_limit: int | None, limit: int | None
               ) -> tuple[list[DdpmSample], list[DdpmSample]]:
        """(train, test) of one seed: the release's split."""
        train, test = load_split(task.dataset, data_root, "train"), load_split(task.dataset, data_root, "test")
        return seeded_subset(train, train_limit, seed), seeded_subset(test, limit, seed)

    def run(self, task: Any, context: RunContext, run: ResolvedRun) -> TaskOutput:
        backbone, selection, settings, options = run.backbone, run.selection, run.settings, run.options
        dataset = task.dataset
        if run.split != "test":
            raise DfbenchInputError(f"{run.protocol_label} evaluates the test split (train is the classifiers' "
                                    f"training set); drop --split {run.split}")
        seeds = [run.seed + offset for offset in range(options.seeds)]
        plans = {seed: self.splits(task, run.data_root, seed, options.train_limit, run.limit) for seed in seeds}
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
        labels = {key: task.sample_label(samples[key], options.resolution) for key in keys}
        extracted = time.perf_counter()
        ensemble_options = EnsembleOptions(members=options.members, max_epochs=options.epochs)
        per_seed, per_class, predictions, training, areas, dropped_total = {}, {}, {}, {}, {}, 0
        for seed, (train, test) in plans.items():
            pixels, dropped = training_pixels(dataset, train, index, labels, options)
            dropped_total += dropped
            context.log(f"{run.protocol_label} seed {seed}: {len(train)} training images, {len(pixels)} labelled "
                        f"pixels, {bank.dim} channels")
            ensemble, records = train_ensemble(
                bank, pixels, dataset.num_classes, seed, context.folder / "pixel-classifiers" / f"seed-{seed}",
                ensemble_options, device, context.progress)
            predicted = {self.key(sample): predict_image(ensemble, bank, index[feature_key(sample)])
                         for sample in tqdm(test, desc=f"predict seed {seed}", unit="img",
                                            disable=not context.progress)}
            areas[seed] = [release_areas(predicted[self.key(sample)], labels[feature_key(sample)],
                                         dataset.num_classes) for sample in test]
            ious = pooled_iou(areas[seed], dataset.num_classes, dataset.ignore_label)
            per_seed[seed], per_class[seed], predictions[seed] = 100 * float(np.mean(list(ious.values()))), ious, \
                predicted
            training[seed] = {"train_images": [self.key(sample) for sample in train],
                              "test_images": len(test), "train_pixels": len(pixels), "members": records}
        values = np.array(list(per_seed.values()))
        names = dataset.class_names
        table = {names[klass]: {"IoU": 100 * float(np.mean([per_class[seed][klass] for seed in seeds])),
                                "IoU_std": 100 * float(np.std([per_class[seed][klass] for seed in seeds]))}
                 for klass in per_class[seeds[0]]}
        first_test = plans[seeds[0]][1]
        # the first seed's test images resampled (the spread over seeds is mIoU_std)
        stderr = miou_stderr(areas[seeds[0]], dataset.num_classes, dataset.ignore_label)
        output = TaskOutput(
            {"mIoU": float(values.mean()), "mIoU_std": float(values.std()), "mIoU_stderr": stderr,
             "images": float(len(first_test)), "seeds": float(len(seeds))}, table, predictions)
        output.selection, output.split = found.selection, run.split
        output.details = {
            "per_seed_mIoU": {str(seed): value for seed, value in per_seed.items()}, "seeds": seeds,
            "channels": bank.dim, "feature_bank_bytes": bank.nbytes(), "small_annotations_dropped": dropped_total,
            "training": {str(seed): value for seed, value in training.items()},
            "overlay_images": [[self.key(sample), str(sample.image), str(sample.label)]
                               for sample in first_test[:OVERLAY_IMAGES]],
            "resolution": options.resolution, "protocol_seed_note": "seeds vary the classifiers"
            + (" and the split" if self.resplits else "") + "; features extracted once",
        }
        output.timings = {"extract_s": extracted - started, "train_eval_s": time.perf_counter() - extracted}
        return output

    def score(self, task: Any, run: ResolvedRun, folder: Path) -> TaskOutput:
        folder, options, dataset = Path(folder), run.options, task.dataset
        if not folder.is_dir():
            raise DfbenchInputError(f"predictions {folder}: no such folder")
        if run.split != "test":
            raise DfbenchInputError(f"{run.protocol_label} scores the test split; drop --split {run.split}")
        _, test = self.splits(task, run.data_root, run.seed, None, run.limit)
        labels = [task.sample_label(sample, options.resolution) for sample in test]   # checked before predictions
        keys = [self.key(sample) for sample in test]
        missing = [key for key in keys if not (folder / f"{key}.png").is_file()
                   and not (folder / f"{key}.npy").is_file()]
        if missing:
            raise DfbenchInputError(f"predictions {folder}: no <stem>.png or .npy for {len(missing)} of {len(keys)} "
                                    f"{task.name} test images (first: {missing[0]}.png)"
                                    + (f"; gdf-resplit's test set is the --seed {run.seed} re-split"
                                       if self.resplits else ""))
        predictions = [task.read_prediction(folder, key, options.resolution) for key in keys]
        areas = [release_areas(prediction, label, dataset.num_classes)
                 for prediction, label in zip(predictions, labels, strict=True)]
        ious = pooled_iou(areas, dataset.num_classes, dataset.ignore_label)
        names = dataset.class_names
        # one set of predictions is one seed: the record's keys, with a zero spread
        stderr = miou_stderr(areas, dataset.num_classes, dataset.ignore_label)
        output = TaskOutput({"mIoU": 100 * float(np.mean(list(ious.values()))), "mIoU_std": 0.0,
                             "mIoU_stderr": stderr, "images": float(len(test)), "seeds": 1.0},
                            {names[klass]: {"IoU": 100 * value} for klass, value in ious.items()},
                            dict(zip(keys, predictions, strict=True)))
        output.split = run.split
        return output




@dataclass(frozen=True)
class GdfResplit(ReleaseSplit):
    """``gdf-resplit``: GDF's re-split of the pooled release folders, one per seed."""

    resplits = True

    def splits(self, task: Any, data_root: Path, seed: int, train_limit: int | None, limit: int | None
               ) -> tuple[list[DdpmSample], list[DdpmSample]]:
        train, test = gdf_resplit(load_split(task.dataset, data_root, "train", release_limit=False),
                                  load_split(task.dataset, data_root, "test", release_limit=False), seed)
        return seeded_subset(train, train_limit, seed), seeded_subset(test, limit, seed)


def training_pixels(dataset: DdpmDataset, train: list[DdpmSample], index: dict[str, int],
                    labels: dict[str, np.ndarray], options: DdpmOptions) -> tuple[PixelSet, int]:
        """The labelled pixels of the training images (small annotations dropped) and how many were dropped."""
        parts, dropped = [], 0
        for sample in train:
            label, small = drop_small_classes(labels[feature_key(sample)], dataset.num_classes,
                                              dataset.ignore_label, options.min_pixels)
            dropped += len(small)
            rows, columns = np.nonzero(label != dataset.ignore_label)
            image = np.full(len(rows), index[feature_key(sample)])
            parts.append((image, rows, columns, label[rows, columns]))
        images, pixel_rows, pixel_columns, pixel_labels = (torch.from_numpy(np.concatenate(values))
                                                           for values in zip(*parts, strict=True))
        return PixelSet(images.long(), pixel_rows.long(), pixel_columns.long(), pixel_labels.to(torch.uint8)), dropped



def predict_image(ensemble: Any, bank: PixelFeatureBank, image: int) -> np.ndarray:
    """Class ids (uint8, H×W of the bank's grid) of one image of ``bank``, in chunks of pixels."""
    height, width = bank.out_size
    votes = [predict_pixels(ensemble, bank.image_rows(image, start, min(start + PREDICT_CHUNK, height * width)))
             for start in range(0, height * width, PREDICT_CHUNK)]
    return torch.cat(votes).view(height, width).numpy().astype(np.uint8)
