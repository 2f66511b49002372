"""``dfbench data ls | get | verify`` over the manifest's datasets.

``get`` downloads each file into ``$DFBENCH_DATA/.downloads/`` (resumable, checked), unpacks the archives into a
staging folder beside the destination (or stages the files themselves), runs the preparation a dataset needs
(Cityscapes' ``*_labelTrainIds.png``), runs the task's own layout check on the staged copy, and only then moves it
into place and writes ``.dfbench-data.json`` into it (what was installed, with the files' checksums). Archives stay
in ``.downloads/`` so ``verify`` can check them again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfbench.atomic import atomic_write_text
from dfbench.data.download import check_file, expected_hash, fetch, lock_path
from dfbench.data.manifest import CITYSCAPES_SCHEME, Dataset, data_mirror, data_root
from dfbench.data.unpack import find_folder, move_into_place, staging, unpack
from dfbench.errors import DfbenchInputError

DOWNLOADS = ".downloads"
MARKER = ".dfbench-data.json"


def downloads_folder(root: Path) -> Path:
    return root / DOWNLOADS


def installed(dataset: Dataset, root: Path) -> bool:
    """Whether every part of ``dataset`` is in place (its folder, or its files in it)."""
    location = dataset.location(root)
    if dataset.unpack is not None:
        return location.is_dir()
    return all((location / item.name).is_file() for item in dataset.files)


def status(dataset: Dataset, root: Path) -> str:
    """``verified`` (installed by ``get``: its marker is there), ``present`` (put there by hand), ``missing``."""
    if not installed(dataset, root):
        return "missing"
    marker = dataset.location(root) / MARKER
    if marker.is_file() and dataset.name in json.loads(marker.read_text()).get("datasets", {}):
        return "verified"
    return "present"


def size_on_disk(dataset: Dataset, root: Path) -> int:
    location = dataset.location(root)
    if dataset.unpack is None:
        return sum((location / item.name).stat().st_size for item in dataset.files if (location / item.name).is_file())
    return sum(path.stat().st_size for path in location.rglob("*") if path.is_file()) if location.is_dir() else 0


def checksum_source(dataset: Dataset, home: str | Path | None = None) -> str:
    """How the dataset's files are checked: published checksums, recorded ones, or trust on first use."""
    kinds = []
    for item in dataset.files:
        expected = expected_hash(item, home)
        kinds.append("published" if expected and expected[2] == "published" else
                     "recorded" if expected else "trust on first use")
    return ", ".join(sorted(set(kinds)))


