"""Running one (backbone, task, selection, settings) pairing and recording it; suites of them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfbench.errors import DfbenchInputError
from dfbench.results import Result, load_results, save_result


@dataclass
class RunSpec:
    """One pairing to run: everything that decides its result."""

    backbone: str
    task: str
    selection: list[str] = field(default_factory=list)
    preset: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    split: str = "test"
    limit_pairs: int | None = None
    per_category: int | None = None
    pairs_file: str | None = None
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None

    def config_hash(self) -> str:
        """A short hash of the spec (same spec → same hash), used to skip runs already recorded."""
        return hashlib.sha1(json.dumps(self.__dict__, sort_keys=True, default=str).encode()).hexdigest()[:12]


def split_task(name: str) -> tuple[str, str | None]:
    """``spair/dift-nn`` → (``spair``, ``dift-nn``); ``spair`` → (``spair``, None)."""
    task, _, protocol = name.partition("/")
    return task, protocol or None


def resolve_data_root(task: str, data_root: str | None) -> Path:
    """``mini`` (or nothing, for the demo) → the embedded mini set; else the given folder."""
    if data_root in (None, "", "mini"):
        if task != "spair":
            raise DfbenchInputError(f"task {task}: pass --data-root DIR (no embedded mini set yet)")
        from dfbench.datasets.mini_spair import mini_spair_root

        return mini_spair_root()
    return Path(data_root)


def spec_dtype(spec: RunSpec) -> str:
    """The compute dtype a spec asks for (its settings, else its preset's, else float32)."""
    from dfbench.registry import get_preset

    preset_settings = get_preset(spec.preset).settings if spec.preset else {}
    return spec.settings.get("dtype") or preset_settings.get("dtype") or "float32"


def create_spec_backbone(spec: RunSpec) -> Any:
    """The backbone a spec names, with its weights override and in its compute dtype."""
    from dfbench.registry import create_backbone

    options = {"weights": spec.weights} if spec.weights else {}
    return create_backbone(spec.backbone, torch_dtype=spec_dtype(spec), **options)


def run_one(spec: RunSpec, results_dir: str | Path = "results", progress: bool = True, figures: bool = True,
            backbone: Any = None) -> tuple[Result, Path]:
    """Run ``spec``, save its record (and figures) under ``results_dir``; returns (result, record path)."""
    from dfbench.registry import TASKS, get_preset

    task_name, protocol = split_task(spec.task)
    task = TASKS.get(task_name)()
    preset = get_preset(spec.preset) if spec.preset else None
    selection = list(preset.selection) if preset and not spec.selection else list(spec.selection)
    if not selection:
        raise DfbenchInputError("no activations selected: pass --select NAME… or --preset P")
    if backbone is None:
        backbone = create_spec_backbone(spec)
    from dfbench.settings import ExtractSettings

    settings = ExtractSettings.from_dict({**backbone.default_settings, **(preset.settings if preset else {}),
                                          **spec.settings})
    data_root = resolve_data_root(task_name, spec.data_root)
    cache = None
    if spec.cache_dir or os.environ.get("DFBENCH_CACHE"):
        from dfbench.cache import FeatureCache

        cache = FeatureCache(spec.cache_dir).open(backbone, settings)
    result, predictions = task.run(
        backbone, selection, settings, data_root, split=spec.split, protocol=protocol or task.default_protocol,
        limit_pairs=spec.limit_pairs, per_category=spec.per_category, pairs_file=spec.pairs_file,
        progress=progress, preset=spec.preset, options=spec.options, cache=cache,
    )
    result.details["config_hash"] = spec.config_hash()
    path = save_result(result, results_dir)
    if figures:
        from dfbench.plots import plot_matches, plot_per_category

        folder = Path(results_dir) / "figures"
        stem = path.stem
        result.details["figures"] = [
            str(plot_per_category(result.per_category, "pck@0.1_bbox", f"{result.row_label} — {result.protocol}",
                                  folder / f"{stem}-per-category.png")),
            str(plot_matches(predictions, folder / f"{stem}-matches.png")),
        ]
        path = save_result(result, results_dir)  # same run id: the record now names its figures
    return result, path


def load_suite(path: str | Path) -> list[RunSpec]:
    """Read a YAML suite: ``runs:`` a list of RunSpec fields; ``defaults:`` applied to each run."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DfbenchInputError(f"suite {path}: no such file")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DfbenchInputError(f"suite {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    runs = document.get("runs")
    if not isinstance(runs, list) or not runs:
        raise DfbenchInputError(f"suite {path}: needs a non-empty list under 'runs:'")
    defaults = document.get("defaults") or {}
    known = set(RunSpec.__dataclass_fields__)
    specs = []
    for number, run in enumerate(runs, start=1):
        merged = {**defaults, **run, "settings": {**defaults.get("settings", {}), **run.get("settings", {})},
                  "options": {**defaults.get("options", {}), **run.get("options", {})}}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise DfbenchInputError(
                f"suite {path}: run {number} has unknown field(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(known))}"
            )
        if "backbone" not in merged or "task" not in merged:
            raise DfbenchInputError(f"suite {path}: run {number} needs 'backbone' and 'task'")
        specs.append(RunSpec(**merged))
    return specs


def run_suite(path: str | Path, results_dir: str | Path = "results", force: bool = False, strict: bool = False,
              progress: bool = True, log=print) -> tuple[list[Result], list[str]]:
    """Run every pairing of a suite, skipping those already recorded unless ``force``.

    A run that fails on bad input (e.g. weights or data not found) is reported and the suite goes
    on; with ``strict`` the first failure stops it. Returns the results and the failure messages.
    """
    specs = load_suite(path)
    try:
        done = {record.details.get("config_hash") for record in load_results(results_dir)}
    except DfbenchInputError:
        done = set()
    results: list[Result] = []
    failures: list[str] = []
    backbones: dict[str, Any] = {}
    for number, spec in enumerate(specs, start=1):
        label = f"[{number}/{len(specs)}] {spec.backbone} × {spec.task} ({spec.preset or ', '.join(spec.selection)})"
        if not force and spec.config_hash() in done:
            log(f"{label}: already recorded, skipped (--force to rerun)")
            continue
        log(label)
        try:
            key = f"{spec.backbone}|{spec.weights}|{spec_dtype(spec)}"
            if key not in backbones:
                backbones[key] = create_spec_backbone(spec)
            result, record = run_one(spec, results_dir, progress=progress, backbone=backbones[key])
        except DfbenchInputError as error:
            if strict:
                raise
            failures.append(f"{label}: {error}")
            log(f"  failed: {error}")
            continue
        results.append(result)
        primary = result.details["leaderboard_metrics"][0]
        log(f"  {primary} = {result.metrics[primary]:.2f}  → {record}")
    return results, failures
