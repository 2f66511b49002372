"""Reading images and turning them into the square model input (squash or pad)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dfbench.errors import DfbenchInputError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# modes PIL converts to RGB faithfully (alpha is dropped, palettes and CMYK are mapped)
DIRECT_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBa")
EXIF_ORIENTATION = 0x0112


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB, upright (EXIF orientation applied).

    16-bit images are scaled to 8 bits (value / 257), float images in [0, 1] by 255; palette,
    grey + alpha, CMYK and RGBA images are converted by PIL. A mode that has no faithful 8-bit
    reading (32-bit integers, floats outside [0, 1]) or an unreadable file is one-line
    :class:`DfbenchInputError` naming the file and its mode."""
    path = Path(path)
    if not path.is_file():
        raise DfbenchInputError(f"image {path}: no such file")
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DfbenchInputError(f"image {path}: not a readable image ({error.__class__.__name__})") from None
    return to_rgb8(image, path)


def to_rgb8(image: Image.Image, path: str | Path = "<image>") -> Image.Image:
    """``image`` as 8-bit RGB (see :func:`load_image`)."""
    mode = image.mode
    if mode in DIRECT_MODES:
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return image.convert("RGB")
    array = np.asarray(image)
    if mode in SIXTEEN_BIT_MODES or (mode == "I" and array.size and 0 <= array.min() and array.max() <= 65535
                                      and image.format == "PNG"):
        grey = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F" and array.size and np.isfinite(array).all() and 0 <= array.min() and array.max() <= 1:
        return Image.fromarray(np.round(array.astype(np.float64) * 255).astype(np.uint8)).convert("RGB")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    raise DfbenchInputError(f"image {path}: mode {mode} (values {low:g}…{high:g}) has no faithful 8-bit reading; "
                            "convert it to 8-bit RGB first")


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the image as :func:`load_image` returns it (EXIF rotations swap the sides), without decoding."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


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


RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "bilinear": Image.Resampling.BILINEAR}
#: the fill of ``pad`` in [-1, 1]: mid-grey, or black (Tale of Two Features' letterbox canvas of zeros)
PAD_VALUES = {"grey": 0.0, "black": -1.0}


def to_model_input(images: Sequence[Image.Image] | torch.Tensor, resolution: int, resize_mode: str,
                   pad_color: str = "grey", resample: str = "bicubic") -> torch.Tensor:
    """PIL images → float32 tensor N×3×res×res in [-1, 1]: resized with the PIL filter ``resample``
    (bicubic, lanczos, bilinear); ``pad`` centres the image and fills the rest with ``pad_color`` (grey = 0,
    black = -1). A tensor is taken as already prepared (N×3×H×W in [-1, 1]) and returned as float32."""
    if isinstance(images, torch.Tensor):
        return images.float()
    batch = torch.full((len(images), 3, resolution, resolution), PAD_VALUES[pad_color])
    for index, image in enumerate(images):
        image = image.convert("RGB")
        left, top, new_width, new_height = content_box(*image.size, resolution, resize_mode)
        resized = image.resize((new_width, new_height), RESAMPLE[resample])
        array = np.asarray(resized, dtype=np.float32) / 255.0 * 2.0 - 1.0
        batch[index, :, top : top + new_height, left : left + new_width] = torch.from_numpy(array).permute(2, 0, 1)
    return batch
