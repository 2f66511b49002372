"""An embedded mini correspondence set in the exact SPair-71k layout, built from real photos.

Nothing is downloaded: the photos ship inside the scikit-image wheel.

* ``chelsea`` (cat), ``astronaut`` (person), ``coffee`` (cup), ``rocket`` (rocket): each source photo
  is paired with copies warped by known similarity transforms (zoom, shift, small rotation), so
  the target keypoints are the source keypoints mapped through the transform — exact ground truth.
  ``val`` also pairs each photo with itself (the same file): a matcher must map every keypoint onto
  itself, so any offset in the predicted coordinates shows (the CI gate runs on ``val``).
* the Middlebury ``motorcycle`` stereo pair (motorbike): real correspondences between two real
  views, from the ground-truth disparity (left pixel (x, y) ↔ right pixel (x − d, y)).

Source keypoints are Harris corners (deterministic). ``build_mini_spair(root)`` writes
``JPEGImages/``, ``ImageAnnotation/``, ``PairAnnotation/{trn,val,test}/`` and
``Layout/large/{trn,val,test}.txt``; :func:`mini_spair_root` builds it once into a cache folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from dfbench.atomic import atomic_build_dir
from dfbench.home import dfbench_home

VERSION = 2
PHOTOS = {"chelsea": "cat", "astronaut": "person", "coffee": "cup", "rocket": "rocket"}
# (zoom, rotation in degrees, shift x and y as fractions of the size) per split
WARPS = {
    "test": [(0.8, 0.0, 0.06, 0.04), (1.1, 8.0, -0.05, 0.02)],
    "val": [(0.9, -5.0, 0.03, -0.03)],
    "trn": [(0.85, 4.0, -0.02, 0.05), (1.05, -8.0, 0.04, 0.0)],
}
STEREO_SPLITS = {"test": ("left", "right"), "val": ("right", "left"), "trn": ("left", "right")}
MAX_KEYPOINTS = 10


def default_root() -> Path:
    """Where the mini set is built: ``$DFBENCH_HOME/mini-spair-v<VERSION>`` (default ``~/.cache/dfbench``)."""
    home = dfbench_home()
    return home / f"mini-spair-v{VERSION}"


def mini_spair_root(root: str | Path | None = None) -> Path:
    """The mini set's folder, building it (atomically) the first time."""
    root = Path(root) if root else default_root()
    if (root / "Layout" / "large" / "test.txt").is_file():
        return root
    return atomic_build_dir(root, build_mini_spair)


def _corners(image: np.ndarray, margin: float, count: int) -> np.ndarray:
    """Up to ``count`` strong Harris corners (x, y), away from the borders by ``margin`` of the size."""
    from skimage.color import rgb2gray
    from skimage.feature import corner_harris, corner_peaks

    gray = rgb2gray(image) if image.ndim == 3 else image
    height, width = gray.shape
    peaks = corner_peaks(corner_harris(gray), min_distance=max(8, width // 20), num_peaks=200)
    inside = [(x, y) for y, x in peaks if margin * width <= x < (1 - margin) * width
              and margin * height <= y < (1 - margin) * height]
    return np.array(inside[:count], dtype=np.float64).reshape(-1, 2)


def _similarity(zoom: float, degrees: float, shift: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """2×3 matrix mapping source (x, y) to target: zoom and rotate about the centre, then shift."""
    width, height = size
    angle = math.radians(degrees)
    rotation = zoom * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = np.array([width / 2, height / 2])
    offset = centre - rotation @ centre + np.array([shift[0] * width, shift[1] * height])
    return np.hstack([rotation, offset[:, None]])


def _warp(image: Image.Image, matrix: np.ndarray) -> Image.Image:
    """Apply the source→target map; PIL wants the target→source inverse (pixel centres at +0.5)."""
    full = np.vstack([matrix, [0, 0, 1]])
    inverse = np.linalg.inv(full)
    # PIL samples the input at inverse·(x' + .5, y' + .5) in a frame whose pixel centres are at +.5
    shift_in, shift_out = np.eye(3), np.eye(3)
    shift_in[:2, 2] = -0.5
    shift_out[:2, 2] = 0.5
    pil = shift_out @ inverse @ shift_in
    return image.transform(image.size, Image.Transform.AFFINE, tuple(pil[:2].ravel()), Image.Resampling.BICUBIC)


def _bbox(points: np.ndarray) -> list[float]:
    return [float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max())]


def _write_image(root: Path, category: str, name: str, image: Image.Image, bbox: list[float],
                 kps: np.ndarray) -> None:
    folder = root / "JPEGImages" / category
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / f"{name}.jpg", quality=95)
    annotation = {
        "filename": f"{name}.jpg", "src_database": "scikit-image", "src_annotation": "dfbench mini-spair",
        "src_imsize": [image.width, image.height, 3], "image_width": image.width, "image_height": image.height,
        "image_depth": 3, "category": category, "pose": "Unspecified", "truncated": 0, "occluded": 0,
        "difficult": 0, "bndbox": [round(v) for v in bbox],
        "kps": {str(i): [round(float(x), 2), round(float(y), 2)] for i, (x, y) in enumerate(kps)},
    }
    folder = root / "ImageAnnotation" / category
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(annotation, indent=1))


