"""Reading images and turning them into the square model input (squash or pad)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dfbench.errors import DfbenchInputError


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB; an unreadable file is a one-line :class:`DfbenchInputError`."""
    path = Path(path)
    if not path.is_file():
        raise DfbenchInputError(f"image {path}: no such file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise DfbenchInputError(f"image {path}: not a readable image ({error.__class__.__name__})") from None


def content_box(width: int, height: int, resolution: int, resize_mode: str) -> tuple[int, int, int, int]:
    """Where the image lies in the res×res model input: ``(left, top, new_width, new_height)``.

    ``squash`` fills the square; ``pad`` scales the longer side to ``resolution`` and centres it.
    """
    if resize_mode == "squash":
        return 0, 0, resolution, resolution
    scale = resolution / max(width, height)
    new_width = max(1, round(width * scale))
    new_height = max(1, round(height * scale))
    return (resolution - new_width) // 2, (resolution - new_height) // 2, new_width, new_height


def to_model_input(images: Sequence[Image.Image], resolution: int, resize_mode: str) -> torch.Tensor:
    """PIL images → float32 tensor N×3×res×res in [-1, 1] (bicubic resize; ``pad`` fills with 0 = grey)."""
    batch = torch.zeros(len(images), 3, resolution, resolution)
    for index, image in enumerate(images):
        image = image.convert("RGB")
        left, top, new_width, new_height = content_box(*image.size, resolution, resize_mode)
        resized = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
        array = np.asarray(resized, dtype=np.float32) / 255.0 * 2.0 - 1.0
        batch[index, :, top : top + new_height, left : left + new_width] = torch.from_numpy(array).permute(2, 0, 1)
    return batch
