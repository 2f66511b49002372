"""ExtractSettings: everything besides the backbone and the selection that changes a feature."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dfbench.errors import DfbenchInputError

if TYPE_CHECKING:
    from dfbench.backbones.protocol import Backbone

ResizeMode = Literal["squash", "pad"]
LatentMode = Literal["mode", "sample"]
DTypeName = Literal["float32", "bfloat16", "float16"]

RESIZE_MODES = ("squash", "pad")
LATENT_MODES = ("mode", "sample")
DTYPES = ("float32", "bfloat16", "float16")
PAD_COLORS = ("grey", "black")
RESAMPLE_FILTERS = ("bicubic", "lanczos", "bilinear")
TEXT_ENCODER_MODES = ("all", "clip", "none")
#: fields added after records and caches were first written: a record and a cache key hold them only when
#: they are off these defaults, so the identity of every earlier run and every cached feature stays the same
LATER_FIELDS = {"pad_color": "grey", "resample": "bicubic", "text_encoders": "all", "tile": 0, "tile_stride": 0,
                "compile": False}
#: fields that change how fast features come, not what they are: outside cache keys and run identities
SPEED_FIELDS = ("batch_size", "compile")
MAX_RESOLUTION = 8192


def without_auto_batch(values: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Settings values without ``batch_size: auto`` (probed once the backbone is built, :mod:`dfbench.batch_size`),
    and whether it was asked for."""
    if values.get("batch_size") != "auto":
        return dict(values), False
    return {key: value for key, value in values.items() if key != "batch_size"}, True


def check_resolution_bounds(resolution: int, where: str) -> int:
    """The one bound every command applies to an input size: an integer in 1…MAX_RESOLUTION (each backbone
    adds its own rule on top, e.g. a multiple of 8 for Stable Diffusion); else one line naming ``where``."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= MAX_RESOLUTION:
        raise DfbenchInputError(f"{where}={resolution}: must be an integer in 1…{MAX_RESOLUTION} (each backbone "
                                "adds its own rule, e.g. a multiple of 8 for Stable Diffusion)")
    return resolution


def resolution_flag(text: str) -> int:
    """argparse type of every ``--resolution`` flag: the bound of :func:`check_resolution_bounds`."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer number of pixels") from None
    if not 1 <= value <= MAX_RESOLUTION:
        raise argparse.ArgumentTypeError(f"{value} is not in 1…{MAX_RESOLUTION} (each backbone adds its own rule, "
                                         "e.g. a multiple of 8 for Stable Diffusion)")
    return value


#: the type each field must have (bool is accepted only where listed: it is an int subclass)
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "resolution": (int, type(None)), "resize_mode": (str,), "timestep": (int,), "add_noise": (bool,),
    "ensemble_size": (int,), "seed": (int,), "prompt": (str,), "latent_mode": (str,), "dtype": (str,),
    "batch_size": (int,), "pad_color": (str,), "resample": (str,), "text_encoders": (str,), "tile": (int,),
    "tile_stride": (int,), "compile": (bool,),
}


