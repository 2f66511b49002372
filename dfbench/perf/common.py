"""What every ``dfbench perf`` suite uses: timing on the right device, peak memory, the test photo, the
machine's description and the report."""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from dfbench.environment import proc_kib


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 0) -> float:
    """Median wall time of ``function()`` in seconds over ``repeats`` runs (after ``warmup`` runs)."""
    for _ in range(warmup):
        function()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_gib() -> float:
    """This process's peak resident set size (``ru_maxrss``), GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def vm_hwm_gib() -> float:
    """This process's own peak RSS since exec (``VmHWM`` of /proc/self/status), GiB."""
    return proc_kib("/proc/self/status", "VmHWM") / 2**20


def perf_image() -> Any:
    """The photo used for timing (scikit-image's chelsea, 451×300)."""
    import skimage.data
    from PIL import Image

    return Image.fromarray(skimage.data.chelsea())


def machine_description(device: torch.device) -> str:
    """CPU model / GPU name, thread count and torch version, for the report."""
    from dfbench.environment import cpu_name

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return f"{name}; {torch.get_num_threads()} threads; torch {torch.__version__}"


def format_report(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """Pretty JSON for the console and for docs/performance.md."""
    return json.dumps(results, indent=1, sort_keys=False)
