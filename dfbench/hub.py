"""Weights and data from the Hugging Face Hub or a local folder: one line at once when neither is there.

Left to themselves, ``from_pretrained`` and ``load_dataset`` retry an unreachable hub for about 30 s,
print warnings, and then advise ``hf download`` even for a local path that has a typo. Before any of
them is called, :func:`hub_source` sorts a source out:

* a local path (anything that is not ``owner/name``, or an existing folder) must exist — else one line
  naming it;
* a hub id is used as it is when ``HF_HUB_OFFLINE`` is set (the libraries then read their cache), or
  when the hub answers one TCP connection within a short timeout; when it does not, the id is loaded
  from the local cache (``local_files_only``) if a snapshot is there, else one line says the hub
  cannot be reached and how to get the files.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from dfbench.errors import DfbenchInputError

#: ``owner/name`` as the hub spells repository ids
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
#: seconds to wait for the hub to accept a connection
PROBE_TIMEOUT_S = 5.0


def is_hub_id(source: str | Path) -> bool:
    """Whether ``source`` names a hub repository (``owner/name``) rather than a local path."""
    text = str(source)
    return bool(HUB_ID.match(text)) and not Path(text).exists() and not text.startswith(".")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value: the libraries read their caches only, without retries."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub endpoint (``HF_ENDPOINT``, default huggingface.co) cannot be reached, or None when one
    TCP connection to it succeeds within ``timeout`` seconds."""
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{host}:{port}: {error.strerror or type(error).__name__}"


def cached_snapshot(repo_id: str, repo_type: str = "model") -> Path | None:
    """The local cache's snapshot of ``repo_id`` (no network), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, local_files_only=True))
    except Exception:  # huggingface_hub raises several types for "not in the cache"
        return None


def needs_the_hub_but_cannot_reach_it(local_files_only: bool | None) -> str | None:
    """Why a download would fail now (see :func:`hub_unreachable`), or None: when the libraries read their
    caches only (``local_files_only``, ``HF_HUB_OFFLINE``) or the hub answers."""
    return None if local_files_only or offline() else hub_unreachable()


def hub_source(name: str, source: str | Path, local_files_only: bool | None = None) -> bool | None:
    """Check a backbone's weights ``source`` (``--weights`` or its hub id) before anything is loaded; returns
    the ``local_files_only`` to pass to ``from_pretrained``. See the module docstring."""
    text = str(source)
    if not is_hub_id(text):
        if not Path(text).expanduser().exists():
            raise DfbenchInputError(f"--weights {text}: no such file or folder (backbone {name}); give a local "
                                    "folder that exists, or a hub id owner/name")
        return local_files_only
    reason = needs_the_hub_but_cannot_reach_it(local_files_only)
    if reason is None:
        return local_files_only
    if cached_snapshot(text) is not None:
        return True
    raise DfbenchInputError(
        f"cannot load backbone {name}: {text} is not in the Hugging Face cache and the hub cannot be reached "
        f"({reason}); get it with `hf download {text}` on a machine with internet (then copy the cache, or point "
        "HF_HOME at it), or pass --weights DIR with a local copy")


def cached_file_when_offline(repo_id: str, filename: str, local_files_only: bool | None, alternative: str
                             ) -> Path | None:
    """Before ``hf_hub_download`` of one file: None when the download may go ahead (as :func:`hub_source`
    decides); with the hub unreachable, the cached copy, else one line (``alternative``: what else to pass)."""
    from huggingface_hub import try_to_load_from_cache

    reason = needs_the_hub_but_cannot_reach_it(local_files_only)
    if reason is None:
        return None
    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return Path(cached)
    raise DfbenchInputError(
        f"cannot get {repo_id}/{filename}: not in the Hugging Face cache and the hub cannot be reached ({reason}); "
        f"download it with `hf download {repo_id} {filename}` on a machine with internet, or {alternative}")


def hub_file(repo_id: str, filename: str, local_files_only: bool | None = None,
             alternative: str = "pass a local file") -> Path:
    """One file of a hub repository, from the cache or downloaded (when the hub can be reached): one line when
    it cannot be had (``alternative``: what else the user may pass)."""
    from huggingface_hub import hf_hub_download

    cached = cached_file_when_offline(repo_id, filename, local_files_only, alternative)
    if cached is not None:
        return cached
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=bool(local_files_only) or offline()))
    except Exception as error:  # huggingface_hub raises several unrelated types offline / on 404
        raise DfbenchInputError(
            f"cannot get {repo_id}/{filename} ({type(error).__name__}); download it with "
            f"`hf download {repo_id} {filename}` on a machine with internet, or {alternative}"
        ) from None


def hub_dataset_reachable(source: str, what: str) -> None:
    """Before ``datasets.load_dataset`` of a hub dataset id: one line when the hub cannot be reached (unless
    ``HF_HUB_OFFLINE`` is set, when ``datasets`` reads its cache)."""
    reason = needs_the_hub_but_cannot_reach_it(None)
    if reason is not None:
        raise DfbenchInputError(f"{what}: the Hugging Face hub cannot be reached ({reason}); if the dataset is "
                                "in your datasets cache, run with HF_HUB_OFFLINE=1, else use a local folder")
