"""Running one (backbone, task, selection, settings) pairing and recording it; suites of them.

The runner knows tasks only through the task contract (:mod:`dfbench.tasks.base`): it resolves
the protocol and its options, the data root (``mini`` → the task's mini set) and the settings, makes
the run's folder ``results/runs/<run id>/`` first, hands the task a :class:`RunContext`, and writes
the record (with the task's metric specs), the task's figures and, if asked, its saved predictions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfbench.backbones.protocol import ConfiguredBackbone
from dfbench.environment import environment
from dfbench.errors import DfbenchInputError
from dfbench.results import RECORD_FILE, Result, now, run_id, save_result

#: suite / RunSpec fields of version-1 suites, now SPair protocol options (``limit_pairs`` → ``limit``)
LEGACY_OPTION_FIELDS = ("per_category", "pairs_file")


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
    #: a paper-table row: the published values of some metrics, and where they were published
    published: dict[str, float] = field(default_factory=dict)
    source: str | None = None
    #: options for the backbone's factory, over the preset's (a fusion's ``weight.<source>``, ``pca.<source>``,
    #: ``resolution.<source>``, ``renormalize``, ``upsample``)
    backbone_options: dict[str, Any] = field(default_factory=dict)

    def config_hash(self) -> str:
        """A short hash of what decides the result (not the cache folder, where predictions go, the device,
        the published values): the same hash means the same experiment, used to skip runs already recorded."""
        decisive = {key: value for key, value in dataclasses.asdict(self).items()
                    if key not in ("cache_dir", "save_predictions", "device", "published", "source")
                    and not (key == "backbone_options" and not value)}   # absent before backbone options existed
        return hashlib.sha1(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> RunSpec:
        """A spec from a suite entry; version-1 fields (``limit_pairs``, ``per_category``,
        ``pairs_file``) are read as ``limit`` and protocol options."""
        values = dict(values)
        options = values.pop("options", None) or {}
        if not isinstance(options, dict):
            raise DfbenchInputError(f"{where}: options={options!r} must be a mapping (options: {{key: value}})")
        options = dict(options)
        if "limit_pairs" in values:
            values["limit"] = values.pop("limit_pairs")
        for key in LEGACY_OPTION_FIELDS:
            if key in values:
                value = values.pop(key)
                if value is not None:
                    options[key] = value
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


def split_task(name: str) -> tuple[str, str | None]:
    """``spair/dift-nn`` → (``spair``, ``dift-nn``); ``spair`` → (``spair``, None)."""
    task, _, protocol = name.partition("/")
    return task, protocol or None


def data_label(given: str | None, data_root: Path) -> str:
    """How a run's data enters its identity (``given``: the data root as the user gave it, ``data_root``: the
    folder it resolved to): the folder, or for an embedded mini set ``mini:<its folder under $DFBENCH_HOME>``
    (its version included), so the same mini set built elsewhere is the same data."""
    if given not in (None, "", "mini"):
        return str(data_root)
    from dfbench.home import dfbench_home

    try:
        return f"mini:{data_root.resolve().relative_to(dfbench_home().resolve())}"
    except ValueError:
        return f"mini:{data_root.name}"


def resolve_data_root(task: Any, data_root: str | None) -> Path:
    """``mini`` (or nothing, for the demo) → the task's embedded mini set; else the task's
    :meth:`~dfbench.tasks.base.Task.data_folder` for it."""
    if data_root in (None, "", "mini"):
        root = task.mini_root()
        if root is None:
            raise DfbenchInputError(f"task {task.name}: pass --data-root DIR (it has no embedded mini set)")
        return root
    return task.data_folder(data_root)


def spec_dtype(spec: RunSpec) -> str:
    """The compute dtype a spec asks for (its settings, else its preset's, else float32)."""
    from dfbench.registry import get_preset

    preset_settings = get_preset(spec.preset).settings if spec.preset else {}
    return spec.settings.get("dtype") or preset_settings.get("dtype") or "float32"


def spec_backbone_options(spec: RunSpec) -> dict[str, Any]:
    """The backbone options of a spec: its preset's, overridden key by key by its own."""
    from dfbench.registry import get_preset

    preset_options = get_preset(spec.preset).backbone_options if spec.preset else {}
    return {**preset_options, **spec.backbone_options}


def create_spec_backbone(spec: RunSpec, init: str | None = None) -> Any:
    """The backbone a spec names, with its weights override, backbone options and compute dtype
    (``init="meta"``: weightless, to check names)."""
    from dfbench.registry import create_backbone

    backbone_options = spec_backbone_options(spec)
    options: dict[str, Any] = {"options": backbone_options} if backbone_options else {}
    if init is not None:
        return create_backbone(spec.backbone, init=init, **options)
    if spec.weights:
        options["weights"] = spec.weights
    if spec.device:
        options["device"] = spec.device
    return create_backbone(spec.backbone, torch_dtype=spec_dtype(spec), **options)


def option_details(protocol: Any, options: Any) -> dict[str, dict[str, Any]]:
    """A record's ``options`` (all, resolved) and ``options_changed`` (those off their defaults); the
    options a protocol lists in ``RUNTIME_OPTIONS`` (logging, checkpoint intervals: they cannot change the
    numbers) go to ``runtime_options`` instead, out of the run's identity."""
    resolved, defaults = dataclasses.asdict(options), dataclasses.asdict(protocol.options())
    runtime = set(getattr(protocol.options, "RUNTIME_OPTIONS", ()))
    decisive = {key: value for key, value in resolved.items() if key not in runtime}
    details = {"options": decisive, "options_changed": {k: v for k, v in decisive.items() if v != defaults[k]}}
    if runtime:
        details["runtime_options"] = {key: resolved[key] for key in sorted(runtime)}
    return details


def used_settings(backbone: Any, settings: Any) -> dict[str, Any]:
    """The settings a backbone uses (all, for diffusion backbones), as recorded in its runs."""
    return {key: value for key, value in settings.value_dict().items() if key in backbone.setting_names}


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


def run_one(spec: RunSpec, results_dir: str | Path = "results", progress: bool = True, figures: bool = True,
            backbone: Any = None, ranks: Any = None) -> tuple[Result, Path]:
    """Run ``spec``, save its record, figures and (if asked) predictions; returns (result, record path).

    Under torchrun (``ranks``: :class:`dfbench.distributed.Ranks` with world size > 1; only protocols
    declared ``distributed``) every rank runs the task in the run folder rank 0 made; rank 0 alone
    writes the record, figures and predictions."""
    from dfbench.distributed import Ranks
    from dfbench.options import parse_options
    from dfbench.registry import TASKS, get_preset
    from dfbench.settings import resolve_settings
    from dfbench.tasks.base import RunContext

    task_name, protocol_name = split_task(spec.task)
    task = TASKS.get(task_name)()
    protocol = task.protocol(protocol_name)
    options = parse_options(protocol.options, spec.options, f"{task.name}/{protocol.name}")
    ranks = ranks or Ranks()
    if ranks.world_size > 1 and not protocol.distributed:
        raise DfbenchInputError(f"{task.name}/{protocol.name} runs in one process; launch it without torchrun "
                                "(protocols that train across GPUs: ade20k/gdf-uper, cityscapes/gdf-uper)")
    if spec.limit is not None and spec.limit < 1:
        raise DfbenchInputError(f"--limit {spec.limit}: must be ≥ 1")
    preset = get_preset(spec.preset) if spec.preset else None
    selection = list(preset.selection) if preset and not spec.selection else list(spec.selection)
    if not selection:
        raise DfbenchInputError("no activations selected: pass --select NAME… or --preset P")
    data_root = resolve_data_root(task, spec.data_root)
    check_results_folder(results_dir)  # before the weights load and the extraction, not after
    if isinstance(spec.save_predictions, str):
        check_writable_folder(spec.save_predictions, "--save-predictions")
    cache = None
    if spec.cache_dir or os.environ.get("DFBENCH_CACHE"):     # made (or refused) before any weights load
        from dfbench.cache import FeatureCache

        cache = FeatureCache(spec.cache_dir)
    if backbone is None:
        backbone = create_spec_backbone(dataclasses.replace(spec, device=spec.device or ranks.device))
    settings = resolve_settings(backbone, preset.settings if preset else {}, spec.settings)
    made = None
    if ranks.rank == 0:
        made = new_run_folder(results_dir, f"{task.name}/{protocol.name}", backbone.name, spec.config_hash()[:8])
    identifier, folder = ranks.broadcast(made)
    context = RunContext(folder=folder, cache=cache, seed=settings.seed, device=str(backbone.device),
                         limit=spec.limit, progress=progress, ranks=ranks)
    try:
        output = task.run(context, backbone, selection, settings, data_root, spec.split or task.default_split,
                          protocol.name, options)
    except BaseException:
        if ranks.rank == 0 and not any(folder.iterdir()):  # nothing (checkpoints, logs) worth keeping for a resume
            folder.rmdir()
        raise
    details = {"split": output.split or spec.split or task.default_split,
               "data_root": data_label(spec.data_root, data_root),
               "data_path": str(data_root),
               "limit": spec.limit,
               **option_details(protocol, options), "recipe_version": backbone.recipe_version,
               "config_hash": spec.config_hash(), "leaderboard_metrics": list(task.leaderboard_metrics),
               **output.details}
    if isinstance(backbone, ConfiguredBackbone) and backbone.options:
        details["backbone_options"] = dict(backbone.options)
        details["backbone_detail"] = backbone.describe()
    if spec.published:
        details["published"] = {key: float(value) for key, value in spec.published.items()}
        details["published_source"] = spec.source or ""
    result = Result(
        task=task.name, protocol=f"{task.name}/{protocol.name}", protocol_version=protocol.version,
        backbone=backbone.name, selection=output.selection, settings=used_settings(backbone, settings),
        metrics=output.metrics,
        per_category=output.per_category, timings=output.timings, details=details, preset=spec.preset,
        weights=str(getattr(backbone, "source", "")), environment=environment(str(backbone.device)),
        created=now(), run_id=identifier,
        metric_specs={key: task.metric_spec(key).to_dict() for key in output.metrics},
    )
    if ranks.rank != 0:
        return result, folder / RECORD_FILE
    if spec.save_predictions:
        target = folder / "predictions" if spec.save_predictions is True else Path(spec.save_predictions)
        task.save_predictions(output, target)
        result.details["predictions"] = str(target)
    if figures:
        title = f"{result.row_label} — {result.protocol}"
        result.details["figures"] = [str(path) for path in task.figures(output, title, folder / "figures")]
    return result, save_result(result, results_dir)


def score_predictions_folder(task_name: str, data_root: str | None, split: str | None, predictions: str | Path,
                             options: dict[str, Any], limit: int | None = None, seed: int = 0,
                             results_dir: str | Path | None = None, name: str | None = None
                             ) -> tuple[Result, Path | None]:
    """Score saved predictions with the task's own scoring (no backbone); with ``results_dir``, record
    the result as a run whose leaderboard row is ``name``. Returns the result and the record path."""
    from dfbench.options import parse_options
    from dfbench.registry import TASKS

    task_part, protocol_name = split_task(task_name)
    task = TASKS.get(task_part)()
    protocol = task.protocol(protocol_name)
    parsed = parse_options(protocol.options, options, f"{task.name}/{protocol.name}")
    root = resolve_data_root(task, data_root)
    folder = Path(predictions)
    split = split or task.default_split
    output = task.score(root, split, protocol.name, parsed, folder, limit, seed)
    label = name or folder.resolve().name
    result = Result(
        task=task.name, protocol=f"{task.name}/{protocol.name}", protocol_version=protocol.version,
        backbone=label, selection=[], settings={}, metrics=output.metrics, per_category=output.per_category,
        details={"split": output.split or split, "data_root": data_label(data_root, root), "limit": limit,
                 **option_details(protocol, parsed), "scored_from": str(folder),
                 "leaderboard_metrics": list(task.leaderboard_metrics)},
        preset="saved predictions", environment=environment(), created=now(),
        metric_specs={key: task.metric_spec(key).to_dict() for key in output.metrics},
    )
    if results_dir is None:
        return result, None
    return result, save_result(result, results_dir)
