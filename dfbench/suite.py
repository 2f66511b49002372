"""Suites: a YAML file of runs (``defaults:`` + ``runs:``), checked whole before anything runs, each run
skipped when its run identity is already recorded (resolved with a weightless backbone: no weights load) or
when its data or weights are missing (one line saying how to get them), and the measured values checked
against a paper's published ones."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfbench.backbones.protocol import Backbone
from dfbench.data.manifest import dataset_for_path, load_manifest
from dfbench.errors import DfbenchInputError
from dfbench.options import parse_options
from dfbench.registry import BACKBONES, TASKS, get_preset
from dfbench.resolve import build_backbone, requested_dtype, requested_text_encoders, resolve_run, split_task
from dfbench.results import Result, latest_records, load_results
from dfbench.runner import RunSpec, run_one
from dfbench.settings import ExtractSettings, without_auto_batch

#: the keys a suite file may have at its top level
SUITE_KEYS = ("defaults", "runs")


def yaml_error_line(path: Path, error: Exception) -> str:
    """A YAML parse error as one line: the file, line and column, the problem, and a word on tabs (YAML
    indents with spaces only) when the offending line holds one."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return f"suite {path}: not valid YAML ({problem})"
    where = f"suite {path}:{mark.line + 1}:{mark.column + 1}"
    lines = path.read_text().splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    tab = "; that line holds a tab: YAML indents with spaces only" if "\t" in line else ""
    return f"{where}: not valid YAML ({problem}){tab}"


def load_suite(path: str | Path) -> list[RunSpec]:
    """Read a YAML suite: ``runs:`` a list of RunSpec fields; ``defaults:`` applied to each run. Every run
    names its data (``data_root: mini`` for a task's embedded mini set, else a folder); an unknown
    top-level key, a run without ``data_root`` or a YAML error is one line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DfbenchInputError(f"suite {path}: no such file")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DfbenchInputError(yaml_error_line(path, error)) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise DfbenchInputError(f"suite {path}: expected a mapping with {' and '.join(SUITE_KEYS)}, "
                                f"found a {type(document).__name__}")
    unknown = sorted(str(key) for key in document if key not in SUITE_KEYS)
    if unknown:
        import difflib

        guesses = [f"{key} → {close[0]}?" for key in unknown
                   if (close := difflib.get_close_matches(key, SUITE_KEYS, 1))]
        raise DfbenchInputError(f"suite {path}: unknown top-level key(s) {', '.join(unknown)}"
                                + (f" ({'; '.join(guesses)})" if guesses else "")
                                + f"; a suite has {' and '.join(SUITE_KEYS)} only")
    runs = document.get("runs")
    if not isinstance(runs, list) or not runs:
        raise DfbenchInputError(f"suite {path}: needs a non-empty list under 'runs:'")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise DfbenchInputError(f"suite {path}: defaults must be a mapping of run fields (defaults: {{key: value}})")
    specs = []
    for number, run in enumerate(runs, start=1):
        if not isinstance(run, dict):
            raise DfbenchInputError(f"suite {path}: run {number} must be a mapping of run fields, "
                                    f"found {run!r}")
        merged = {**defaults, **run, "settings": {**defaults.get("settings", {}), **run.get("settings", {})},
                  "options": {**defaults.get("options", {}), **run.get("options", {})}}
        if merged.get("data_root") in (None, ""):
            raise DfbenchInputError(f"suite {path}: run {number} names no data; give data_root: mini (the task's "
                                    "embedded mini set) or a folder, in the run or under defaults:")
        if isinstance(merged.get("data_root"), str):
            merged["data_root"] = expand_data_root(merged["data_root"])
        specs.append(RunSpec.from_dict(merged, f"suite {path}: run {number}"))
    return specs


def expand_data_root(data_root: str) -> str:
    """A suite's ``data_root`` with ``${DFBENCH_DATA}`` replaced by ``$DFBENCH_DATA`` (default ``data``)."""
    return data_root.replace("${DFBENCH_DATA}", os.environ.get("DFBENCH_DATA", "data"))


