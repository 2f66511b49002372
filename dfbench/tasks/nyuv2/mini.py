"""The embedded mini NYUv2 set, in the folder layout of :mod:`dfbench.tasks.nyuv2.dataset`, built offline.

Two kinds of real-geometry scenes, 120×160 like NYU's 480×640 at a quarter (one test image 90×120):

* **motorcycle**: crops of scikit-image's Middlebury 2014 *Motorcycle* left view with depth from its
  ground-truth disparity, Z = f·B / (d + doffs) with the calibration scikit-image documents for the
  down-sampled pair (f = 994.978 px, B = 0.193001 m, doffs = 31.086 px): 2.1–5.0 m; pixels without
  a disparity (7 %) have no depth (0), as NYU's holes;
* **plane**: a textured plane seen by a pinhole camera (f = 150 px at 160 px width); a plane's
  inverse depth is affine in the pixel coordinates, 1/Z = a + b·u + c·v, so the depth is exact, and
  the texture (scikit-image's ``brick``, ``grass`` or ``gravel``) is drawn at the plane's own
  coordinates (X = u·Z/f, Y = v·Z/f), with real perspective foreshortening.

Train depths are 16-bit PNGs in millimetres, test depths float32 ``.npy`` in metres, so both
readers are used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dfbench.atomic import atomic_build_dir
from dfbench.home import dfbench_home

VERSION = 1
HEIGHT, WIDTH = 120, 160
#: skimage.data.stereo_motorcycle's documented calibration (down-sampled images)
FOCAL, BASELINE_M, DOFFS = 994.978, 0.193001, 31.086
#: (kind, height, width) of each image per split
SCENES = {
    "train": [("motorcycle", HEIGHT, WIDTH)] * 5 + [("plane", HEIGHT, WIDTH)] * 3,
    "test": [("motorcycle", HEIGHT, WIDTH), ("plane", HEIGHT, WIDTH), ("motorcycle", 90, 120), ("plane", HEIGHT,
                                                                                                  WIDTH)],
}


def motorcycle_depth() -> tuple[np.ndarray, np.ndarray]:
    """The left view (500×741×3 uint8) and its depth in metres (0 where the disparity is unknown)."""
    import skimage.data

    left, _, disparity = skimage.data.stereo_motorcycle()
    known = np.isfinite(disparity)
    depth = np.where(known, FOCAL * BASELINE_M / (np.where(known, disparity, 0) + DOFFS), 0.0)
    return left, depth


def motorcycle_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A random crop (aspect height:width, 40–100 % of the frame's height), maybe mirrored."""
    left, depth = motorcycle_depth()
    crop_h = int(rng.integers(int(0.4 * left.shape[0]), left.shape[0] + 1))
    crop_w = min(left.shape[1], round(crop_h * width / height))
    top = int(rng.integers(0, left.shape[0] - crop_h + 1))
    start = int(rng.integers(0, left.shape[1] - crop_w + 1))
    image = Image.fromarray(left[top : top + crop_h, start : start + crop_w]).resize((width, height),
                                                                                   Image.Resampling.BILINEAR)
    depth_crop = Image.fromarray(depth[top : top + crop_h, start : start + crop_w].astype(np.float32))
    depth_small = np.asarray(depth_crop.resize((width, height), Image.Resampling.NEAREST), dtype=np.float64)
    image_array = np.asarray(image)
    if rng.random() < 0.5:
        image_array, depth_small = image_array[:, ::-1], depth_small[:, ::-1]
    return np.ascontiguousarray(image_array), np.ascontiguousarray(depth_small)


def plane_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A tilted textured plane: depth from 1/Z = a + b·u + c·v (u, v pixel offsets from the centre)."""
    import skimage.data

    texture = getattr(skimage.data, str(rng.choice(["brick", "grass", "gravel"])))().astype(np.float64)
    focal = 150.0 * width / WIDTH
    v, u = np.mgrid[:height, :width].astype(np.float64)
    u, v = u - (width - 1) / 2, v - (height - 1) / 2
    near, far = rng.uniform(1.0, 2.5), rng.uniform(4.0, 8.0)
    # inverse depth runs from 1/far to 1/near across the image along a random direction
    angle = rng.uniform(0, 2 * np.pi)
    along = (np.cos(angle) * u + np.sin(angle) * v) / np.hypot(width / 2, height / 2)   # in about [-1, 1]
    inverse = 1 / far + (1 / near - 1 / far) * (along + 1) / 2
    depth = 1 / inverse
    x, y = u * depth / focal, v * depth / focal                                # the plane's points (metres)
    scale = texture.shape[0] / rng.uniform(1.5, 3.0)                            # texture pixels per metre
    rows = np.mod(np.round(y * scale), texture.shape[0]).astype(int)
    cols = np.mod(np.round(x * scale), texture.shape[1]).astype(int)
    tint = rng.uniform(0.6, 1.0, size=3)
    image = texture[rows, cols][..., None] * tint
    return np.clip(image, 0, 255).astype(np.uint8), depth


def build_mini_nyuv2(root: str | Path) -> Path:
    """Write the mini set into ``root`` (``{train,test}/{rgb,depth}``); returns ``root``."""
    root = Path(root)
    seed = 0
    for split, scenes in SCENES.items():
        (root / split / "rgb").mkdir(parents=True, exist_ok=True)
        (root / split / "depth").mkdir(parents=True, exist_ok=True)
        for kind, height, width in scenes:
            rng = np.random.default_rng(seed)
            make = motorcycle_scene if kind == "motorcycle" else plane_scene
            image, depth = make(rng, height, width)
            stem = f"{kind}_{seed:03d}"
            Image.fromarray(image).save(root / split / "rgb" / f"{stem}.png")
            if split == "train":
                millimetres = np.round(depth * 1000).astype(np.uint16)
                Image.fromarray(millimetres).save(root / split / "depth" / f"{stem}.png")
            else:
                np.save(root / split / "depth" / f"{stem}.npy", depth.astype(np.float32))
            seed += 1
    return root


def mini_nyuv2_root(home: str | Path | None = None) -> Path:
    """The mini set's folder under ``$DFBENCH_HOME`` (default ``~/.cache/dfbench``), built once, atomically."""
    home = dfbench_home(home)
    target = home / f"mini-nyuv2-v{VERSION}"
    if not (target / "test").is_dir():
        atomic_build_dir(target, build_mini_nyuv2)
    return target
