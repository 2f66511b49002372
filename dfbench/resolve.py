"""A run resolved once: what every command hands the tasks and the backbones.

``dfbench run``, ``suite``, ``extract``, ``activations``, ``sweep``, ``score`` and ``perf`` resolve what the user
gave (flags, a suite row, a sweep candidate) here and nowhere else:

* :func:`build_backbone` is the one way a backbone is made from user input (registry name, ``--weights``,
  device, dtype, backbone options, a fine-tuned UNet file);
* :func:`resolve_features` → :class:`ResolvedFeatures`: the backbone (built once), the preset looked up once,
  the selection made canonical once, the settings with every default filled in (resolution included) and
  the dtype read from the loaded backbone;
* :func:`resolve_run` → :class:`ResolvedRun`: those plus the task, its protocol with typed options, the split,
  the data root and the ``--limit``, and the run's one identity (:meth:`ResolvedRun.identity_hash`), which
  names the run folder, keys the leaderboard row and the gate, and is the suite's skip check.

A record written by a run is :meth:`ResolvedRun.record`, so a record's identity is its resolved run's by
construction (:meth:`dfbench.results.Result.identity` reads it back from records of any age).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfbench.backbones.base import DiffusionBackbone
from dfbench.backbones.protocol import Backbone, ConfiguredBackbone
from dfbench.environment import environment
from dfbench.errors import DfbenchInputError
from dfbench.home import dfbench_home
from dfbench.options import parse_options
from dfbench.presets import Preset
from dfbench.registry import BACKBONES, TASKS, create_backbone, get_preset, weightless_backbone
from dfbench.results import Result, now
from dfbench.settings import ExtractSettings, resolve_settings, without_auto_batch
from dfbench.tasks.base import Protocol, Task, TaskOutput

if TYPE_CHECKING:
    from dfbench.runner import RunSpec

DEFAULT_DTYPE = "float32"


def requested_dtype(preset: Preset | None, given: dict[str, Any]) -> str:
    """The compute dtype asked for: the given settings' (flags, a suite row), else the preset's, else float32."""
    return str(given.get("dtype") or (preset.settings.get("dtype") if preset else None) or DEFAULT_DTYPE)


def requested_text_encoders(preset: Preset | None, given: dict[str, Any]) -> str:
    """The text encoders asked for (settings.text_encoders): the given settings', else the preset's, else all."""
    return str(given.get("text_encoders") or (preset.settings.get("text_encoders") if preset else None) or "all")


def build_backbone(name: str, *, dtype: str = DEFAULT_DTYPE, weights: str | None = None, device: str | None = None,
                   options: dict[str, Any] | None = None, unet_weights: str | None = None,
                   weightless: bool = False, init: str | None = None, text_encoders: str = "all",
                   load_only: list[str] | None = None) -> Backbone:
    """The backbone registered as ``name`` with the user's overrides: the one function every command builds a
    backbone from user input with. ``weightless``: built on the meta device (names, shapes, options and the
    weights' source only; :func:`dfbench.registry.weightless_backbone`); ``init="random"``: seeded random weights
    from the bundled configs (``dfbench perf``: full-size models without downloads); ``load_only``: canonical
    activation names a pretrained DiT is loaded only as deep as (``--truncate``; other factories load in full)."""
    overrides: dict[str, Any] = {"options": dict(options)} if options else {}
    if load_only and not weightless and "load_only" in inspect.signature(BACKBONES.get(name)).parameters:
        overrides["load_only"] = list(load_only)
    if text_encoders != "all":       # the encoders left out are never loaded (a factory without them refuses it)
        overrides["text_encoders"] = text_encoders
    if init is not None:
        overrides["init"] = init
    if weights:
        overrides["weights"] = weights
    if unet_weights:
        overrides["unet_weights"] = unet_weights
    if weightless:
        return weightless_backbone(name, **overrides)
    if device:
        overrides["device"] = device
    return create_backbone(name, torch_dtype=dtype, **overrides)


@dataclass(frozen=True)
class ResolvedFeatures:
    """What to extract, resolved: the backbone, the canonical selection, the complete settings, the preset."""

    backbone: Backbone
    selection: list[str]
    settings: ExtractSettings
    preset: Preset | None = None

    @property
    def resolution(self) -> int:
        """The input size (always resolved: the backbone's default when none was given)."""
        assert self.settings.resolution is not None, "resolve_settings fills the resolution in"
        return self.settings.resolution

    @property
    def used_settings(self) -> dict[str, Any]:
        """The settings the backbone uses (all, for diffusion backbones), as records and cache keys hold them."""
        names = self.backbone.setting_names
        return {key: value for key, value in self.settings.value_dict().items() if key in names}


def resolve_features(backbone: str | Backbone, *, selection: list[str] | tuple[str, ...] = (),
                     preset: str | None = None, settings: dict[str, Any] | None = None, weights: str | None = None,
                     device: str | None = None, backbone_options: dict[str, Any] | None = None,
                     unet_weights: str | None = None, weightless: bool = False, init: str | None = None,
                     require_selection: bool = True, truncate: bool = False) -> ResolvedFeatures:
    """Resolve the feature side of a command once. ``backbone``: a registry name (built here by
    :func:`build_backbone`, with the preset's backbone options under the given ones and the requested dtype), or
    a backbone already built for the same request (a suite shares one across its rows). The settings are the
    backbone's defaults < the preset's < ``settings``; their dtype is the loaded backbone's. ``truncate``: load the
    denoiser only as deep as the selection reaches (:mod:`dfbench.backbones.truncation`)."""
    given, auto_batch = without_auto_batch(settings or {})     # auto: probed once the backbone is built
    found = get_preset(preset) if preset else None
    dtype = requested_dtype(found, given)
    text_encoders = requested_text_encoders(found, given)
    chosen = list(selection) or (list(found.selection) if found else [])
    if require_selection and not chosen:       # before any weights load
        raise DfbenchInputError("no activations selected: pass --select NAME… or --preset P")
    ExtractSettings.from_dict({**(found.settings if found else {}), **given})   # the values checked before, too
    if isinstance(backbone, str):
        options = {**(found.backbone_options if found else {}), **(backbone_options or {})}
        load_only = None
        if truncate and chosen:             # canonical names, from the weightless model (no weights read)
            load_only = build_backbone(backbone, weights=weights, options=options, weightless=True,
                                       text_encoders=text_encoders).canonical_selection(chosen)
        backbone = build_backbone(backbone, dtype=dtype, weights=weights, device=device, options=options,
                                  unet_weights=unet_weights, weightless=weightless, init=init,
                                  text_encoders=text_encoders, load_only=load_only)
    elif not weightless:
        loaded = str(getattr(backbone, "dtype", "")).removeprefix("torch.")
        if loaded and loaded != dtype:
            raise DfbenchInputError(f"backbone {backbone.name} holds {loaded} weights but the run asks for {dtype}")
    resolved = resolve_settings(backbone, found.settings if found else {}, {**given, "dtype": dtype})
    canonical = backbone.canonical_selection(chosen) if chosen else []
    if auto_batch and not weightless and canonical and isinstance(backbone, DiffusionBackbone):
        from dfbench.batch_size import auto_batch_size

        resolved = resolved.replace(batch_size=auto_batch_size(backbone, resolved, canonical))
    return ResolvedFeatures(backbone, canonical, resolved, found)


def resolve_data_root(task: Task, data_root: str | None) -> Path:
    """``mini`` (or nothing, for the demo) → the task's embedded mini set; else the task's
    :meth:`~dfbench.tasks.base.Task.data_folder` for it."""
    if data_root in (None, "", "mini"):
        root = task.mini_root()
        if root is None:
            raise DfbenchInputError(f"task {task.name}: pass --data-root DIR (it has no embedded mini set)")
        return root
    return task.data_folder(data_root)


def data_label(given: str | None, data_root: Path) -> str:
    """How a run's data enters its identity (``given``: the data root as the user gave it, ``data_root``: the
    folder it resolved to): the folder, or for an embedded mini set ``mini:<its folder under $DFBENCH_HOME>``
    (its version included), so the same mini set built elsewhere is the same data."""
    if given not in (None, "", "mini"):
        return str(data_root)
    try:
        return f"mini:{data_root.resolve().relative_to(dfbench_home().resolve())}"
    except ValueError:
        return f"mini:{data_root.name}"


def split_task(name: str) -> tuple[str, str | None]:
    """``spair/dift-nn`` → (``spair``, ``dift-nn``); ``spair`` → (``spair``, None)."""
    task, _, protocol = name.partition("/")
    return task, protocol or None


def option_details(protocol: Protocol, options: Any) -> dict[str, dict[str, Any]]:
    """A record's ``options`` (all, resolved) and ``options_changed`` (those off their defaults); the
    options a protocol lists in ``RUNTIME_OPTIONS`` (logging, checkpoint intervals: they cannot change the
    numbers) go to ``runtime_options`` instead, out of the run's identity. An option listed in ``ADDED_OPTIONS``
    (added to a protocol after runs were recorded, its default the earlier behaviour) joins ``options`` only off
    its default, so those runs keep their identity."""
    resolved, defaults = dataclasses.asdict(options), dataclasses.asdict(protocol.options())
    runtime = set(getattr(protocol.options, "RUNTIME_OPTIONS", ()))
    added = set(getattr(protocol.options, "ADDED_OPTIONS", ()))
    decisive = {key: value for key, value in resolved.items()
                if key not in runtime and not (key in added and value == defaults[key])}
    details = {"options": decisive, "options_changed": {k: v for k, v in decisive.items() if v != defaults[k]}}
    if runtime:
        details["runtime_options"] = {key: resolved[key] for key in sorted(runtime)}
    return details


@dataclass(frozen=True)
class ResolvedRun:
    """One run, resolved once: the task side (task, protocol, typed options, split, data, limit, seed) and,
    except when saved predictions are scored, the feature side (:class:`ResolvedFeatures`)."""

    task: Task
    protocol: Protocol
    options: Any
    split: str
    data_root: Path
    #: the data as it enters the identity (:func:`data_label`)
    data: str
    limit: int | None
    seed: int
    features: ResolvedFeatures | None = None
    #: the suite row's published values and their source (a paper table), kept with the record
    published: dict[str, float] = field(default_factory=dict)
    published_source: str = ""

    def extracted(self, what: str) -> ResolvedFeatures:
        """The feature side; a run that scores saved predictions has none (one line naming ``what`` was asked)."""
        if self.features is None:
            raise DfbenchInputError(f"{self.protocol_label}: this run scores saved predictions; it has no {what}")
        return self.features

    @property
    def backbone(self) -> Backbone:
        return self.extracted("backbone").backbone

    @property
    def selection(self) -> list[str]:
        return self.features.selection if self.features else []

    @property
    def settings(self) -> ExtractSettings:
        return self.extracted("settings").settings

    @property
    def resolution(self) -> int:
        """The input size of the run's features."""
        return self.extracted("resolution").resolution

    @property
    def protocol_label(self) -> str:
        """``task/protocol``, e.g. ``spair/dift-nn``."""
        return f"{self.task.name}/{self.protocol.name}"

    def record(self, output: TaskOutput, *, backbone_label: str | None = None, preset_label: str | None = None,
               run_id: str = "", extra: dict[str, Any] | None = None, stamped: bool = True) -> Result:
        """The run's record from the task's output (``backbone_label`` and ``preset_label`` stand in for a run
        with no backbone: scored saved predictions). ``stamped=False`` leaves out the environment and the time,
        which are no part of the identity (the environment runs git)."""
        features = self.features
        details: dict[str, Any] = {"split": self.split, "data_root": self.data, "data_path": str(self.data_root),
                                   "limit": self.limit, **option_details(self.protocol, self.options)}
        if features is not None:
            details["recipe_version"] = features.backbone.recipe_version
        variant = self.protocol.variant(self.options)
        if variant:
            details["variant"] = variant
        details["leaderboard_metrics"] = list(self.task.leaderboard_metrics)
        backbone = features.backbone if features else None
        if isinstance(backbone, ConfiguredBackbone) and backbone.options:
            details["backbone_options"] = dict(backbone.options)
            details["backbone_detail"] = backbone.describe()
        details.update(extra or {})
        details.update(output.details)
        if self.published:
            details["published"] = {key: float(value) for key, value in self.published.items()}
            details["published_source"] = self.published_source
        return Result(
            task=self.task.name, protocol=self.protocol_label, protocol_version=self.protocol.version,
            backbone=backbone.name if backbone else str(backbone_label), selection=list(self.selection),
            settings=features.used_settings if features else {}, metrics=output.metrics,
            per_category=output.per_category, timings=output.timings, details=details,
            preset=features.preset.name if features and features.preset else preset_label,
            weights=str(backbone.source) if backbone else "",
            environment=(environment(str(backbone.device)) if backbone else environment()) if stamped else {},
            created=now() if stamped else "",
            run_id=run_id, metric_specs={key: self.task.metric_spec(key).to_dict() for key in output.metrics},
        )

    def identity_hash(self) -> str:
        """The run's identity (:meth:`dfbench.results.Result.identity`): the same for the record it writes."""
        return self.record(TaskOutput(metrics={}), stamped=False).identity_hash


def resolve_task(task_name: str, options: dict[str, Any] | None, data_root: str | None, split: str | None,
                 limit: int | None, world_size: int = 1) -> tuple[Task, Protocol, Any, Path, str, str]:
    """The task side: (task, protocol, typed options, data folder, data label, split); ``world_size``: the
    processes of a torchrun launch (only protocols declared ``distributed`` take more than one)."""
    task_part, protocol_name = split_task(task_name)
    task = TASKS.get(task_part)()
    protocol = task.protocol(protocol_name)
    parsed = parse_options(protocol.options, options or {}, f"{task.name}/{protocol.name}")
    if world_size > 1 and not protocol.distributed:
        distributed = [f"{name}/{entry}" for name in TASKS.names()
                       for entry, spec in TASKS.get(name)().protocols.items() if spec.distributed]
        raise DfbenchInputError(f"{task.name}/{protocol.name} runs in one process; launch it without torchrun "
                                f"(protocols that train across GPUs: {', '.join(distributed)})")
    if limit is not None and limit < 1:
        raise DfbenchInputError(f"--limit {limit}: must be ≥ 1")
    root = resolve_data_root(task, data_root)
    resolved_split = protocol.split(parsed, split or task.default_split)
    return task, protocol, parsed, root, data_label(data_root, root), resolved_split


def resolve_run(spec: RunSpec, backbone: Backbone | None = None, *, device: str | None = None,
                weightless: bool = False, world_size: int = 1) -> ResolvedRun:
    """Resolve a run spec (flags, a suite row, a sweep candidate) once. ``backbone``: one already built for the
    spec (a suite's shared one); ``weightless``: build it on the meta device (the suite's skip check)."""
    task, protocol, options, root, label, split = resolve_task(spec.task, spec.options, spec.data_root,
                                                               spec.split, spec.limit, world_size)
    features = resolve_features(backbone if backbone is not None else spec.backbone, selection=spec.selection,
                                preset=spec.preset, settings=spec.settings, weights=spec.weights,
                                device=spec.device or device, backbone_options=spec.backbone_options,
                                weightless=weightless, truncate=spec.truncate)
    return ResolvedRun(task, protocol, options, split, root, label, spec.limit, features.settings.seed, features,
                       dict(spec.published), spec.source or "")


def resolve_scoring(task_name: str, data_root: str | None, split: str | None, options: dict[str, Any],
                    limit: int | None = None, seed: int = 0) -> ResolvedRun:
    """A run that scores saved predictions (no backbone): the task side only."""
    task, protocol, parsed, root, label, resolved_split = resolve_task(task_name, options, data_root, split, limit)
    return ResolvedRun(task, protocol, parsed, resolved_split, root, label, limit, seed)
