"""A third-party plugin written only against dfbench's public contracts (no edit of dfbench's files):
a non-diffusion backbone (a seeded 2-layer CNN) and a toy task with its own mini set, options,
metric specs, saved predictions and scoring. `register()` is what a `dfbench.plugins` entry point names.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfbench.activations import ActivationInfo
from dfbench.atomic import atomic_build_dir, atomic_write_text
from dfbench.errors import DfbenchInputError
from dfbench.features import image_features
from dfbench.images import to_model_input
from dfbench.tasks.base import MetricSpec, Protocol, Task, TaskOutput

BACKBONE, TASK = "toy-cnn", "toy-brightness"


class ToyCNN:
    """Two seeded 3×3 convolutions (stride 2, ReLU): activations ``conv1`` and ``conv2``."""

    default_resolution = 32
    default_settings: dict = {}
    setting_names = ("resolution", "resize_mode", "dtype", "batch_size")  # no diffusion settings
    recipe_version = 1
    source = "seeded random 2-layer CNN"

    def __init__(self, torch_dtype: str = "float32", weights: str | None = None, device: str | None = None):
        generator = torch.Generator().manual_seed(0)
        self.name = BACKBONE
        self.conv1 = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
        with torch.no_grad():
            for parameter in [*self.conv1.parameters(), *self.conv2.parameters()]:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def check_resolution(self, resolution: int) -> None:
        if resolution < 4:
            raise DfbenchInputError(f"settings.resolution={resolution}: {self.name} needs at least 4 pixels")

    def activation_names(self):
        return ["conv1", "conv2"]

    def catalog(self, resolution=None):
        """Each conv (3×3, stride 2, padding 1) halves the side, rounding up."""
        side = resolution or self.default_resolution
        first, second = -(-side // 2), -(-side // 4)
        return [ActivationInfo("conv1", 4, first, first), ActivationInfo("conv2", 6, second, second)]

    def to(self, device, torch_dtype=None):
        return self

    def canonical_selection(self, selection):
        unknown = [name for name in selection if name not in ("conv1", "conv2")]
        if unknown:
            raise DfbenchInputError(f"{self.name} has no activation {unknown[0]!r}; it has conv1, conv2")
        return list(selection)

    def weight_fingerprint(self) -> str:
        return str(round(float(self.conv1.weight.detach().sum() + self.conv2.weight.detach().sum()), 6))

    def extract(self, images, selection, settings=None, categories=None, progress=False):
        names = self.canonical_selection(selection)
        pixels = to_model_input(images, settings.resolution, settings.resize_mode)
        with torch.no_grad():
            first = torch.relu(self.conv1(pixels))
            outputs = {"conv1": first, "conv2": torch.relu(self.conv2(first))}
        return {name: outputs[name] for name in names}


def toy_cnn(torch_dtype: str = "float32", weights: str | None = None, device: str | None = None) -> ToyCNN:
    """A seeded 2-layer CNN (a non-diffusion backbone defined outside dfbench)."""
    return ToyCNN(torch_dtype, weights, device)


@dataclass(frozen=True)
class ThresholdOptions:
    threshold: float = 0.5

    def validate(self, where: str) -> None:
        if not 0 <= self.threshold <= 1:
            raise DfbenchInputError(f"{where} option threshold={self.threshold}: must be in 0…1")


def build_mini(root: Path) -> Path:
    """Twelve flat grey images, label 1 when brighter than mid-grey; labels.json per split."""
    for split, levels in (("test", range(10, 250, 20)),):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        labels = {}
        for level in levels:
            Image.fromarray(np.full((20, 30, 3), level, dtype=np.uint8)).save(folder / f"grey{level:03d}.png")
            labels[f"grey{level:03d}"] = int(level > 127)
        (folder / "labels.json").write_text(json.dumps(labels))
    return root


class Threshold(Protocol):
    """The toy protocol: a feature's mean, min-max scaled over the split, against ``threshold``."""

    def run(self, task, context, run):
        images = {path.stem: (path, category) for path, category in task.split_images(run.data_root, run.split)}
        found = image_features(run.backbone, images, run.selection, run.settings, context.cache, context.progress,
                               keep=lambda activations: float(torch.cat([v.flatten() for v in activations.values()])
                                                              .mean()))
        values = np.array([found.features[stem] for stem in sorted(images)])
        scaled = (values - values.min()) / max(values.max() - values.min(), 1e-12)
        predictions = {stem: int(value > run.options.threshold)
                       for stem, value in zip(sorted(images), scaled, strict=True)}
        output = task.score_table(run.data_root, run.split, predictions)
        output.selection = found.selection
        return output

    def score(self, task, run, folder):
        path = Path(folder) / "brightness.json"
        if not path.is_file():
            raise DfbenchInputError(f"predictions {folder}: no brightness.json")
        return task.score_table(run.data_root, run.split, json.loads(path.read_text()))


class BrightnessTask(Task):
    """Toy task: is the image brighter than mid-grey? A feature's mean, min-max scaled, vs a threshold."""

    name = TASK
    protocols = {"threshold": Threshold("threshold", 1, ThresholdOptions, "mean activation vs a threshold")}
    default_protocol = "threshold"
    metrics = {"accuracy": MetricSpec(True, True, "%"), "error": MetricSpec(False, False, "%")}
    leaderboard_metrics = ("accuracy", "error")

    def mini_root(self) -> Path:
        """The mini set, built once under $DFBENCH_HOME (as the built-in tasks build theirs)."""
        from dfbench.home import dfbench_home

        root = dfbench_home() / "toy-brightness-mini-v1"
        return root if root.is_dir() else atomic_build_dir(root, build_mini)

    def labels(self, data_root: Path, split: str) -> dict[str, int]:
        path = Path(data_root) / split / "labels.json"
        if not path.is_file():
            raise DfbenchInputError(f"{TASK} {path}: no such file")
        return json.loads(path.read_text())

    def split_images(self, data_root, split):
        return [(Path(data_root) / split / f"{stem}.png", "") for stem in sorted(self.labels(data_root, split))]

    def score_table(self, data_root, split, predictions):
        labels = self.labels(data_root, split)
        right = sum(predictions[stem] == label for stem, label in labels.items())
        accuracy = 100 * right / len(labels)
        return TaskOutput({"accuracy": accuracy, "error": 100 - accuracy}, predictions=predictions, split=split)

    def save_predictions(self, output, folder):
        return atomic_write_text(Path(folder) / "brightness.json", json.dumps(output.predictions))


def register() -> None:
    """The `dfbench.plugins` entry point: register the toy backbone and the toy task."""
    from dfbench.registry import BACKBONES, TASKS

    BACKBONES.register(BACKBONE, toy_cnn, override=True)
    TASKS.register(TASK, BrightnessTask, override=True)
