"""Fusion of backbones: Stable Diffusion ⊕ DINOv2 descriptors (Zhang et al., NeurIPS 2023, "A Tale of
Two Features"; CleanDIFT's fused SPair rows), for any registered backbones.

A fusion is named by its sources joined with ``+`` (``sd15+dinov2-base``, ``cleandift-sd15+dinov2-base``;
each source at most once). Every source runs on the same images at its own input size; its
activations are addressed ``<source>:<name>`` (``sd15:up_blocks.1.attentions.1``, ``dinov2-base:blocks.11``;
the source may be given by its position, ``1:up_blocks.1.attentions.1``) and returned by
:meth:`FusionBackbone.extract` as they are, so the feature cache holds each source's activations as
separate entries and a new weight, PCA size or normalisation costs no extraction.

The descriptor (:meth:`FusionBackbone.combine`, per image; :meth:`FusionBackbone.combine_pair`, per
image pair when a source has a pair-fitted PCA) is built in this order:

1. ``pca.<source>=D``: every activation of that source is projected onto the top D principal axes of
   the pair's tokens — both images' tokens together, centred by their joint mean (Tale's ``co_pca``,
   ``utils/utils_correspondence.py:358``; an exact SVD where Tale calls the randomised
   ``torch.pca_lowrank``); D larger than the tokens or channels is clamped;
2. every activation is resized bilinearly to the common grid, the largest map of the fusion
   (``upsample=progressive``: through every finer grid of its source in turn, as Tale brings s5 to s4's
   grid and then both to s3's; ``direct``: in one step, as CleanDIFT's ``pck_train.py``);
3. a source's activations are concatenated in selection order, L2-normalised per location over those
   channels together, and multiplied by ``weight.<source>``;
4. the sources are concatenated in the order of the name; ``renormalize=true`` L2-normalises the result
   per location (CleanDIFT's ``normalize_feats``).

Options (``backbone_options`` in a suite or preset, ``--backbone-option KEY=VALUE``):
``resolution.<source>`` (input size; default the source's own), ``timestep.<source>`` (that source's diffusion
timestep, where sources reach the same nominal t through different schedulers — GDF's amalgamation runs SDXL at
t=50 and SD1.5 at t=51; default the shared setting), ``weight.<source>`` (default 1),
``pca.<source>`` (0 = none, the default), ``renormalize`` (default false), ``upsample``
(``direct``, the default, or ``progressive``); ``<source>`` is a source's name or its position (1, 2, …).
The extraction settings are shared: each source uses the fields it knows (a ViT ignores the timestep
and the prompt); the input size is per source, so ``settings.resolution`` of a fusion is its reference
size (that of its last source), used only to place the image's content box, and may not be set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dfbench.activations import ActivationInfo
from dfbench.errors import DfbenchInputError, UnknownNameError
from dfbench.options import convert_option
from dfbench.registry import create_backbone
from dfbench.settings import ExtractSettings, check_resolution_bounds

UPSAMPLE_MODES = ("direct", "progressive")
GLOBAL_OPTIONS = {"renormalize": False, "upsample": "direct"}


def option_value(key: str, value: Any, kind: type) -> Any:
    """A backbone option as ``kind`` (strings from the command line are converted, as protocol options are);
    else one line."""

    try:
        return convert_option(value, kind)
    except (TypeError, ValueError):
        raise DfbenchInputError(f"backbone option {key}={value!r}: expected {kind.__name__}") from None


def pca_pair(first: torch.Tensor, second: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two C×h×w maps projected onto the top ``dim`` principal axes of their tokens pooled (h·w + h'·w'
    vectors, centred by their joint mean): (dim×h×w, dim×h'×w'). ``dim`` is clamped to the rank bound
    min(tokens, C). The axes come from an exact SVD (signs are arbitrary, cosines do not see them)."""
    channels = first.shape[0]
    tokens = torch.cat([first.reshape(channels, -1), second.reshape(channels, -1)], dim=1).T.float()
    centred = tokens - tokens.mean(dim=0, keepdim=True)
    dim = min(dim, *centred.shape)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    reduced = (centred @ vh[:dim].T).T                              # dim × (tokens of both)
    split = first.shape[1] * first.shape[2]
    return (reduced[:, :split].reshape(dim, *first.shape[1:]), reduced[:, split:].reshape(dim, *second.shape[1:]))


