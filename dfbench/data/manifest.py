"""The datasets ``dfbench data`` knows: a manifest shipped with the package (``manifest.json``), or one of your own
(``$DFBENCH_DATA_MANIFEST``, the same format: an institution's copies, or test fixtures)."""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfbench.errors import DfbenchInputError

MANIFEST = Path(__file__).with_name("manifest.json")
#: the scheme of files that only their own downloader can fetch (a login)
CITYSCAPES_SCHEME = "cityscapes:"


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset: where it comes from and what it must be (size and checksum where published)."""

    name: str
    url: str
    size: int | None = None
    sha256: str | None = None
    sha1: str | None = None

    def source_url(self, mirror: str | None = None) -> str:
        """Where the file is fetched from: its URL, or the same file name under ``mirror``."""
        return f"{mirror.rstrip('/')}/{self.name}" if mirror else self.url

    @property
    def published_hash(self) -> tuple[str, str] | None:
        """(algorithm, hex digest) of the published checksum, if there is one."""
        if self.sha256:
            return "sha256", self.sha256
        if self.sha1:
            return "sha1", self.sha1
        return None


@dataclass(frozen=True)
class Dataset:
    """A dataset: its files, the folder it lives in, how it is unpacked and checked, who needs it."""

    name: str
    description: str
    folder: str
    files: tuple[DataFile, ...]
    #: the folder of the unpacked archives that becomes ``folder`` (``.``: the archives' top level); None: the
    #: files themselves are put into ``folder``
    unpack: str | None = None
    #: the layout check: ``{"task": T, "split": S}`` (the task's own loader) or ``{"json_list": FILE}``
    check: dict[str, str] = field(default_factory=dict)
    #: a preparation step after unpacking (``cityscapes-train-ids``)
    prepare: str | None = None
    tasks: tuple[str, ...] = ()
    suites: tuple[str, ...] = ()

    def location(self, data_root: Path) -> Path:
        """Where the dataset lives under ``data_root``."""
        return data_root / self.folder


def data_root() -> Path:
    """``$DFBENCH_DATA`` (default ``./data``): the folder the paper suites' ``${DFBENCH_DATA}/…`` paths name."""
    return Path(os.environ.get("DFBENCH_DATA", "data"))


def data_mirror(given: str | None = None) -> str | None:
    """The mirror to fetch from: ``--mirror``, else ``$DFBENCH_DATA_MIRROR``, else none (the official URLs)."""
    return given or os.environ.get("DFBENCH_DATA_MIRROR") or None


def load_manifest(path: str | Path | None = None) -> dict[str, Dataset]:
    """The datasets of ``path`` (default: ``$DFBENCH_DATA_MANIFEST``, else the packaged manifest)."""
    path = Path(path or os.environ.get("DFBENCH_DATA_MANIFEST") or MANIFEST)
    try:
        raw: dict[str, Any] = json.loads(path.read_text())["datasets"]
        return {name: Dataset(name=name, description=entry.get("description", ""), folder=entry["folder"],
                              files=tuple(DataFile(**item) for item in entry["files"]), unpack=entry.get("unpack"),
                              check=dict(entry.get("check", {})), prepare=entry.get("prepare"),
                              tasks=tuple(entry.get("tasks", ())), suites=tuple(entry.get("suites", ())))
                for name, entry in raw.items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DfbenchInputError(f"data manifest {path}: not readable ({type(error).__name__}: {error}); expected "
                                "{\"datasets\": {NAME: {\"folder\", \"files\": [{\"name\", \"url\"}]}}}") from None


def find(manifest: dict[str, Dataset], names: list[str]) -> list[Dataset]:
    """The datasets ``names`` (in order); an unknown name is one line with the closest known ones."""
    found = []
    for name in names:
        if name not in manifest:
            close = difflib.get_close_matches(name, list(manifest), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise DfbenchInputError(f"unknown dataset {name!r}: {hint}known: {', '.join(manifest)} "
                                    "(`dfbench data ls`)")
        found.append(manifest[name])
    return found


def dataset_for_path(manifest: dict[str, Dataset], path: str | Path) -> Dataset | None:
    """The dataset whose location ``path`` is (under ``$DFBENCH_DATA``), or whose file it names; else None."""
    path = Path(path)
    root = data_root()
    for dataset in manifest.values():
        location = dataset.location(root)
        if dataset.unpack is not None and path == location:
            return dataset
        if dataset.unpack is None and (path == location and len(dataset.files) > 1 or
                                       any(path == location / item.name for item in dataset.files)):
            return dataset
    return None
