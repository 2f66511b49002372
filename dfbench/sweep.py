"""Activation sweeps: which activation, at which timestep (and prompt), gives the best features for a task.

``run_sweep`` expands glob patterns over the backbone's activation catalog, then per (prompt,
timestep):

1. extracts every candidate in one forward per image (the UNet stops after the deepest one) into the
   feature cache — one image per forward, so at most one image's activations per candidate are held —
   skipping what the cache already has (a re-run or a killed sweep computes only what is missing;
   under torchrun each rank extracts its share of the images);
2. evaluates each candidate alone with the task's cheapest protocol (``Task.sweep_protocol`` and
   ``Task.sweep_options``: SPair ``dift-nn``, segmentation ``linear``, Horse-21 ``ddpm`` with one
   seed, depth ``cleandift-linear``), each a normal run record read from the cache (runs already
   recorded are reused);

then greedily combines the best ``combine_top`` activations at the best (prompt, timestep), and
writes a ranked table (primary metric ± its bootstrap standard error; ``≈`` marks a candidate within
noise of the one above: |difference| ≤ √(se₁² + se₂²)) and an activation × timestep heatmap into
``<results>/sweeps/<id>/``.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfbench.atomic import atomic_write_text
from dfbench.backbones.protocol import Backbone, ConfiguredBackbone
from dfbench.cache import CacheItem, FeatureCache, cached_extract, image_key
from dfbench.distributed import process_group
from dfbench.errors import DfbenchInputError
from dfbench.plots import pyplot, save_figure
from dfbench.registry import TASKS
from dfbench.resolve import resolve_features, resolve_run, resolve_task, split_task
from dfbench.results import now
from dfbench.runner import RunSpec, check_results_folder, run_resolved
from dfbench.suite import recorded_runs


@dataclass
class SweepEntry:
    """One evaluated selection at one (prompt, timestep)."""

    selection: list[str]
    timestep: int
    prompt: str
    value: float
    stderr: float
    run_id: str

    @property
    def label(self) -> str:
        return " + ".join(self.selection)


@dataclass
class SweepResult:
    """What a sweep found, and where it wrote its table and heatmap."""

    metric: str
    higher_is_better: bool
    singles: list[SweepEntry] = field(default_factory=list)
    combinations: list[SweepEntry] = field(default_factory=list)
    forwards: int = 0
    images: int = 0
    folder: Path | None = None
    seconds: float = 0.0


def expand_candidates(patterns: list[str], names: list[str]) -> list[str]:
    """The activation names matching any glob pattern (catalog order); a pattern matching nothing is an error."""
    chosen = []
    for pattern in patterns:
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise DfbenchInputError(f"--candidates {pattern!r}: matches no activation of this backbone "
                                    "(see `dfbench activations B`)")
        chosen += [name for name in matched if name not in chosen]
    return [name for name in names if name in chosen]


def ranked(entries: list[SweepEntry], higher_is_better: bool) -> list[SweepEntry]:
    """Best first."""
    return sorted(entries, key=lambda entry: -entry.value if higher_is_better else entry.value)


def within_noise(first: SweepEntry, second: SweepEntry) -> bool:
    """|difference| ≤ √(se₁² + se₂²) (NaN standard errors: never a tie)."""
    spread = math.sqrt(first.stderr**2 + second.stderr**2)
    return abs(first.value - second.value) <= spread


def run_sweep(backbone: Backbone, task_name: str, patterns: list[str], timesteps: list[int] | None = None,
              prompts: list[str] | None = None, combine_top: int = 0, data_root: str | None = "mini",
              split: str | None = None, limit: int | None = None, settings: dict[str, Any] | None = None,
              options: dict[str, Any] | None = None, results_dir: str | Path = "results", cache_dir: str | None = None,
              progress: bool = False, log: Any = print) -> SweepResult:
    """Sweep ``patterns`` × ``timesteps`` × ``prompts`` on ``task_name`` (see the module docstring)."""

    check_results_folder(results_dir)          # before anything is extracted
    started = time.perf_counter()
    task_part, protocol_name = split_task(task_name)
    task = TASKS.get(task_part)()
    protocol = task.protocol(protocol_name or task.sweep_protocol or None)
    sweep_options = {**(task.sweep_options if protocol.name == task.sweep_protocol else {}), **(options or {})}
    # the task side resolved (options, data) before anything is extracted
    _, _, _, root, _, split = resolve_task(f"{task.name}/{protocol.name}", sweep_options, data_root, split, limit)
    candidates = expand_candidates(patterns, backbone.activation_names())
    base = resolve_features(backbone, settings=settings, require_selection=False).settings
    timesteps = timesteps or [base.timestep]
    prompts = prompts if prompts is not None else [base.prompt]
    image_splits = [split] + ([task.sweep_train_split] if task.sweep_train_split not in (None, split) else [])
    items = {image_key(path): CacheItem(image_key(path), path, category)
             for name in image_splits for path, category in task.split_images(root, split=name)}
    cache = FeatureCache(cache_dir)
    result = SweepResult(metric="", higher_is_better=True, images=len(items))
    with process_group() as ranks:
        stores = []
        for prompt in prompts:
            for timestep in timesteps:
                one_per_forward = base.replace(timestep=timestep, prompt=prompt, batch_size=base.ensemble_size)
                log(f"extract {len(candidates)} candidates at t={timestep}" + (f", prompt {prompt!r}" if prompt
                                                                                else "") + " …")
                stores.append(cache.open(backbone, one_per_forward))
                counts = cached_extract(backbone, list(items.values()), candidates, one_per_forward, stores[-1],
                                        ranks.rank, ranks.world_size, progress=progress)
                result.forwards += counts["computed"]          # one image per forward
        ranks.barrier()
        if ranks.rank != 0:
            return result
        for store in stores:      # every rank's shards into the manifests rank 0 reads
            store.merge_manifest()
            store.reload()
    recorded = recorded_runs(results_dir)

    def evaluate(selection: list[str], timestep: int, prompt: str) -> SweepEntry:
        spec = RunSpec(backbone=backbone.name, task=f"{task.name}/{protocol.name}", selection=selection,
                       settings={**(settings or {}), "timestep": timestep, "prompt": prompt}, data_root=data_root,
                       split=split, limit=limit, options=sweep_options,
                       cache_dir=str(cache.root),
                       backbone_options=dict(backbone.options) if isinstance(backbone, ConfiguredBackbone) else {})
        run = resolve_run(spec, backbone)
        identity = run.identity_hash()
        record = recorded.get(identity)
        if record is None:        # the results folder was checked and the cache made before the extraction
            record, _ = run_resolved(run, spec, results_dir, cache, progress=False, figures=False)
            recorded[identity] = record
        primary = record.details["leaderboard_metrics"][0]
        result.metric, result.higher_is_better = primary, record.higher_is_better(primary)
        return SweepEntry(selection, timestep, prompt, record.metrics[primary],
                          record.metrics.get(f"{primary}_stderr", float("nan")), record.run_id)

    for prompt in prompts:
        for timestep in timesteps:
            for name in candidates:
                result.singles.append(evaluate([name], timestep, prompt))
                entry = result.singles[-1]
                log(f"  t={timestep} {name}: {result.metric} = {entry.value:.2f} ± {entry.stderr:.2f}")
    best = ranked(result.singles, result.higher_is_better)[0]
    if combine_top > 1:
        pool = [entry.selection[0] for entry in ranked(result.singles, result.higher_is_better)
                if (entry.timestep, entry.prompt) == (best.timestep, best.prompt)][1:combine_top]
        current = best
        while pool:
            trials = [evaluate(current.selection + [name], best.timestep, best.prompt) for name in pool]
            result.combinations += trials
            challenger = ranked(trials, result.higher_is_better)[0]
            better = challenger.value > current.value if result.higher_is_better else challenger.value < current.value
            if not better:
                break
            log(f"  + {challenger.selection[-1]}: {result.metric} = {challenger.value:.2f}")
            pool.remove(challenger.selection[-1])
            current = challenger
    result.seconds = time.perf_counter() - started
    result.folder = write_sweep(result, task.name, protocol.name, backbone.name, results_dir, timesteps, candidates)
    return result


def write_sweep(result: SweepResult, task: str, protocol: str, backbone: str, results_dir: str | Path,
                timesteps: list[int], candidates: list[str]) -> Path:
    """``sweep.md`` / ``sweep.csv`` (ranked), ``sweep.json`` and ``heatmap.png`` in a new sweep folder."""
    import pandas as pd


    stamp = now().replace("-", "").replace(":", "")[:15]
    folder = Path(results_dir) / "sweeps" / f"{stamp}-{task}_{protocol}-{backbone}"
    rows, previous = [], None
    for rank, entry in enumerate(ranked(result.singles + result.combinations, result.higher_is_better), start=1):
        tie = previous is not None and within_noise(previous, entry)
        rows.append({"rank": rank, "selection": entry.label, "timestep": entry.timestep, "prompt": entry.prompt,
                     result.metric: entry.value, "± stderr": entry.stderr, "within noise of the one above":
                     "≈" if tie else "", "run": entry.run_id})
        previous = entry
    frame = pd.DataFrame(rows)
    folder.mkdir(parents=True, exist_ok=True)
    direction = "higher" if result.higher_is_better else "lower"
    title = f"# sweep: {backbone} × {task}/{protocol} — {result.metric} ({direction} is better)\n\n"
    atomic_write_text(folder / "sweep.md", title + frame.to_markdown(index=False, floatfmt=".2f") + "\n")
    atomic_write_text(folder / "sweep.csv", frame.to_csv(index=False))
    atomic_write_text(folder / "sweep.json", json.dumps({
        "metric": result.metric, "higher_is_better": result.higher_is_better, "forwards": result.forwards,
        "images": result.images, "seconds": result.seconds, "ranking": rows}, indent=1) + "\n")
    plot_heatmap(result, timesteps, candidates, f"{backbone} × {task}/{protocol}", folder / "heatmap.png")
    return folder


def text_colour(rgba: tuple[float, ...]) -> str:
    """Black on a light cell, white on a dark one: by the cell's relative luminance (sRGB weights; the
    threshold 0.5 keeps viridis' yellow and green end black-on-light)."""
    red, green, blue = rgba[:3]
    return "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "white"