def _write_pair(root: Path, split: str, index: int, category: str, src: tuple, trg: tuple) -> str:
    (src_name, src_size, src_bbox, src_kps), (trg_name, trg_size, trg_bbox, trg_kps) = src, trg
    pair_id = f"{index:06d}-{src_name}-{trg_name}:{category}"
    pair = {
        "pair_id": index, "src_imname": f"{src_name}.jpg", "trg_imname": f"{trg_name}.jpg",
        "src_imsize": [*src_size, 3], "trg_imsize": [*trg_size, 3],
        "src_bndbox": [round(v) for v in src_bbox], "trg_bndbox": [round(v) for v in trg_bbox],
        "category": category, "src_pose": 0, "trg_pose": 0, "src_truncation": 0, "trg_truncation": 0,
        "src_occlusion": 0, "trg_occlusion": 0, "mirror": 0, "viewpoint_variation": 1, "scale_variation": 1,
        "truncation": 0, "occlusion": 0,
        "src_kps": [[round(float(x), 2), round(float(y), 2)] for x, y in src_kps],
        "trg_kps": [[round(float(x), 2), round(float(y), 2)] for x, y in trg_kps],
        "kps_ids": [str(i) for i in range(len(src_kps))],
    }
    folder = root / "PairAnnotation" / split
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{pair_id}.json").write_text(json.dumps(pair, indent=1))
    return pair_id


def build_mini_spair(root: str | Path) -> Path:
    """Write the mini set into ``root`` (SPair-71k layout); returns ``root``."""
    import skimage.data

    root = Path(root)
    layout: dict[str, list[str]] = {split: [] for split in WARPS}
    index = 0
    for photo_name, category in PHOTOS.items():
        photo = Image.fromarray(getattr(skimage.data, photo_name)()).convert("RGB")
        kps = _corners(np.asarray(photo), margin=0.2, count=MAX_KEYPOINTS)
        source = (photo_name, photo.size, [0.0, 0.0, photo.width - 1.0, photo.height - 1.0], kps)
        _write_image(root, category, photo_name, photo, source[2], kps)
        for split, warps in WARPS.items():
            for number, (zoom, degrees, dx, dy) in enumerate(warps):
                matrix = _similarity(zoom, degrees, (dx, dy), photo.size)
                target_kps = kps @ matrix[:, :2].T + matrix[:, 2]
                corners = np.array([[0, 0], [photo.width - 1, 0], [0, photo.height - 1],
                                    [photo.width - 1, photo.height - 1]], dtype=np.float64)
                bbox = _bbox(np.clip(corners @ matrix[:, :2].T + matrix[:, 2], 0,
                                     [photo.width - 1, photo.height - 1]))
                name = f"{photo_name}_{split}{number}"
                _write_image(root, category, name, _warp(photo, matrix), bbox, target_kps)
                index += 1
                layout[split].append(_write_pair(root, split, index, category, source,
                                                 (name, photo.size, bbox, target_kps)))
        index += 1
        layout["val"].append(_write_pair(root, "val", index, category, source, source))   # the photo with itself
    left, right, disparity = skimage.data.stereo_motorcycle()
    views = {"left": Image.fromarray(left), "right": Image.fromarray(right)}
    left_kps = _corners(left, margin=0.15, count=4 * MAX_KEYPOINTS)
    valid = [(x, y) for x, y in left_kps if np.isfinite(disparity[int(y), int(x)])][:MAX_KEYPOINTS]
    left_kps = np.array(valid, dtype=np.float64)
    right_kps = left_kps - np.stack([disparity[left_kps[:, 1].astype(int), left_kps[:, 0].astype(int)],
                                     np.zeros(len(left_kps))], axis=1)
    points = {"left": left_kps, "right": right_kps}
    for view, image in views.items():
        box = [0.0, 0.0, image.width - 1.0, image.height - 1.0]
        _write_image(root, "motorbike", f"motorcycle_{view}", image, box, points[view])
    for split, (src_view, trg_view) in STEREO_SPLITS.items():
        index += 1
        box = [0.0, 0.0, left.shape[1] - 1.0, left.shape[0] - 1.0]
        size = (left.shape[1], left.shape[0])
        layout[split].append(_write_pair(
            root, split, index, "motorbike",
            (f"motorcycle_{src_view}", size, box, points[src_view]),
            (f"motorcycle_{trg_view}", size, box, points[trg_view]),
        ))
    (root / "Layout" / "large").mkdir(parents=True, exist_ok=True)
    for split, ids in layout.items():
        (root / "Layout" / "large" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root
