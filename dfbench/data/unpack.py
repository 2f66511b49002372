"""Archives unpacked safely into a staging folder, and a staged dataset moved into place at once.

Every entry must land inside the staging folder: a path with ``..``, an absolute path, a drive, or a link (tar's
symbolic and hard links, a zip entry whose mode says symlink) is refused with one line and nothing is kept. The
staging folder (``.staging-<name>-<pid>``) sits beside the destination, so the final move is one ``rename`` on the
same file system; one left by a killed run is removed by the next.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from dfbench.data.download import DISK_FULL, disk_full_error
from dfbench.errors import DfbenchInputError

STAGING_PREFIX = ".staging-"


def check_member(archive: Path, name: str, is_link: bool) -> PurePosixPath:
    """The entry's path, once it is known to stay inside the destination; else one line."""
    path = PurePosixPath(name.replace("\\", "/"))
    if is_link:
        raise DfbenchInputError(f"archive {archive}: entry {name!r} is a link; refused (an archive of a dataset "
                                "holds files and folders only)")
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DfbenchInputError(f"archive {archive}: entry {name!r} would land outside the destination; refused")
    return path


def unpack(archive: Path, destination: Path) -> None:
    """Unpack a ``.zip`` or a ``.tar[.gz|.bz2|.xz]`` into ``destination``, every entry checked first."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as opened:
                infos = opened.infolist()
                for info in infos:
                    check_member(archive, info.filename, stat.S_ISLNK(info.external_attr >> 16))
                for info in infos:
                    opened.extract(info, destination)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as opened:
                members = opened.getmembers()
                for member in members:
                    check_member(archive, member.name, member.issym() or member.islnk())
                    if not (member.isfile() or member.isdir()):
                        raise DfbenchInputError(f"archive {archive}: entry {member.name!r} is a device or a pipe; "
                                                "refused")
                opened.extractall(destination, members=members, filter="data")
        else:
            raise DfbenchInputError(f"{archive}: neither a zip nor a tar archive")
    except OSError as error:
        if error.errno in DISK_FULL:
            raise disk_full_error(destination, error) from None
        raise DfbenchInputError(f"archive {archive}: cannot unpack it ({error})") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise DfbenchInputError(f"archive {archive}: damaged ({error}); delete it and get the dataset again") from None


def find_folder(root: Path, name: str) -> Path:
    """``root`` itself (``name`` is ``.``) or the folder called ``name`` in it, at most three levels down."""
    if name == ".":
        return root
    level = [root]
    for _ in range(4):
        for folder in level:
            if (folder / name).is_dir():
                return folder / name
        level = [child for folder in level for child in sorted(folder.iterdir()) if child.is_dir()]
    raise DfbenchInputError(f"the unpacked archives have no folder {name!r} (looked three levels down in {root}); "
                            "not the expected archive?")


def remove_stale_staging(parent: Path, name: str) -> None:
    """Staging folders of ``name`` that a killed run left under ``parent``."""
    if parent.is_dir():
        for folder in parent.glob(f"{STAGING_PREFIX}{name}-*"):
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def staging(parent: Path, name: str) -> Iterator[Path]:
    """A fresh staging folder under ``parent``, removed when the block ends (moved-out content stays)."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DfbenchInputError(f"data folder {parent}: cannot create it ({error.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise DfbenchInputError(f"data folder {parent}: not writable; choose another DFBENCH_DATA")
    remove_stale_staging(parent, name)
    folder = parent / f"{STAGING_PREFIX}{name}-{os.getpid()}"
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def move_into_place(staged: Path, destination: Path) -> None:
    """``staged`` becomes ``destination`` (one rename); into an existing folder, entry by entry (a list file put
    there first, e.g. GDF's pairs in ``SPair-71k/``), never over an existing entry."""
    if destination.exists() and not destination.is_dir():
        raise DfbenchInputError(f"{destination} is a file; the dataset needs a folder there — move the file away")
    if not destination.exists():
        os.replace(staged, destination)
        return
    for entry in sorted(staged.iterdir()):
        target = destination / entry.name
        if target.exists():
            raise DfbenchInputError(f"{target} exists already; move it away to get the dataset again")
        os.replace(entry, target)
