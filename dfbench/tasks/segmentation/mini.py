"""Embedded mini segmentation sets in the exact ADE20K and Cityscapes layouts, built offline.

Nothing is downloaded: the textures ship inside the scikit-image wheel. Each image is a street-like
scene with exact labels by construction: a band of sky at the top (a crop of the real sky in
``rocket``), a band of brick (``brick``) in the middle, and below it grass (``grass``) and gravel
(``gravel``) side by side. Band edges are seeded random waves; crops, tints and brightness vary per
image. A 2-pixel strip along every region edge is labelled "ignore" (ADE20K 0 = other,
Cityscapes 255), as real annotations leave edges out.

======== =================== ==================
texture  ADE20K (annotation) Cityscapes trainId
======== =================== ==================
sky      3 sky               10 sky
brick    1 wall              2 building
grass    10 grass            9 terrain
gravel   7 road              0 road
======== =================== ==================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dfbench.atomic import atomic_build_dir
from dfbench.home import dfbench_home
from dfbench.tasks.segmentation.dataset import ADE20K, CITYSCAPES, SegmentationLayout

VERSION = 1
REGIONS = ("sky", "brick", "grass", "gravel")
LABELS = {"ade20k": {"sky": 3, "brick": 1, "grass": 10, "gravel": 7},
          "cityscapes": {"sky": 10, "brick": 2, "grass": 9, "gravel": 0}}
EDGE_LABEL = {"ade20k": 0, "cityscapes": 255}
SIZES = {"ade20k": (128, 96), "cityscapes": (192, 96)}     # (W, H): ADE ~4:3, Cityscapes 2:1
COUNTS = {"train": 6, "val": 3}
TINTS = {"brick": (1.0, 0.62, 0.5), "grass": (0.55, 0.9, 0.4), "gravel": (0.85, 0.85, 0.82)}


def _textures() -> dict[str, np.ndarray]:
    import skimage.data

    grey = {"brick": skimage.data.brick(), "grass": skimage.data.grass(), "gravel": skimage.data.gravel()}
    textures = {name: np.stack([image * tint for tint in TINTS[name]], axis=-1) for name, image in grey.items()}
    textures["sky"] = skimage.data.rocket()[:90, 120:540].astype(np.float64)  # clear sky, no tower
    return textures


def _crop(texture: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``texture`` resized to height×width (crops of the small sky are stretched)."""
    rows, cols = texture.shape[:2]
    crop_h, crop_w = min(rows, max(height, rows // 2)), min(cols, max(width, cols // 2))
    top, left = rng.integers(0, rows - crop_h + 1), rng.integers(0, cols - crop_w + 1)
    piece = np.clip(texture[top : top + crop_h, left : left + crop_w], 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(piece).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)


def scene(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: an RGB uint8 image H×W×3 and its region map H×W (index into :data:`REGIONS`)."""
    rng = np.random.default_rng(seed)
    textures = _textures()
    columns = np.arange(width)
    phase, waves = rng.uniform(0, 2 * np.pi, 3), rng.uniform(1.0, 3.0, 3)
    sky_edge = height * rng.uniform(0.22, 0.32) + 3 * np.sin(waves[0] * 2 * np.pi * columns / width + phase[0])
    ground_edge = height * rng.uniform(0.58, 0.68) + 3 * np.sin(waves[1] * 2 * np.pi * columns / width + phase[1])
    split = width * rng.uniform(0.35, 0.65) + 4 * np.sin(waves[2] * 2 * np.pi * np.arange(height) / height + phase[2])
    rows = np.arange(height)[:, None]
    regions = np.full((height, width), 1)                                   # brick
    regions[rows < sky_edge[None, :]] = 0                                   # sky
    ground = rows >= ground_edge[None, :]
    regions[ground & (columns[None, :] < split[:, None])] = 2               # grass
    regions[ground & (columns[None, :] >= split[:, None])] = 3              # gravel
    image = np.zeros((height, width, 3))
    for index, name in enumerate(REGIONS):
        layer = _crop(textures[name], height, width, rng) * rng.uniform(0.85, 1.15)
        image[regions == index] = layer[regions == index]
    return np.clip(image, 0, 255).astype(np.uint8), regions


def edge_mask(regions: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels within ``width`` pixels (4-neighbourhood steps) of a different region."""
    edge = np.zeros(regions.shape, dtype=bool)
    for axis in (0, 1):
        change = np.diff(regions, axis=axis) != 0
        for offset in range(width):
            if axis == 0:
                edge[: len(change) - offset][change[offset:]] = True
                edge[offset + 1 :][change[: len(change) - offset]] = True
            else:
                edge[:, : change.shape[1] - offset][change[:, offset:]] = True
                edge[:, offset + 1 :][change[:, : change.shape[1] - offset]] = True
    return edge


def label_map(layout: SegmentationLayout, regions: np.ndarray) -> np.ndarray:
    """The annotation file's values for a region map (edges → the layout's ignore / other value)."""
    table = LABELS[layout.name]
    labels = np.zeros(regions.shape, dtype=np.uint8)
    for index, name in enumerate(REGIONS):
        labels[regions == index] = table[name]
    labels[edge_mask(regions)] = EDGE_LABEL[layout.name]
    return labels


def build_mini_segmentation(layout: SegmentationLayout, root: str | Path) -> Path:
    """Write the mini set of ``layout`` under ``root`` in its exact native layout; returns the dataset folder."""
    base = Path(root) / layout.folder
    width, height = SIZES[layout.name]
    seed = 0
    for split, count in COUNTS.items():
        images = base / layout.images.format(split=layout.splits[split])
        labels = base / layout.labels.format(split=layout.splits[split])
        for number in range(count):
            image, regions = scene(width, height, seed)
            seed += 1
            if layout is CITYSCAPES:
                city = "mini"
                stem = f"{city}_{number:06d}_000019"
                (images / city).mkdir(parents=True, exist_ok=True)
                (labels / city).mkdir(parents=True, exist_ok=True)
                image_path = images / city / f"{stem}{layout.image_suffix}"
                label_path = labels / city / f"{stem}{layout.label_suffix}"
            else:
                stem = f"ADE_{'train' if split == 'train' else 'val'}_{number + 1:08d}"
                images.mkdir(parents=True, exist_ok=True)
                labels.mkdir(parents=True, exist_ok=True)
                image_path = images / f"{stem}{layout.image_suffix}"
                label_path = labels / f"{stem}{layout.label_suffix}"
            Image.fromarray(image).save(image_path, quality=95)
            Image.fromarray(label_map(layout, regions)).save(label_path)
    return base


def mini_segmentation_root(layout: SegmentationLayout = ADE20K, home: str | Path | None = None) -> Path:
    """The mini set's dataset folder under ``$DFBENCH_HOME`` (default ``~/.cache/dfbench``), built once, atomically."""
    home = dfbench_home(home)
    target = home / f"mini-{layout.name}-v{VERSION}"
    if (target / layout.folder).is_dir():
        return target / layout.folder
    atomic_build_dir(target, lambda staging: build_mini_segmentation(layout, staging))
    return target / layout.folder