def plot_heatmap(result: SweepResult, timesteps: list[int], candidates: list[str], title: str, path: Path) -> Path:
    """Activation × timestep image of the primary metric (the first prompt's runs)."""
    import numpy as np


    prompt = result.singles[0].prompt
    grid = np.full((len(candidates), len(timesteps)), np.nan)
    for entry in result.singles:
        if entry.prompt == prompt:
            grid[candidates.index(entry.selection[0]), timesteps.index(entry.timestep)] = entry.value
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(1.2 * len(timesteps) + 3.5, 0.32 * len(candidates) + 1.5))
    shown = axis.imshow(grid, aspect="auto", cmap="viridis" if result.higher_is_better else "viridis_r")
    axis.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    axis.set_yticks(range(len(candidates)), candidates, fontsize=7)
    axis.set_xlabel("timestep")
    for row in range(len(candidates)):
        for column in range(len(timesteps)):
            if np.isfinite(grid[row, column]):
                axis.text(column, row, f"{grid[row, column]:.1f}", ha="center", va="center", fontsize=6,
                          color=text_colour(shown.cmap(shown.norm(grid[row, column]))))
    figure.colorbar(shown, ax=axis, label=result.metric)
    axis.set_title(title, fontsize=9)
    path = save_figure(figure, path)
    plt.close(figure)
    return path