def listing(manifest: dict[str, Dataset], home: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per dataset for ``data ls``."""
    root = data_root()
    return [{"dataset": dataset.name, "location": str(dataset.location(root)), "status": status(dataset, root),
             "size": size_on_disk(dataset, root), "checksums": checksum_source(dataset, home),
             "tasks": ", ".join(dataset.tasks), "suites": ", ".join(Path(s).name for s in dataset.suites)}
            for dataset in manifest.values()]


def check_layout(dataset: Dataset, folder: Path) -> None:
    """The dataset's layout check on ``folder`` (staged or in place): its task's own loader, or a JSON list."""
    if "json_list" in dataset.check:
        path = folder / dataset.check["json_list"]
        try:
            pairs = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DfbenchInputError(f"{path}: not a JSON pair list ({type(error).__name__})") from None
        if not isinstance(pairs, list) or not pairs:
            raise DfbenchInputError(f"{path}: expected a non-empty JSON list of pairs")
        return
    if "task" in dataset.check:
        from dfbench.registry import TASKS

        TASKS.get(dataset.check["task"])().check_layout(folder, dataset.check["split"])


def prepare(dataset: Dataset, folder: Path, log: Callable[[str], None]) -> None:
    """A dataset's preparation after unpacking: Cityscapes' train-id label images."""
    if dataset.prepare == "cityscapes-train-ids":
        try:
            from cityscapesscripts.preparation.json2labelImg import json2labelImg
        except ImportError:
            raise DfbenchInputError("cityscapes: the *_labelTrainIds.png are made with cityscapesScripts; install it "
                                    "(pip install \"dfbench[cityscapes]\")") from None
        polygons = sorted(folder.glob("gtFine/*/*/*_gtFine_polygons.json"))
        if not polygons:
            raise DfbenchInputError(f"cityscapes: no gtFine/<split>/<city>/*_gtFine_polygons.json in {folder}; not "
                                    "gtFine_trainvaltest.zip?")
        log(f"cityscapes: making {len(polygons)} *_labelTrainIds.png (cityscapesScripts' json2labelImg)")
        for path in polygons:
            json2labelImg(str(path), str(path).replace("_polygons.json", "_labelTrainIds.png"), "trainIds")


def cityscapes_files(dataset: Dataset, folder: Path, source: Path | None, log: Callable[[str], None]) -> None:
    """The Cityscapes zips in ``folder``: copied from ``source`` (``--from DIR``), else fetched with
    cityscapesScripts' downloader (credentials from ``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD``, else its
    own prompt)."""
    names = [item.name for item in dataset.files]
    if source is not None:
        for name in names:
            if not (source / name).is_file():
                raise DfbenchInputError(f"cityscapes --from {source}: no {name} there (download it at "
                                        "https://www.cityscapes-dataset.com/downloads/ with your account)")
            if not (folder / name).is_file():
                shutil.copyfile(source / name, folder / name)
        return
    try:
        from cityscapesscripts.download import downloader
    except ImportError:
        raise DfbenchInputError("cityscapes needs an account: install cityscapesScripts (pip install "
                                "\"dfbench[cityscapes]\") or download the two zips yourself and pass --from DIR"
                                ) from None
    credentials = {"username": os.environ.get("CITYSCAPES_USERNAME"), "password": os.environ.get("CITYSCAPES_PASSWORD")}
    previous = os.environ.get("XDG_DATA_HOME")
    try:
        if credentials["username"] and credentials["password"]:
            # cityscapesScripts reads <user data dir>/cityscapesscripts/credentials.json (appdirs: $XDG_DATA_HOME)
            os.environ["XDG_DATA_HOME"] = str(folder / ".credentials")
            store = folder / ".credentials" / "cityscapesscripts"
            store.mkdir(parents=True, exist_ok=True)
            (store / "credentials.json").write_text(json.dumps(credentials))
        log("cityscapes: logging in to cityscapes-dataset.com (cityscapesScripts)")
        session = downloader.login()
        downloader.download_packages(session=session, package_names=names, destination_path=str(folder),
                                     resume=True)
    except DfbenchInputError:
        raise
    except Exception as error:  # cityscapesScripts raises bare Exceptions and requests' errors
        raise DfbenchInputError(f"cityscapes: download failed ({type(error).__name__}: {error}); or download the "
                                "zips yourself and pass --from DIR") from None
    finally:
        shutil.rmtree(folder / ".credentials", ignore_errors=True)
        if previous is None:
            os.environ.pop("XDG_DATA_HOME", None)
        else:
            os.environ["XDG_DATA_HOME"] = previous


def get(dataset: Dataset, mirror: str | None = None, source: Path | None = None, progress: bool = True,
        log: Callable[[str], None] = print, home: str | Path | None = None) -> Path:
    """Install ``dataset`` under ``$DFBENCH_DATA`` (see the module docstring), from ``mirror`` (default
    ``$DFBENCH_DATA_MIRROR``) or the official URLs; returns its location."""
    root = data_root()
    mirror = data_mirror(mirror)
    location = dataset.location(root)
    if installed(dataset, root):
        log(f"{dataset.name}: already in {location} (`dfbench data verify {dataset.name}` checks it)")
        return location
    downloads = downloads_folder(root)
    paths = []
    if dataset.files and dataset.files[0].url.startswith(CITYSCAPES_SCHEME):
        downloads.mkdir(parents=True, exist_ok=True)
        cityscapes_files(dataset, downloads, source, log)
        paths = [downloads / item.name for item in dataset.files]
        for item, path in zip(dataset.files, paths, strict=True):
            check_file(path, item, home)
    else:
        paths = [fetch(item, downloads, mirror, progress, log, home) for item in dataset.files]
    with staging(root, dataset.name) as staged:
        if dataset.unpack is not None:
            unpacked = staged / "unpacked"
            for path in paths:
                log(f"{dataset.name}: unpacking {path.name}")
                unpack(path, unpacked)
            ready = find_folder(unpacked, dataset.unpack)
        else:
            ready = staged / "files"
            ready.mkdir()
            for path in paths:
                os.replace(path, ready / path.name)      # the file itself is the dataset: moved, not copied
        prepare(dataset, ready, log)
        check_layout(dataset, ready)
        write_marker(ready, location, dataset, home)
        move_into_place(ready, location)
    log(f"{dataset.name}: ready in {location}")
    return location


def write_marker(ready: Path, location: Path, dataset: Dataset, home: str | Path | None) -> None:
    """``.dfbench-data.json`` in the staged folder: what was installed and the checksums it was checked against
    (merged with the marker of a dataset that shares the folder)."""
    marker = location / MARKER
    existing = json.loads(marker.read_text()) if marker.is_file() else {"datasets": {}}
    if marker.is_file():
        marker.unlink()          # rewritten below, and moved in with the rest
    existing["datasets"][dataset.name] = {
        item.name: {"size": item.size, "checksum": (expected_hash(item, home) or ("", "", ""))[:2]}
        for item in dataset.files}
    atomic_write_text(ready / MARKER, json.dumps(existing, indent=1, sort_keys=True) + "\n")


def verify(dataset: Dataset, home: str | Path | None = None) -> str:
    """Check an installed dataset again: its files' checksums (the kept archives, or the files in place) and its
    layout. Returns what was checked; a problem is one line."""
    root = data_root()
    location = dataset.location(root)
    if not installed(dataset, root):
        raise DfbenchInputError(f"{dataset.name}: not in {location}; `dfbench data get {dataset.name}`")
    checked = []
    for item in dataset.files:
        path = (location if dataset.unpack is None else downloads_folder(root)) / item.name
        if path.is_file():
            check_file(path, item, home, set_aside=False)
            checked.append(item.name)
    check_layout(dataset, location)
    files = f"checksums of {', '.join(checked)}" if checked else "no archive kept to check"
    return f"{dataset.name}: ok ({files}; layout checked; lock {lock_path(home)})"
