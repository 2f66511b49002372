"""Signatures of the checkpoints dfbench writes into run folders, so a resume never unpickles a file it did not
write.

mmengine's checkpoints (``ade20k/gdf-uper``, ``cityscapes/gdf-uper``) are pickles that torch's
``weights_only=True`` cannot read (their message hub holds bound methods), and unpickling a file from a run
folder copied from a collaborator or a CI artifact can run any code it names. So after mmengine saves a
checkpoint, dfbench writes ``<checkpoint>.hmac``: an HMAC-SHA256 of the file under a key that never leaves
this machine (``$DFBENCH_HOME/run-signing.key``, 32 random bytes, created on first use, mode 0600). A resume
loads a checkpoint only when its signature checks out; anything else is refused in one line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from dfbench.atomic import atomic_write_text
from dfbench.home import dfbench_home

KEY_FILE = "run-signing.key"
SUFFIX = ".hmac"


def signing_key() -> bytes:
    """This machine's key (made on first use: 32 bytes from ``os.urandom``, readable by its owner only)."""
    path = dfbench_home() / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{KEY_FILE}.{os.getpid()}.tmp")
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(os.urandom(32))
        os.replace(temp, path)
    return path.read_bytes()


def file_signature(path: Path) -> str:
    """HMAC-SHA256 (hex) of the file's bytes under :func:`signing_key`."""
    digest = hmac.new(signing_key(), digestmod=hashlib.sha256)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sign(path: Path) -> Path:
    """Write ``<path>.hmac`` (atomically)."""
    return atomic_write_text(Path(f"{path}{SUFFIX}"), file_signature(Path(path)) + "\n")


def is_signed(path: Path) -> bool:
    """Whether ``<path>.hmac`` holds this machine's signature of the file as it is now."""
    signature = Path(f"{path}{SUFFIX}")
    if not (Path(path).is_file() and signature.is_file()):
        return False
    return hmac.compare_digest(signature.read_text().strip(), file_signature(Path(path)))
