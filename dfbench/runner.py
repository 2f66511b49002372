"""Running one (backbone, task, selection, settings) pairing and recording it.

:class:`RunSpec` is what a user gives (flags, a suite row, a sweep candidate); :func:`run_one` checks where the
run will write, resolves the spec once (:func:`dfbench.resolve.resolve_run`: backbone, canonical selection,
complete settings, protocol and typed options, data, the run identity), makes the run's folder
``results/runs/<run id>/`` named by that identity, hands the task a :class:`~dfbench.tasks.base.RunContext` and the
resolved run, and writes the record (:meth:`~dfbench.resolve.ResolvedRun.record`), the task's figures and, if
asked, its saved predictions. The runner names no task, protocol or model.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfbench.backbones.protocol import Backbone
from dfbench.distributed import Ranks
from dfbench.errors import DfbenchInputError
from dfbench.migrations import upgrade_suite_row
from dfbench.resolve import ResolvedRun, resolve_run, resolve_scoring
from dfbench.results import RECORD_FILE, Result, now, run_id, save_result
from dfbench.tasks.base import RunContext


@dataclass
class RunSpec:
    """One pairing to run: everything that decides its result, plus where to cache and save."""

    backbone: str
    task: str
    selection: list[str] = field(default_factory=list)
    preset: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    split: str | None = None
    limit: int | None = None
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    save_predictions: bool | str = False
    device: str | None = None
    #: load a DiT's denoiser only as deep as the selection reaches (same features; dfbench/backbones/truncation.py)
    truncate: bool = False
    #: a paper-table row: the published values of some metrics, and where they were published
    published: dict[str, float] = field(default_factory=dict)
    source: str | None = None
    #: options for the backbone's factory, over the preset's (a fusion's ``weight.<source>``, ``pca.<source>``,
    #: ``resolution.<source>``, ``renormalize``, ``upsample``)
    backbone_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> RunSpec:
        """A spec from a suite entry; version-1 fields (``limit_pairs``, ``per_category``,
        ``pairs_file``) are read as ``limit`` and protocol options."""
        values = dict(values)
        options = values.pop("options", None) or {}
        if not isinstance(options, dict):
            raise DfbenchInputError(f"{where}: options={options!r} must be a mapping (options: {{key: value}})")
        options = dict(options)
        upgrade_suite_row(values, options)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DfbenchInputError(f"{where} has unknown field(s) {', '.join(unknown)}; "
                                    f"valid: {', '.join(sorted(known))}")
        if "backbone" not in values or "task" not in values:
            raise DfbenchInputError(f"{where} needs 'backbone' and 'task'")
        for key, kinds in SPEC_TYPES.items():
            value = values.get(key)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
                expected = " or ".join(kind.__name__ for kind in kinds)
                raise DfbenchInputError(f"{where}: {key}={value!r} must be of type {expected}"
                                        + (" (a YAML list: [up_blocks.1])" if key == "selection" else ""))
        if not all(isinstance(name, str) for name in values.get("selection") or []):
            raise DfbenchInputError(f"{where}: selection must be a list of activation names")
        for metric, value in (values.get("published") or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DfbenchInputError(f"{where}: published {metric}={value!r} must be a number")
        return cls(**values, options=options)


#: types of the RunSpec fields a suite may give
SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "backbone": (str,), "task": (str,), "selection": (list,), "preset": (str,), "settings": (dict,),
    "data_root": (str,), "split": (str,), "limit": (int,), "weights": (str,), "options": (dict,),
    "cache_dir": (str,), "save_predictions": (bool, str), "device": (str,), "published": (dict,), "source": (str,),
    "backbone_options": (dict,),
}


def check_writable_folder(folder: str | Path, flag: str, given: str | Path | None = None) -> None:
    """``folder`` can be made and written: every existing part of the path is a folder, and the nearest
    existing one is writable (``flag`` and ``given``, default ``folder``, name the option in the one-line
    error). Nothing is created."""
    path = Path(folder)
    folder = folder if given is None else given
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                raise DfbenchInputError(f"{flag} {folder}: {part} is a file, not a folder; choose another {flag}")
            if not os.access(part, os.W_OK | os.X_OK):
                raise DfbenchInputError(f"{flag} {folder}: {part} is not writable; choose another {flag}")
            return


def check_results_folder(results_dir: str | Path) -> None:
    """``results_dir/runs`` can be made and written (see :func:`check_writable_folder`)."""
    check_writable_folder(Path(results_dir) / "runs", "--results", results_dir)


def new_run_folder(results_dir: str | Path, protocol: str, backbone: str, digest: str) -> tuple[str, Path]:
    """The run's folder ``<results_dir>/runs/<run id>/``: an unfinished one of the same spec (no
    record, e.g. a killed training: the task resumes from what it left there), else a fresh one."""
    runs = Path(results_dir) / "runs"   # checked beforehand by check_results_folder
    if runs.is_dir():
        unfinished = sorted(folder for folder in runs.glob(f"*-{digest}")
                            if folder.is_dir() and not (folder / RECORD_FILE).exists())
        if unfinished:
            return unfinished[-1].name, unfinished[-1]
    base = run_id(now(), protocol, backbone, digest)
    for attempt in range(100):
        identifier = base if attempt == 0 else f"{base}-{attempt}"
        folder = runs / identifier
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return identifier, folder
        except FileExistsError:
            continue
        except OSError as error:
            raise DfbenchInputError(f"results folder {runs}: cannot create a run folder ({error.strerror})") from None
    raise DfbenchInputError(f"results folder {runs}: too many runs named {base}")


def feature_cache(cache_dir: str | None) -> Any:
    """The feature cache a run reads and writes (``--cache-dir``, else ``$DFBENCH_CACHE``), or None; made (or
    refused) before any weights load."""
    if not (cache_dir or os.environ.get("DFBENCH_CACHE")):
        return None
    from dfbench.cache import FeatureCache  # safetensors and the cache's hashing: only when a cache is used

    return FeatureCache(cache_dir)


def run_one(spec: RunSpec, results_dir: str | Path = "results", progress: bool = True, figures: bool = True,
            backbone: Backbone | None = None, ranks: Ranks | None = None) -> tuple[Result, Path]:
    """Run ``spec``, save its record, figures and (if asked) predictions; returns (result, record path).

    Under torchrun (``ranks``: :class:`dfbench.distributed.Ranks` with world size > 1; only protocols
    declared ``distributed``) every rank runs the task in the run folder rank 0 made; rank 0 alone
    writes the record, figures and predictions."""
    ranks = ranks or Ranks()
    check_results_folder(results_dir)  # before the weights load and the extraction, not after
    if isinstance(spec.save_predictions, str):
        check_writable_folder(spec.save_predictions, "--save-predictions")
    cache = feature_cache(spec.cache_dir)
    run = resolve_run(spec, backbone, device=ranks.device, world_size=ranks.world_size)
    return run_resolved(run, spec, results_dir, cache, progress, figures, ranks)


def run_resolved(run: ResolvedRun, spec: RunSpec, results_dir: str | Path, cache: Any, progress: bool = True,
                 figures: bool = True, ranks: Ranks | None = None) -> tuple[Result, Path]:
    """:func:`run_one` from its resolved run on: the run folder, the task, the record, the predictions and figures
    (the output folders already checked, ``cache`` made)."""
    ranks = ranks or Ranks()
    made = None
    if ranks.rank == 0:
        made = new_run_folder(results_dir, run.protocol_label, run.backbone.name, run.identity_hash())
    identifier, folder = ranks.broadcast(made)
    context = RunContext(folder=folder, cache=cache, progress=progress, ranks=ranks)
    try:
        output = run.task.run(context, run)
    except BaseException:
        if ranks.rank == 0 and not any(folder.iterdir()):  # nothing (checkpoints, logs) worth keeping for a resume
            folder.rmdir()
        raise
    result = run.record(output, run_id=identifier)
    if ranks.rank != 0:
        return result, folder / RECORD_FILE
    if spec.save_predictions:
        target = folder / "predictions" if spec.save_predictions is True else Path(spec.save_predictions)
        run.task.save_predictions(output, target)
        result.details["predictions"] = str(target)
    if figures:
        title = f"{result.row_label} — {result.protocol}"
        result.details["figures"] = [str(path) for path in run.task.figures(output, title, folder / "figures")]
    return result, save_result(result, results_dir)


def score_predictions_folder(task_name: str, data_root: str | None, split: str | None, predictions: str | Path,
                             options: dict[str, Any], limit: int | None = None, seed: int = 0,
                             results_dir: str | Path | None = None, name: str | None = None
                             ) -> tuple[Result, Path | None]:
    """Score saved predictions with the task's own scoring (no backbone); with ``results_dir``, record
    the result as a run whose leaderboard row is ``name``. Returns the result and the record path."""
    run = resolve_scoring(task_name, data_root, split, options, limit, seed)
    folder = Path(predictions)
    output = run.task.score(run, folder)
    result = run.record(output, backbone_label=name or folder.resolve().name, preset_label="saved predictions",
                        extra={"scored_from": str(folder)})
    if results_dir is None:
        return result, None
    return result, save_result(result, results_dir)