def spec_problems(spec: RunSpec, shapes_of: dict[str, Any] | None = None) -> list[str]:
    """Everything wrong with a spec that can be found without loading weights: backbone, task,
    protocol, options, preset, settings, activation names (from the weightless catalog), data root.
    ``shapes_of`` caches the weightless backbones across the specs of a suite (:func:`weightless_key`)."""
    problems: list[str] = []

    def check(step: Any) -> Any:
        try:
            return step()
        except DfbenchInputError as error:
            problems.append(str(error))
            return None

    task_name, protocol_name = split_task(spec.task)
    task = check(lambda: TASKS.get(task_name)())
    protocol = check(lambda: task.protocol(protocol_name)) if task else None
    if protocol:
        check(lambda: parse_options(protocol.options, spec.options, f"{task.name}/{protocol.name}"))
    preset = check(lambda: get_preset(spec.preset)) if spec.preset else None
    check(lambda: ExtractSettings.from_dict({**(preset.settings if preset else {}),
                                             **without_auto_batch(spec.settings)[0]}))
    if spec.limit is not None and spec.limit < 1:
        problems.append(f"limit {spec.limit}: must be ≥ 1")
    if check(lambda: BACKBONES.get(spec.backbone)) is not None:
        selection = spec.selection or (list(preset.selection) if preset else [])
        if not selection:
            problems.append("no activations selected: give selection or preset")
        else:
            shapes_of = {} if shapes_of is None else shapes_of
            key = weightless_key(spec)
            if key not in shapes_of:
                try:
                    shapes_of[key] = build_backbone(spec.backbone, weights=spec.weights,
                                                    options=spec_backbone_options(spec), weightless=True)
                except DfbenchInputError as error:
                    if spec_backbone_options(spec):     # the options are wrong (else: no weightless form, as below)
                        problems.append(str(error))
                    shapes_of[key] = None
                except TypeError:
                    shapes_of[key] = None  # no weightless form: names are checked when it loads
            shapes = shapes_of[key]
            if shapes is not None:
                check(lambda: shapes.canonical_selection(selection))
    if task:
        unknown = sorted(set(spec.published) - set(task.metrics))
        if unknown:
            problems.append(f"published {', '.join(unknown)}: not a metric of {task.name} "
                            f"(its metrics: {', '.join(task.metrics)})")
    return problems


def spec_backbone_options(spec: RunSpec) -> dict[str, Any]:
    """The backbone options of a spec: its preset's, overridden key by key by its own."""
    preset_options = get_preset(spec.preset).backbone_options if spec.preset else {}
    return {**preset_options, **spec.backbone_options}


def weightless_key(spec: RunSpec) -> str:
    """What decides a spec's weightless backbone: its name, weights and backbone options."""
    return f"{spec.backbone}|{spec.weights}|{json.dumps(spec_backbone_options(spec), sort_keys=True, default=str)}"


def backbone_key(spec: RunSpec) -> str:
    """What decides a spec's loaded backbone (rows with the same key share one): its weightless key, the
    dtype, the device and the text encoders loaded."""
    preset = get_preset(spec.preset) if spec.preset else None
    return (f"{weightless_key(spec)}|{requested_dtype(preset, spec.settings)}|{spec.device}|"
            f"{requested_text_encoders(preset, spec.settings)}")


def run_identity(spec: RunSpec, weightless: Backbone | None) -> str | None:
    """The run identity of a spec, resolved with its weightless backbone (no weights load); None when it
    cannot be resolved without running (no weightless form, its data not there yet)."""
    if weightless is None:
        return None
    try:
        return resolve_run(spec, weightless, weightless=True).identity_hash()
    except DfbenchInputError:
        return None


def missing_data(spec: RunSpec) -> str | None:
    """What is missing to run ``spec`` (its dataset), with the command or page that gets it; else None."""
    if spec.data_root in (None, "", "mini") or spec.data_root.startswith("hf:") or Path(spec.data_root).exists():
        return None
    task = TASKS.get(split_task(spec.task)[0])()
    hint = f"; get it: {task.download_hint}" if task.download_hint else ""
    dataset = dataset_for_path(load_manifest(), spec.data_root)
    if dataset is not None:
        hint = f"; get it: dfbench data get {dataset.name}"
    data = os.environ.get("DFBENCH_DATA", "data")
    return (f"data_root {spec.data_root}: not found{hint}; put it there, or set DFBENCH_DATA (now {data}) to the "
            "folder that holds the suite's ${DFBENCH_DATA}/… data")


