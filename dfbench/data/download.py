"""Resumable, checksummed downloads.

pooch fetches each file (``pooch.retrieve``) through :class:`ResumableDownloader`, its downloader hook: the bytes go
to ``<name>.part`` beside the download (kept across failures, Ctrl-C and kill -9), and a later call asks the server
for the rest with an HTTP range request — a 3 GB ``.mat`` survives a dropped connection. A server that ignores the
range (answers 200) is read again from the start, which is said in one line. The finished file is checked against
its published size and checksum (pooch's ``file_hash``); where none is published, the first verified download
records its sha256 in ``$DFBENCH_HOME/data.lock.json`` and every later use checks it (trust on first use). A
mismatch keeps the file aside as ``<name>.corrupt`` and says so in one line.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dfbench.atomic import atomic_write_text
from dfbench.data.manifest import DataFile
from dfbench.errors import DfbenchInputError
from dfbench.home import dfbench_home

#: seconds to wait for a server to connect and to send the next block
TIMEOUT_S = 30.0
CHUNK = 1 << 16
#: errors of a full disk (or a file-size limit) while writing
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
LOCK_FILE = "data.lock.json"


def disk_full_error(path: Path, error: OSError) -> DfbenchInputError:
    """The one line of a write that ran out of space."""
    return DfbenchInputError(f"disk full while writing {path} ({error.strerror}); free space or point DFBENCH_DATA "
                             "at a larger disk — nothing was put in place, and the same command resumes")


class ResumableDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) that resumes ``part`` with range requests."""

    def __init__(self, part: Path, size: int | None, progress: bool = True,
                 log: Callable[[str], None] = print) -> None:
        self.part, self.size, self.progress, self.log = part, size, progress, log

    def __call__(self, url: str, output_file: Any, pooch: Any, check_only: bool = False) -> bool | None:
        import requests

        if check_only:
            return True
        have = self.part.stat().st_size if self.part.is_file() else 0
        if self.size is not None and have > self.size:          # not this file any more: start again
            self.part.unlink()
            have = 0
        if self.size is None or have < self.size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
                    if response.status_code == 416 and have:        # nothing left to send: the part is whole
                        pass
                    elif response.status_code >= 400:
                        raise DfbenchInputError(f"{url}: HTTP {response.status_code} {response.reason}; check the "
                                                "URL, or fetch the file from a mirror (--mirror URL)")
                    else:
                        if have and response.status_code != 206:
                            self.log(f"{url}: the server does not resume downloads (HTTP {response.status_code} "
                                     "to a range request); downloading it again from the start")
                            have = 0
                        self._write(response, have)
            except requests.RequestException as error:
                kept = (f"; {self.part.name} keeps what arrived and the same command resumes"
                        if self.part.is_file() and self.part.stat().st_size else "")
                raise DfbenchInputError(f"{url}: could not be reached ({type(error).__name__}); check the network "
                                        f"or use --mirror URL{kept}") from None
        os.replace(self.part, output_file)
        return None

    def _write(self, response: Any, have: int) -> None:
        """Append the body of ``response`` to the part (from scratch when ``have`` is 0)."""
        total = self.size or (have + int(response.headers.get("Content-Length", 0)) or None)
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=self.part.name.removesuffix(".part"), disable=not self.progress)
        import requests

        broken = False
        try:
            with open(self.part, "ab" if have else "wb") as stream:
                for block in response.iter_content(CHUNK):
                    stream.write(block)
                    bar.update(len(block))
        except requests.RequestException:
            broken = True
        except OSError as error:
            if error.errno in DISK_FULL:
                raise disk_full_error(self.part, error) from None
            raise
        finally:
            bar.close()
        arrived = self.part.stat().st_size
        if broken or self.size is not None and arrived < self.size:
            of = f" of {self.size:,}" if self.size else ""
            raise DfbenchInputError(f"{response.url}: the connection ended after {arrived:,}{of} bytes; "
                                    f"{self.part.name} keeps them and the same command resumes")


# ------------------------------------------------------------------------------------------------ the lock
def lock_path(home: str | Path | None = None) -> Path:
    """``$DFBENCH_HOME/data.lock.json``: the sha256 recorded at each file's first verified download."""
    return dfbench_home(home) / LOCK_FILE


def read_lock(home: str | Path | None = None) -> dict[str, Any]:
    path = lock_path(home)
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except ValueError:
        raise DfbenchInputError(f"{path}: not valid JSON; fix it or delete it (the checksums are recorded again at "
                                "the next download)") from None


def record_in_lock(item: DataFile, digest: str, size: int, home: str | Path | None = None) -> None:
    lock = read_lock(home)
    lock[item.name] = {"sha256": digest, "size": size, "url": item.url,
                       "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(lock_path(home), json.dumps(lock, indent=1, sort_keys=True) + "\n")


def expected_hash(item: DataFile, home: str | Path | None = None) -> tuple[str, str, str] | None:
    """(algorithm, digest, where it comes from) that ``item`` must have: published, else recorded; else None."""
    published = item.published_hash
    if published:
        return (*published, "published")
    recorded = read_lock(home).get(item.name)
    return ("sha256", recorded["sha256"], f"recorded at its first download ({lock_path(home)})") if recorded else None


def check_file(path: Path, item: DataFile, home: str | Path | None = None, set_aside: bool = True) -> str:
    """Check ``path`` against ``item``'s size and checksum (published or recorded); record the sha256 of a file
    with neither (trust on first use). Returns how it was verified. On a mismatch the file is renamed
    ``<name>.corrupt`` (``set_aside``) and the error is one line."""
    import pooch

    size = path.stat().st_size
    problem = None
    if item.size is not None and size != item.size:
        problem = f"{size:,} bytes, expected {item.size:,}"
    expected = expected_hash(item, home)
    if problem is None and expected is not None:
        algorithm, digest, origin = expected
        actual = pooch.file_hash(str(path), alg=algorithm)
        if actual != digest:
            problem = f"{algorithm} {actual[:16]}…, expected {digest[:16]}… ({origin})"
    if problem is not None:
        where = path
        if set_aside:
            where = path.with_name(path.name + ".corrupt")
            os.replace(path, where)
        raise DfbenchInputError(f"{item.name}: checksum mismatch — {problem}; "
                                + (f"kept aside as {where}, delete it and get the dataset again"
                                   if set_aside else f"{where} is damaged; get the dataset again"))
    if expected is None:
        record_in_lock(item, pooch.file_hash(str(path), alg="sha256"), size, home)
        return "sha256 recorded (trust on first use)"
    return f"{expected[0]} {expected[2]}"


def fetch(item: DataFile, folder: Path, mirror: str | None = None, progress: bool = True,
          log: Callable[[str], None] = print, home: str | Path | None = None) -> Path:
    """``item`` in ``folder`` (downloaded, or resumed, unless it is there), checked (:func:`check_file`)."""
    import pooch

    target = folder / item.name
    if target.is_file():
        check_file(target, item, home)
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DfbenchInputError(f"download folder {folder}: cannot create it ({error.strerror})") from None
    url = item.source_url(mirror)
    pooch.get_logger().setLevel("WARNING")          # the progress bar says what is downloading
    downloader = ResumableDownloader(folder / f"{item.name}.part", item.size, progress, log)
    try:
        pooch.retrieve(url, known_hash=None, fname=item.name, path=folder, downloader=downloader,
                       progressbar=False)
    except OSError as error:
        if error.errno in DISK_FULL:
            raise disk_full_error(target, error) from None
        raise DfbenchInputError(f"{url}: cannot write {target} ({error.strerror})") from None
    check_file(target, item, home)
    return target
