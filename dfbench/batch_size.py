"""``--batch-size auto``: the largest batch of denoiser rows that fits the device, from one probe.

After a warm-up row, the probe extracts one and then two rows of a blank image at the run's resolution,
dtype and selection and reads the peak memory of each (CUDA: ``max_memory_allocated`` after
``reset_peak_memory_stats``; CPU: the process's ``VmHWM``, reset through ``/proc/self/clear_refs``). Two rows
minus one row is the cost of a row; one row minus that is the model's own. The batch is the rows that fit into
``HEADROOM`` of the memory free now (CUDA: ``mem_get_info``; CPU: ``MemAvailable``), capped (``MAX_ROWS``); on
CUDA it is then tried once and halved until it runs. The answer is kept in ``$DFBENCH_HOME/batch_sizes.json``
per backbone × weights × resolution × dtype × device × selection (a truncated selection needs less), so the
probe runs once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dfbench.atomic import atomic_write_text
from dfbench.environment import proc_kib
from dfbench.home import dfbench_home

#: the share of the free memory a batch may take
HEADROOM = 0.7
#: the largest batch chosen (CPU throughput stops growing long before; a GPU's far later)
MAX_ROWS = {"cpu": 32, "cuda": 256}
CACHE_FILE = "batch_sizes.json"


def fit_rows(free: float, one_row: float, two_rows: float, cap: int) -> int:
    """The rows whose peak ``base + rows · per_row`` fits ``HEADROOM · free`` (per_row = two_rows − one_row,
    base = one_row − per_row), between 1 and ``cap``; ``cap`` when a row costs nothing measurable."""
    per_row = two_rows - one_row
    if per_row <= 0:
        return cap
    base = max(0.0, one_row - per_row)
    return int(max(1, min(cap, (HEADROOM * free - base) // per_row)))


def _cpu_peak_bytes() -> int:
    return proc_kib("/proc/self/status", "VmHWM") * 1024


def _cpu_reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _cpu_free_bytes() -> int:
    return proc_kib("/proc/meminfo", "MemAvailable") * 1024


def probe_peak(backbone: Any, rows: int, selection: list[str], settings: Any) -> float:
    """Peak memory (bytes) of extracting ``rows`` rows; on CPU, the growth over the RSS before it."""
    blank = torch.zeros(rows, 3, settings.resolution, settings.resolution)
    run = settings.replace(batch_size=rows, ensemble_size=1)
    if backbone.device.type == "cuda":
        torch.cuda.synchronize(backbone.device)
        torch.cuda.reset_peak_memory_stats(backbone.device)
        backbone.extract(blank, selection, run)
        torch.cuda.synchronize(backbone.device)
        return float(torch.cuda.max_memory_allocated(backbone.device))
    _cpu_reset_peak()
    before = _cpu_peak_bytes()
    backbone.extract(blank, selection, run)
    return float(_cpu_peak_bytes() - before)


def cache_key(backbone: Any, settings: Any, selection: list[str]) -> str:
    return "|".join([backbone.name, str(getattr(backbone, "source", "")), str(settings.resolution), settings.dtype,
                     str(backbone.device), ",".join(selection)])


def auto_batch_size(backbone: Any, settings: Any, selection: list[str], home: str | Path | None = None) -> int:
    """The batch (rows per forward) for ``backbone`` at ``settings`` (see the module docstring)."""
    path = dfbench_home(home) / CACHE_FILE
    known = json.loads(path.read_text()) if path.is_file() else {}
    key = cache_key(backbone, settings, selection)
    if key in known:
        return int(known[key]["batch_size"])
    device = backbone.device.type
    cap = MAX_ROWS.get(device, MAX_ROWS["cpu"])
    with torch.inference_mode():
        probe_peak(backbone, 1, selection, settings)       # warm-up: one-time allocations (prompt embeddings, …)
        one, two = probe_peak(backbone, 1, selection, settings), probe_peak(backbone, 2, selection, settings)
    if device == "cuda":
        free = float(torch.cuda.mem_get_info(backbone.device)[0]) + one
        rows = fit_rows(free, one, two, cap)
        while rows > 1:
            try:
                probe_peak(backbone, rows, selection, settings)
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                rows //= 2
    else:
        rows = fit_rows(float(_cpu_free_bytes()), one, two, cap)
    known[key] = {"batch_size": rows, "one_row_bytes": one, "two_rows_bytes": two}
    atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True) + "\n")
    return rows