def recorded_runs(results_dir: str | Path) -> dict[str, Result]:
    """The latest record of each run identity already in ``results_dir`` (none yet: empty)."""
    try:
        records = load_results(results_dir)
    except DfbenchInputError:
        return {}
    return latest_records(records)


@dataclass
class SuiteOutcome:
    """What a suite did: the new records, the runs skipped (data or weights missing), the failures,
    and the specs with their record (``None`` when the run did not happen)."""

    results: list[Result] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    recorded: list[tuple[RunSpec, Result | None]] = field(default_factory=list)


def run_suite(path: str | Path, results_dir: str | Path = "results", force: bool = False, strict: bool = False,
              progress: bool = True, log=print) -> SuiteOutcome:
    """Run every pairing of a suite, skipping those already recorded unless ``force``.

    A run whose dataset or weights are missing is skipped with one line saying what is missing and
    how to get it; a run that fails on other bad input is reported; the suite goes on. With
    ``strict`` the first skip or failure stops it (``DfbenchInputError``)."""
    specs = load_suite(path)
    shapes_of: dict[str, Any] = {}
    problems = [f"run {number}: {problem}" for number, spec in enumerate(specs, start=1)
                for problem in spec_problems(spec, shapes_of)]
    if problems:
        raise DfbenchInputError(f"suite {path}: {len(problems)} problem(s), nothing was run:\n  "
                                + "\n  ".join(problems))
    by_identity = recorded_runs(results_dir)
    outcome = SuiteOutcome()
    backbones: dict[str, Any] = {}
    for number, spec in enumerate(specs, start=1):
        label = f"[{number}/{len(specs)}] {spec.backbone} × {spec.task} ({spec.preset or ', '.join(spec.selection)})"
        identity = None if force or not by_identity else run_identity(spec, shapes_of.get(weightless_key(spec)))
        if identity is not None and identity in by_identity:
            log(f"{label}: already recorded, skipped (--force to rerun)")
            outcome.recorded.append((spec, by_identity[identity]))
            continue
        missing = missing_data(spec)
        key = backbone_key(spec)
        if missing is None and key not in backbones:
            try:
                preset = get_preset(spec.preset) if spec.preset else None
                backbones[key] = build_backbone(
                    spec.backbone, dtype=requested_dtype(preset, spec.settings), weights=spec.weights,
                    device=spec.device, options=spec_backbone_options(spec),
                    text_encoders=requested_text_encoders(preset, spec.settings))
            except DfbenchInputError as error:       # weights not found: the message says how to get them
                missing = str(error)
        if missing is not None:
            log(f"{label}: skipped — {missing}")
            if strict:
                raise DfbenchInputError(f"{label}: skipped (--strict) — {missing}")
            outcome.skipped.append(f"{label}: {missing}")
            outcome.recorded.append((spec, None))
            continue
        log(label)
        try:
            result, record = run_one(spec, results_dir, progress=progress, backbone=backbones[key])
        except DfbenchInputError as error:
            if strict:
                raise
            outcome.failures.append(f"{label}: {error}")
            outcome.recorded.append((spec, None))
            log(f"  failed: {error}")
            continue
        outcome.results.append(result)
        outcome.recorded.append((spec, result))
        primary = result.details["leaderboard_metrics"][0]
        log(f"  {primary} = {result.metrics[primary]:.2f}  → {record}")
    return outcome


def published_check(outcome: SuiteOutcome, tolerance: float) -> tuple[list[list[Any]], bool]:
    """Rows [run, metric, published, measured, difference, status] for every published value of the
    suite's runs, and whether each measured value is within ``tolerance`` of its published one
    (runs that did not happen are listed as skipped and do not fail the check)."""
    rows, passed = [], True
    for spec, record in outcome.recorded:
        label = f"{spec.backbone} × {spec.task} ({spec.preset or ', '.join(spec.selection)})"
        for metric, published in spec.published.items():
            measured = record.metrics.get(metric) if record else None
            if measured is None:
                rows.append([label, metric, published, None, None, "skipped"])
                continue
            difference = measured - published
            status = "ok" if abs(difference) <= tolerance else "MISSES"
            passed &= status == "ok"
            rows.append([label, metric, published, measured, difference, status])
    return rows, passed
