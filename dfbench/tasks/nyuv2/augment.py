"""probe3d's NYU crop and training augmentation (``evals/datasets/nyu.py``, ``evals/datasets/utils.py:113-171``).

* centre crop: a centred square (probe3d: ``image[..., 80:-80]`` of 480×640, i.e. the shorter side);
* colour jitter (torchvision ``ColorJitter(0.2, 0.2, 0.2, 0.2)`` applied with p = 0.8): brightness,
  contrast and saturation factors uniform in [0.8, 1.2] and a hue shift uniform in ±0.2 of the
  circle, in a random order — here with PIL's ``ImageEnhance`` (the same blends with black, the
  grey mean and the grey image) and an HSV shift, as torchvision cannot be installed beside this
  CPU torch;
* albumentations ``RandomResizedCrop(scale=(0.5, 1), ratio=(1, 1), p=0.5, interpolation=nearest)``
  on image and depth together: a square of 50–100 % of the area at a random place, resized back
  (nearest for both). probe3d's flip and rotation are off (``rotateflip=False``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

JITTER = 0.2
JITTER_PROBABILITY = 0.8
CROP_PROBABILITY = 0.5
CROP_SCALE = (0.5, 1.0)


def centre_box(height: int, width: int, side: int | None) -> tuple[int, int, int]:
    """(top, left, side) of the centred square of ``side`` (``None``: the shorter side)."""
    side = min(height, width) if side is None else side
    if side > min(height, width):
        raise ValueError(f"crop {side} is larger than the image ({height}×{width})")
    return (height - side) // 2, (width - side) // 2, side


def centre_crop(image: Image.Image, depth: np.ndarray, side: int | None) -> tuple[Image.Image, np.ndarray]:
    """The centred square of ``image`` and ``depth`` (same box)."""
    top, left, side = centre_box(depth.shape[0], depth.shape[1], side)
    return image.crop((left, top, left + side, top + side)), depth[top : top + side, left : left + side]


def colour_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast, saturation and hue jitter of ±``JITTER`` in a random order."""
    for operation in rng.permutation(4):
        if operation == 3:
            shift = round(rng.uniform(-JITTER, JITTER) * 255)
            hue, saturation, value = image.convert("HSV").split()
            hue = hue.point([(level + shift) % 256 for level in range(256)])
            image = Image.merge("HSV", (hue, saturation, value)).convert("RGB")
        else:
            enhancer = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[operation]
            image = enhancer(image).enhance(rng.uniform(1 - JITTER, 1 + JITTER))
    return image


def random_resized_crop(image: Image.Image, depth: np.ndarray, rng: np.random.Generator
                        ) -> tuple[Image.Image, np.ndarray]:
    """A random square of ``CROP_SCALE`` of the (square) image's area, resized back to its size (nearest)."""
    side = depth.shape[0]
    crop = max(1, int(round(np.sqrt(rng.uniform(*CROP_SCALE)) * side)))
    top, left = int(rng.integers(0, side - crop + 1)), int(rng.integers(0, side - crop + 1))
    image = image.crop((left, top, left + crop, top + crop)).resize((side, side), Image.Resampling.NEAREST)
    depth_image = Image.fromarray(np.ascontiguousarray(depth[top : top + crop, left : left + crop], dtype=np.float32))
    return image, np.asarray(depth_image.resize((side, side), Image.Resampling.NEAREST), dtype=np.float32)


def augment(image: Image.Image, depth: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """probe3d's training augmentation of a square crop: jitter (p = 0.8), then a resized crop (p = 0.5)."""
    if rng.random() < JITTER_PROBABILITY:
        image = colour_jitter(image, rng)
    if rng.random() < CROP_PROBABILITY:
        image, depth = random_resized_crop(image, depth, rng)
    return image, depth