@dataclass(frozen=True)
class ExtractSettings:
    """How features are extracted. Frozen and hashable; serialised into every result.

    Attributes:
        resolution: square input size in pixels (``None``: the backbone's default, e.g. 512 for SD1.5);
            the backbone's input size rule applies on top (``check_resolution``: a multiple of 8 for SD).
        resize_mode: ``squash`` (resize to res×res ignoring aspect, like DIFT/GDF) or ``pad``
            (keep aspect, fit the longer side, centre it, fill the rest with ``pad_color``).
        timestep: the diffusion timestep t passed to the UNet (and used for noising), 0…999.
        add_noise: noise the latent to t with the scheduler's ``add_noise`` (CleanDIFT: off).
        ensemble_size: number of noise draws whose features are averaged (DIFT: 8).
        seed: seeds every random draw; the same seed gives bit-identical features on CPU.
        prompt: prompt template; ``{category}`` is replaced by each image's category.
        latent_mode: ``mode`` (posterior mean) or ``sample`` (a seeded draw from the VAE posterior).
        dtype: compute dtype of the models (features are returned as float32).
        batch_size: UNet rows per forward (images × ensemble members); does not change the values.
        pad_color: the fill of ``pad``: ``grey`` (0 in [-1, 1]) or ``black`` (Tale of Two Features'
            letterbox, ``utils/utils_correspondence.py:resize``).
        resample: the PIL filter that resizes the image: ``bicubic`` (default), ``lanczos`` (Tale of Two
            Features) or ``bilinear``.
        text_encoders: which text encoders condition the denoiser: ``all``, ``clip`` (a family's T5 replaced by
            zeros of its shape: SD3 and FLUX without the 9.5 GB T5) or ``none`` (zero embeddings of the right shapes).
        tile: ODISE's sliding window (``tile`` px squares of the model input, each through the whole pipeline,
            the maps stitched and overlaps averaged; :mod:`dfbench.backbones.tiling`); 0: the whole input at once.
        tile_stride: the tiles' step in px (0: the tile size, ODISE's; the last tile of a row ends at the edge).
        compile: ``torch.compile`` the blocks the pass runs through (:mod:`dfbench.backbones.compiled`); like
            ``batch_size``, it does not change what the features are (equal within 1e-4), only how fast they come.
    """

    resolution: int | None = None
    resize_mode: ResizeMode = "squash"
    timestep: int = 261
    add_noise: bool = True
    ensemble_size: int = 1
    seed: int = 0
    prompt: str = ""
    latent_mode: LatentMode = "mode"
    dtype: DTypeName = "float32"
    batch_size: int = 8
    pad_color: str = "grey"
    resample: str = "bicubic"
    text_encoders: str = "all"
    tile: int = 0
    tile_stride: int = 0
    compile: bool = False

    def __post_init__(self) -> None:
        for name, kinds in FIELD_TYPES.items():
            value = getattr(self, name)
            if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
                expected = " or ".join("none" if kind is type(None) else kind.__name__ for kind in kinds)
                raise DfbenchInputError(f"settings.{name}={value!r}: expected {expected}, got {type(value).__name__}"
                                        " (in YAML write numbers and true/false without quotes)")
        if self.resolution is not None:
            check_resolution_bounds(self.resolution, "settings.resolution")
        if self.resize_mode not in RESIZE_MODES:
            raise DfbenchInputError(f"settings.resize_mode={self.resize_mode!r}: choose one of {RESIZE_MODES}")
        if not 0 <= self.timestep <= 999:
            raise DfbenchInputError(f"settings.timestep={self.timestep}: must be an integer in 0…999")
        if self.ensemble_size < 1:
            raise DfbenchInputError(f"settings.ensemble_size={self.ensemble_size}: must be ≥ 1")
        if self.latent_mode not in LATENT_MODES:
            raise DfbenchInputError(f"settings.latent_mode={self.latent_mode!r}: choose one of {LATENT_MODES}")
        if self.dtype not in DTYPES:
            raise DfbenchInputError(f"settings.dtype={self.dtype!r}: choose one of {DTYPES}")
        if self.pad_color not in PAD_COLORS:
            raise DfbenchInputError(f"settings.pad_color={self.pad_color!r}: choose one of {PAD_COLORS}")
        if self.text_encoders not in TEXT_ENCODER_MODES:
            raise DfbenchInputError(f"settings.text_encoders={self.text_encoders!r}: choose one of "
                                    f"{TEXT_ENCODER_MODES}")
        if self.resample not in RESAMPLE_FILTERS:
            raise DfbenchInputError(f"settings.resample={self.resample!r}: choose one of {RESAMPLE_FILTERS}")
        if self.batch_size < 1:
            raise DfbenchInputError(f"settings.batch_size={self.batch_size}: must be ≥ 1")
        if self.tile < 0 or self.tile_stride < 0 or (self.tile_stride and not self.tile):
            raise DfbenchInputError(f"settings.tile={self.tile}, tile_stride={self.tile_stride}: both ≥ 0, and a "
                                    "tile_stride only with a tile (0 = no tiling; tile_stride 0 = the tile size)")
        check_prompt(self.prompt)

    @property
    def images_per_batch(self) -> int:
        """Images per forward: ``batch_size`` rows hold ``ensemble_size`` rows per image (at least 1)."""
        return max(1, self.batch_size // self.ensemble_size)

    def replace(self, **changes: Any) -> ExtractSettings:
        """A copy with some fields changed (validated like the original)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def value_dict(self) -> dict[str, Any]:
        """The fields as recorded in run records and feature-cache keys: all of them, except
        :data:`LATER_FIELDS` left at their defaults."""
        return {key: value for key, value in self.to_dict().items()
                if key not in LATER_FIELDS or value != LATER_FIELDS[key]}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), stable across runs."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExtractSettings:
        """Build from a dict; an unknown key is an error that names it and the valid keys."""
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise DfbenchInputError(
                f"unknown settings field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(fields))}"
            )
        return cls(**values)


PROMPT_PLACEHOLDERS = ("category",)


def check_prompt(template: str) -> None:
    """A prompt template may hold ``{category}`` only; any other ``{…}`` (a typo such as
    ``{categroy}``, or an unmatched brace) is one line, instead of being sent to the model as is."""
    import string

    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise DfbenchInputError(f"settings.prompt={template!r}: {error}; write a literal brace as {{{{ or }}}}"
                                ) from None
    unknown = sorted({field for field in fields if field not in PROMPT_PLACEHOLDERS})
    if unknown:
        raise DfbenchInputError(f"settings.prompt={template!r}: unknown placeholder {{{unknown[0]}}}; the only "
                                "placeholder is {category}")


def resolve_settings(backbone: Backbone, preset_settings: dict[str, Any] | None = None,
                     given: dict[str, Any] | None = None) -> ExtractSettings:
    """The settings of a run, by precedence: the backbone's defaults < the preset's < the values given
    (flags or a suite's ``settings:``); the resolution is resolved to the backbone's default, so a
    record never says "default", and checked against the backbone's input size rule. A backbone that
    declares ``setting_names`` (e.g. a ViT: no timestep, noise, prompt) refuses values for the others."""
    values = {**backbone.default_settings, **(preset_settings or {}), **(given or {})}
    settings = ExtractSettings.from_dict(values)
    used = backbone.setting_names
    if used:
        defaults = ExtractSettings().to_dict()
        foreign = sorted(key for key, value in settings.to_dict().items()
                         if key not in used and key != "resolution" and value != defaults[key])
        if foreign:
            raise DfbenchInputError(f"backbone {backbone.name} does not use the setting(s) {', '.join(foreign)} "
                                    f"(it uses {', '.join(used)}); leave them out")
    resolution = backbone.default_resolution if settings.resolution is None else settings.resolution
    backbone.check_resolution(resolution)
    return settings.replace(resolution=resolution)


def settings_label(settings: dict[str, Any]) -> str:
    """A record's settings in a few words (the leaderboard's settings column): resolution and t (for backbones
    that use one), then every value-changing setting that differs from :class:`ExtractSettings`' defaults."""
    defaults = ExtractSettings().to_dict()
    parts = [f"{settings.get('resolution') or 'default'}px"]
    if "timestep" in settings:
        parts.append(f"t={settings['timestep']}")
    for key in ("resize_mode", "latent_mode", "dtype"):
        if settings.get(key, defaults[key]) != defaults[key]:
            parts.append(str(settings[key]))
    for key in ("pad_color", "resample", "text_encoders", "tile", "tile_stride"):
        if settings.get(key, defaults[key]) != defaults[key]:
            parts.append(f"{key}={settings[key]}")
    if not settings.get("add_noise", True):
        parts.append("clean")
    if settings.get("ensemble_size", 1) != 1:
        parts.append(f"ens={settings['ensemble_size']}")
    if settings.get("seed", 0):
        parts.append(f"seed={settings['seed']}")
    prompt = settings.get("prompt") or ""
    if prompt:
        parts.append(f'"{prompt[:24]}…"' if len(prompt) > 25 else f'"{prompt}"')
    return " ".join(parts)