def resize_to(maps: list[torch.Tensor], size: tuple[int, int], progressive: bool) -> list[torch.Tensor]:
    """N×C×h×w maps resized bilinearly to ``size``; ``progressive``: through every larger grid among
    ``maps`` in turn (coarse to fine), else in one step."""
    grids = sorted({tuple(m.shape[2:]) for m in maps} | {size}, key=lambda grid: grid[0] * grid[1])
    resized = []
    for value in maps:
        steps = [grid for grid in grids if grid[0] * grid[1] > value.shape[2] * value.shape[3]] if progressive \
            else ([size] if tuple(value.shape[2:]) != size else [])
        for grid in steps:
            value = F.interpolate(value, size=grid, mode="bilinear", align_corners=False)
        resized.append(value)
    return resized


class FusionBackbone:
    """Several backbones on the same images, their activations fused (see the module docstring)."""

    def __init__(self, sources: dict[str, Any], options: dict[str, Any] | None = None) -> None:
        self.sources = sources
        self.name = "+".join(sources)
        self.options = self.resolve_options(options or {})
        for name, backbone in sources.items():
            check_resolution_bounds(self.options[f"resolution.{name}"], f"backbone option resolution.{name}")
            backbone.check_resolution(self.options[f"resolution.{name}"])
        self.default_resolution = self.options[f"resolution.{list(sources)[-1]}"]
        self.default_settings: dict[str, Any] = {}
        names: list[str] = []
        for backbone in sources.values():
            names += [name for name in backbone.setting_names if name not in names]
        self.setting_names = tuple(names)
        self.source = "; ".join(f"{name}: {backbone.source}" for name, backbone in sources.items())
        self.recipe_version = {name: backbone.recipe_version for name, backbone in sources.items()}

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every option with its value (given, else its default), checked; an unknown key is one line. A
        source may be named by its position in the fusion's name (``pca.1`` = ``pca.sd15`` in
        ``sd15+dinov2-base``), which lets a preset serve any fusion of the same shape."""
        positions = {str(index): name for index, name in enumerate(self.sources, start=1)}
        named: dict[str, Any] = {}
        for key, value in given.items():
            option, dot, source = str(key).partition(".")
            key = f"{option}.{positions.get(source, source)}" if dot else key
            if key in named:
                raise DfbenchInputError(f"backbone {self.name}: option {key} given twice (by name and by position)")
            named[key] = value
        given = named
        self.timesteps = {key.partition(".")[2]: given.pop(key) for key in list(given) if key.startswith("timestep.")}
        for source, value in self.timesteps.items():
            self.timesteps[source] = option_value(f"timestep.{source}", value, int)
            if source not in self.sources or not 0 <= self.timesteps[source] <= 999:
                raise DfbenchInputError(f"backbone {self.name}: option timestep.{source}={value!r}: a timestep 0…999 "
                                        f"of a source ({', '.join(self.sources)})")
        defaults: dict[str, Any] = dict(GLOBAL_OPTIONS)
        for name, backbone in self.sources.items():
            defaults.update({f"resolution.{name}": backbone.default_resolution, f"weight.{name}": 1.0,
                             f"pca.{name}": 0})
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise DfbenchInputError(f"backbone {self.name}: unknown option(s) {', '.join(unknown)}; valid: "
                                    + ", ".join(defaults))
        options = {key: option_value(key, given[key], type(default)) if key in given else default
                   for key, default in defaults.items()}
        options.update({f"timestep.{source}": value for source, value in self.timesteps.items()})
        if options["upsample"] not in UPSAMPLE_MODES:
            raise DfbenchInputError(f"backbone option upsample={options['upsample']!r}: choose {UPSAMPLE_MODES}")
        for name in self.sources:
            if options[f"pca.{name}"] < 0 or options[f"weight.{name}"] < 0:
                raise DfbenchInputError(f"backbone {self.name}: pca.{name} and weight.{name} must be ≥ 0")
        return options

    def describe(self) -> str:
        """The fusion recipe in one line: ``sd15@960 pca256 ×1 ⊕ dinov2-base@840 ×1 [renormalised]``."""
        parts = []
        for name in self.sources:
            pca = self.options[f"pca.{name}"]
            parts.append(f"{name}@{self.options[f'resolution.{name}']}" + (f" pca{pca}" if pca else "")
                         + (f" t={self.timesteps[name]}" if name in self.timesteps else "")
                         + f" ×{self.options[f'weight.{name}']:g}")
        flags = [flag for flag in ("renormalised" if self.options["renormalize"] else "",
                                   "progressive" if self.options["upsample"] == "progressive" else "") if flag]
        return " ⊕ ".join(parts) + (f" [{', '.join(flags)}]" if flags else "")

    @property
    def device(self) -> torch.device:
        return next(iter(self.sources.values())).device

    @property
    def pair_fitted(self) -> bool:
        """Whether the descriptor depends on the image pair (a source with ``pca.<source>`` > 0)."""
        return any(self.options[f"pca.{name}"] for name in self.sources)

    def check_resolution(self, resolution: int) -> None:
        if resolution != self.default_resolution:
            sizes = ", ".join(f"{name} {self.options[f'resolution.{name}']} px" for name in self.sources)
            raise DfbenchInputError(f"resolution {resolution}: the sources of {self.name} have their own input sizes "
                                    f"({sizes}); set one with --backbone-option resolution.<source>=N")

    def split_name(self, name: str) -> tuple[str, str]:
        """``sd15:up_blocks.1`` (or ``1:up_blocks.1``, the source by position) → (``sd15``, ``up_blocks.1``);
        a name without a known source is one line."""
        source, separator, activation = name.strip().partition(":")
        names = list(self.sources)
        if source.isdigit() and 1 <= int(source) <= len(names):
            source = names[int(source) - 1]
        if not separator or source not in self.sources:
            raise UnknownNameError(f"{name!r}: activations of {self.name} are named <source>:<activation> with a "
                                   f"source of {', '.join(self.sources)} (e.g. {list(self.sources)[0]}:…)")
        return source, activation

    def canonical_selection(self, selection: Sequence[str]) -> list[str]:
        chosen: list[str] = []
        for raw in selection:
            source, activation = self.split_name(raw)
            name = f"{source}:{self.sources[source].canonical_selection([activation])[0]}"
            if name not in chosen:
                chosen.append(name)
        return chosen

    def activation_names(self) -> list[str]:
        """Every source's activation names, as ``<source>:<name>``."""
        return [f"{source}:{name}" for source, backbone in self.sources.items() for name in backbone.activation_names()]

    def by_source(self, names: Sequence[str]) -> dict[str, list[str]]:
        """Canonical names grouped by source, in the order of the fusion's name (sources not asked for left out)."""
        grouped: dict[str, list[str]] = {source: [] for source in self.sources}
        for name in names:
            source, activation = self.split_name(name)
            grouped[source].append(activation)
        return {source: activations for source, activations in grouped.items() if activations}

    def weight_fingerprint(self) -> str:
        """The sources' fingerprints, input sizes and own timesteps (what the stored activations depend on beyond the
        settings)."""
        parts = {name: [backbone.weight_fingerprint(), self.options[f"resolution.{name}"],
                        *([self.timesteps[name]] if name in self.timesteps else [])]
                 for name, backbone in self.sources.items()}
        if any(part[0] == "meta" for part in parts.values()):
            return "meta"
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def catalog(self, resolution: int | None = None) -> list[ActivationInfo]:
        """Every source's activations at its input size, named ``<source>:<name>``."""
        if resolution is not None:
            self.check_resolution(resolution)
        return [ActivationInfo(f"{name}:{row.name}", row.channels, row.height, row.width)
                for name, backbone in self.sources.items()
                for row in backbone.catalog(self.options[f"resolution.{name}"])]

    def source_settings(self, name: str, settings: Any) -> Any:
        """The shared settings at source ``name``'s input size (and timestep, where it has its own)."""
        own = {"timestep": self.timesteps[name]} if name in self.timesteps else {}
        return settings.replace(resolution=self.options[f"resolution.{name}"], **own)

    def extract(self, images: Sequence[Any] | torch.Tensor, selection: Sequence[str], settings: Any = None,
                categories: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
        """Every source's activations of ``images`` (each source at its own input size): {``<source>:<name>``:
        float32 N×C×h×w}. A tensor input (N×3×R×R in [-1, 1]) is resized bilinearly to each source's size."""

        settings = settings or ExtractSettings(resolution=self.default_resolution)
        features: dict[str, torch.Tensor] = {}
        for source, activations in self.by_source(self.canonical_selection(selection)).items():
            source_settings = self.source_settings(source, settings)
            inputs = images
            if isinstance(images, torch.Tensor) and images.shape[-1] != source_settings.resolution:
                size = (source_settings.resolution, source_settings.resolution)
                inputs = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
            extracted = self.sources[source].extract(inputs, activations, source_settings, categories, progress)
            features.update({f"{source}:{name}": value for name, value in extracted.items()})
        return features

    def combine(self, activations: dict[str, torch.Tensor]) -> torch.Tensor:
        """One descriptor map N×C×H×W from a fusion's activations (steps 2–4 of the module docstring; a
        pair-fitted PCA is :meth:`combine_pair`'s)."""
        maps = [value.float() for value in activations.values()]
        size: tuple[int, int] = max(((m.shape[2], m.shape[3]) for m in maps), key=lambda grid: grid[0] * grid[1])
        progressive = self.options["upsample"] == "progressive"
        parts = []
        for source, names in self.by_source(list(activations)).items():
            resized = resize_to([activations[f"{source}:{name}"].float() for name in names], size, progressive)
            parts.append(F.normalize(torch.cat(resized, dim=1), dim=1) * self.options[f"weight.{source}"])
        fused = torch.cat(parts, dim=1)
        return F.normalize(fused, dim=1) if self.options["renormalize"] else fused

    def combine_pair(self, first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The descriptor maps C×H×W of an image pair, from their activations {name: C×h×w}: each activation
        of a source with ``pca.<source>`` > 0 reduced by the pair's PCA (step 1), then :meth:`combine`."""
        reduced_first, reduced_second = {}, {}
        for name in first:
            dim = self.options[f"pca.{self.split_name(name)[0]}"]
            if dim:
                reduced_first[name], reduced_second[name] = pca_pair(first[name].float(), second[name].float(), dim)
            else:
                reduced_first[name], reduced_second[name] = first[name].float(), second[name].float()
        batch_first = {name: value[None] for name, value in reduced_first.items()}
        batch_second = {name: value[None] for name, value in reduced_second.items()}
        return self.combine(batch_first)[0], self.combine(batch_second)[0]

    def to(self, device: str | torch.device, torch_dtype: str | None = None) -> FusionBackbone:
        for backbone in self.sources.values():
            backbone.to(device, torch_dtype)
        return self


def fusion_factory(name: str):
    """The registry entry of the fusion ``name`` (``A+B[+…]``): a factory building each source by its
    registered name, with the same weights init, dtype and device."""
    parts = name.split("+")
    if len(set(parts)) != len(parts) or not all(parts):
        raise UnknownNameError(f"backbone {name!r}: a fusion names two or more different registered backbones "
                               "joined by '+' (e.g. sd15+dinov2-base)")

    def factory(weights: str | None = None, *, options: dict[str, Any] | None = None, init: str = "pretrained",
                torch_dtype: str = "float32", device: str | None = None, local_files_only: bool | None = None,
                seed: int = 0) -> FusionBackbone:

        if weights is not None:
            raise DfbenchInputError(f"backbone {name}: --weights does not apply to a fusion; give each source's "
                                    "weights through its own registry name, or run the sources separately")
        extra = {"local_files_only": local_files_only} if local_files_only is not None else {}
        sources = {part: create_backbone(part, init=init, torch_dtype=torch_dtype, device=device, seed=seed, **extra)
                   for part in parts}
        return FusionBackbone(sources, options)

    factory.__doc__ = f"{name}: a fusion of {', '.join(parts)} (see dfbench.backbones.fusion)."
    return factory
