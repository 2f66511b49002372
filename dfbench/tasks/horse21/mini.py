"""The embedded mini Horse-21 set, in the ddpm-segmentation release layout, built offline.

``horse_21/real/{train,test}/horse_NNN.png`` (256², RGB) beside ``horse_NNN.npy`` (uint8 class ids,
Horse-21's numbering). Nothing is downloaded: everything comes from the scikit-image wheel. Each
image is scikit-image's real horse silhouette (``horse.png``), scaled, placed and mirrored at
random, its coat a brown-tinted crop of a real photo (the cat's fur in ``chelsea``), standing on
grass (``grass``) under the real sky of ``rocket``. The mask is the silhouette itself, so every
label is exact; it is cut into parts by fixed regions of the silhouette's frame: tail (16), legs
(11), head (9), neck (14), barrel (3) and an eye (7) whose size varies, so that in some images it
covers fewer than 20 pixels (the protocol relabels those to ignore in training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dfbench.atomic import atomic_build_dir
from dfbench.home import dfbench_home
from dfbench.tasks.horse21.dataset import HORSE_21

VERSION = 1
SIZE = 256
COUNTS = {"train": 6, "test": 4}
BACKGROUND, BARREL, EYE, HEAD, LEG, NECK, TAIL = 0, 3, 7, 9, 11, 14, 16


def _silhouette_parts() -> np.ndarray:
    """Horse-21 class ids on the silhouette's own 328×400 frame (0 outside the horse; eye not drawn)."""
    import skimage.data

    horse = ~skimage.data.horse()                      # True on the horse
    rows, cols = np.mgrid[: horse.shape[0], : horse.shape[1]]
    parts = np.where(horse, BARREL, BACKGROUND)
    parts[horse & (rows < 150) & (cols > 245)] = NECK
    parts[horse & (rows < 115) & (cols > 318)] = HEAD
    parts[horse & (rows > 195) & (cols >= 65)] = LEG
    parts[horse & (cols < 65)] = TAIL
    return parts.astype(np.uint8)


def _fit(texture: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``texture`` (at least half its size) resized to height×width, float RGB."""
    rows, cols = texture.shape[:2]
    crop_h, crop_w = rng.integers(rows // 2, rows + 1), rng.integers(cols // 2, cols + 1)
    top, left = rng.integers(0, rows - crop_h + 1), rng.integers(0, cols - crop_w + 1)
    piece = Image.fromarray(np.clip(texture[top : top + crop_h, left : left + crop_w], 0, 255).astype(np.uint8))
    return np.asarray(piece.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)


def horse_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One 256² scene: RGB uint8 image and its Horse-21 label map (uint8)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    sky = skimage.data.rocket()[:90, 120:540].astype(np.float64)
    grass = skimage.data.grass()[..., None] * np.array([0.55, 0.9, 0.4])
    fur = skimage.data.chelsea()[40:200, 60:260].astype(np.float64) * np.array([0.75, 0.55, 0.4])
    horizon = int(SIZE * rng.uniform(0.4, 0.55))
    image = np.zeros((SIZE, SIZE, 3))
    image[:horizon] = _fit(sky, horizon, SIZE, rng)
    image[horizon:] = _fit(grass, SIZE - horizon, SIZE, rng)

    parts = _silhouette_parts()
    # the eye: a disc on the head whose radius (in the silhouette's frame) varies from image to image
    radius = rng.uniform(2.5, 6.5)
    rows, cols = np.mgrid[: parts.shape[0], : parts.shape[1]]
    parts[((rows - 45) ** 2 + (cols - 345) ** 2 <= radius**2) & (parts == HEAD)] = EYE
    width = int(rng.integers(150, 231))
    height = round(width * parts.shape[0] / parts.shape[1])
    scaled = np.asarray(Image.fromarray(parts).resize((width, height), Image.Resampling.NEAREST))
    if rng.random() < 0.5:
        scaled = scaled[:, ::-1]
    top = int(rng.integers(max(0, horizon - height // 2), SIZE - height + 1))
    left = int(rng.integers(0, SIZE - width + 1))
    label = np.zeros((SIZE, SIZE), dtype=np.uint8)
    label[top : top + height, left : left + width] = scaled
    coat = _fit(fur, SIZE, SIZE, rng) * rng.uniform(0.8, 1.15)
    shade = np.select([label == LEG, label == EYE, label == TAIL], [0.6, 0.15, 0.45], 1.0)[..., None]
    image = np.where((label > 0)[..., None], coat * shade, image)
    return np.clip(image, 0, 255).astype(np.uint8), label


def build_mini_horse21(root: str | Path) -> Path:
    """Write the mini set under ``root``; returns its ``horse_21`` folder."""
    base = Path(root) / HORSE_21.folder
    seed = 0
    for split, count in COUNTS.items():
        folder = base / "real" / split
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            image, label = horse_scene(seed)
            Image.fromarray(image).save(folder / f"horse_{seed:03d}.png")
            np.save(folder / f"horse_{seed:03d}.npy", label)
            seed += 1
    return base


def mini_horse21_root(home: str | Path | None = None) -> Path:
    """The mini set's ``horse_21`` folder under ``$DFBENCH_HOME`` (default ``~/.cache/dfbench``), built once."""
    home = dfbench_home(home)
    target = home / f"mini-horse21-v{VERSION}"
    if not (target / HORSE_21.folder).is_dir():
        atomic_build_dir(target, build_mini_horse21)
    return target / HORSE_21.folder
