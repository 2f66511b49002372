"""Write files so that a reader never sees half of one: temp file in the same folder, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temp_path)`` and atomically rename the temp file to ``path``.

    The temp file lives beside ``path`` (same filesystem, so the rename is atomic) and keeps its
    suffix (writers such as matplotlib pick the format from it). The file gets the mode the umask
    asks for (0644 under 0022). On any failure it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temp))
        os.chmod(temp, 0o666 & ~current_umask())  # mkstemp makes 0600; a shared results folder stays readable
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a text file."""
    return atomic_write(path, lambda temp: temp.write_text(text))


def atomic_write_png(path: str | Path, array: Any) -> Path:
    """:func:`atomic_write` of a single-channel 8-bit PNG (a label map) from an integer array."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.asarray(array).astype(np.uint8))
    return atomic_write(path, lambda temp: image.save(temp, format="PNG"))


def atomic_write_npy(path: str | Path, array: Any) -> Path:
    """:func:`atomic_write` of a float32 ``.npy`` file."""
    import numpy as np

    values = np.asarray(array, dtype=np.float32)
    return atomic_write(path, lambda temp: np.save(temp, values))


def atomic_build_dir(target: str | Path, build: Callable[[Path], object]) -> Path:
    """Build a folder once: ``build(staging)`` in a temp folder beside ``target``, then rename it to
    ``target``. A reader never sees a half-built folder; if another process finished first, its
    folder is kept and this one discarded; on any failure nothing is left behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
