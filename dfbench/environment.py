"""What a run was made with: package versions, Python, CPU, thread setup, device and git revision — kept in
every run record and in a gate baseline, and compared when a metric moves."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

from dfbench import __version__

#: packages whose versions a record and a baseline keep (what a moved number may come from)
STACK_PACKAGES = ("torch", "diffusers", "transformers", "numpy", "scipy", "mmengine", "mmsegmentation", "mmcv-lite",
                  "safetensors", "pillow", "scikit-image")
#: environment variables that set the CPU's thread pools
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def environment(device: str = "") -> dict[str, Any]:
    """Versions of the stack, the Python, platform, CPU, thread setup, device and git revision."""
    import importlib.metadata

    import torch


    packages = {}
    for name in STACK_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "dfbench": __version__, "torch": torch.__version__, "diffusers": packages.get("diffusers", ""),
        "transformers": packages.get("transformers", ""), "packages": packages,
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_name(),
        "threads": thread_setup(), "device": device, "git_revision": git_revision(),
    }


def thread_setup() -> dict[str, Any]:
    """torch's intra-op thread count and the thread variables that are set."""
    import os

    import torch

    return {"torch": torch.get_num_threads(), **{name: os.environ[name] for name in THREAD_VARIABLES
                                                 if name in os.environ}}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def proc_kib(path: str, key: str) -> int:
    """A ``key: N kB`` field of a Linux ``/proc`` file (``VmHWM`` of ``/proc/self/status``, ``MemAvailable`` of
    ``/proc/meminfo``), in KiB; 0 where the file has no such field."""
    with open(path) as lines:
        for line in lines:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return 0


def environment_differences(reference: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two :func:`environment` dicts, as ``name: old → new`` (versions of every
    stack package, Python, CPU, thread setup); keys absent from either side are left out."""
    def flat(env: dict[str, Any]) -> dict[str, str]:
        values = {name: str(version) for name, version in (env.get("packages") or {}).items()}
        for key in ("torch", "diffusers", "transformers"):
            if env.get(key):
                values.setdefault(key, str(env[key]))
        values.update({key: str(env[key]) for key in ("python", "cpu") if env.get(key)})
        values.update({f"threads {key}": str(value) for key, value in (env.get("threads") or {}).items()})
        return values

    old, new = flat(reference), flat(current)
    differences = [f"{key}: {old.get(key, 'unset')} → {new.get(key, 'unset')}" for key in sorted(set(old) | set(new))
                   if old.get(key) != new.get(key) and (key in old and key in new or key.startswith("threads"))]
    return differences


def git_revision() -> str:
    """``git rev-parse HEAD`` of the package's checkout (``+dirty`` if modified), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return revision + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
