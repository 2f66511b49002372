"""Activation names: the canonical grammar, the aliases of the papers, and what a UNet offers.

A canonical name is a stock diffusers module path, optionally followed by a signal suffix
(docs/activations.md):

=====================================================  =============================================
``up_blocks.1``                                        the block's output (after its upsampler)
``up_blocks.1.resnets.2``                              ResnetBlock2D output
``up_blocks.1.resnets.2.increment``                    its residual branch, before the skip-add
``up_blocks.1.attentions.1``                           Transformer2DModel output
``up_blocks.1.attentions.1.transformer_blocks.0``      BasicTransformerBlock output
``….attn1.q`` / ``.k`` / ``.v`` / ``.out``             self-attention projections / output
``….attn2.q`` / ``.out``                               cross-attention query / output
``….attn1.map`` / ``….attn2.map``                      head-mean attention probabilities (keys as channels)
``gdf.up_cross``                                       GDF's aggregate of the up blocks' cross-attention maps
``….ff.inner``                                         GEGLU output (4×C channels)
``up_blocks.1.upsamplers.0``, ``…downsamplers.0``      (up/down)sampler outputs
``mid_block``, ``conv_in``, ``conv_out``               as named
=====================================================  =============================================

Aliases: GDF's grammar (``up-level1-repeat1-vit-block0-cross-q``), DIFT's ``up_ft_index=k`` and
CleanDIFT's ``mid`` / ``us1`` … ``us10``. :func:`resolve_name` maps any of them to the canonical name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from dfbench.errors import DfbenchInputError, UnknownNameError
from dfbench.registry import unknown_name_message

# CleanDIFT's feature names (its min_sd15.py / min_sd21.py), the same for SD1.5 and SD2.1.
CLEANDIFT_ALIASES = {
    "mid": "mid_block",
    "us1": "up_blocks.0.resnets.0",
    "us2": "up_blocks.0.resnets.1",
    "us3": "up_blocks.0",
    "us4": "up_blocks.1.attentions.0",
    "us5": "up_blocks.1.attentions.1",
    "us6": "up_blocks.1",
    "us7": "up_blocks.2.attentions.0",
    "us8": "up_blocks.2.attentions.1",
    "us9": "up_blocks.2",
    "us10": "up_blocks.3.attentions.0",
}

# GDF's per-transformer-block signals → our suffixes. ``None``: refused, with the reason.
GDF_BLOCK_SIGNALS = {
    "self-q": "attn1.q",
    "self-k": "attn1.k",
    "self-v": "attn1.v",
    "cross-q": "attn2.q",
    "cross-k": "attn2.k",
    "cross-v": "attn2.v",
    "ffn-inner": "ff.inner",
    "self-map": "attn1.map",
    "cross-map": "attn2.map",
    "out": "",
}
#: GDF's aggregated attention (``--attention up_cross``)
GDF_AGGREGATES = {"up_cross": "gdf.up_cross"}

_GDF_LEVEL = r"(?P<side>down|up)-level(?P<level>\d+)"
_GDF_PATTERNS = (
    (re.compile(_GDF_LEVEL + r"-repeat(?P<repeat>\d+)-res-(?P<sig>out|increment)$"), "res"),
    (re.compile(r"mid-repeat(?P<repeat>\d+)-res-(?P<sig>out|increment)$"), "res"),
    (re.compile(_GDF_LEVEL + r"-repeat(?P<repeat>\d+)-vit-out$"), "vit"),
    (re.compile(r"mid-vit-out$"), "vit"),
    (re.compile(_GDF_LEVEL + r"-repeat(?P<repeat>\d+)-vit-block(?P<block>\d+)-(?P<sig>[a-z-]+)$"), "block"),
    (re.compile(r"mid-vit-block(?P<block>\d+)-(?P<sig>[a-z-]+)$"), "block"),
    (re.compile(_GDF_LEVEL + r"-(?P<sampler>downsampler|upsampler)-out$"), "sampler"),
)
_GDF_WHOLE = {"unet-after-conv-in": "conv_in", "unet-out": "conv_out"}
_DIFT_PATTERN = re.compile(r"up_ft_index\s*=\s*(\d+)$")

SUFFIX_RE = re.compile(r"\.(increment|attn[12]\.(q|k|v|out|map)|ff\.inner)$")


def _gdf_to_canonical(name: str) -> str | None:
    if name in _GDF_WHOLE:
        return _GDF_WHOLE[name]
    if name == "unet-in":
        raise DfbenchInputError(
            "'unet-in' is the UNet's input latent, not an activation; select 'conv_in' for the first one"
        )
    for pattern, kind in _GDF_PATTERNS:
        match = pattern.match(name)
        if not match:
            continue
        groups = match.groupdict()
        parent = f"{groups['side']}_blocks.{groups['level']}" if groups.get("side") else "mid_block"
        if kind == "sampler":
            return f"{parent}.{groups['sampler']}s.0"
        if kind == "res":
            canonical = f"{parent}.resnets.{groups['repeat']}"
            return canonical + (".increment" if groups["sig"] == "increment" else "")
        transformer = f"{parent}.attentions.{groups.get('repeat') or 0}"
        if kind == "vit":
            return transformer
        signal = groups["sig"]
        if signal not in GDF_BLOCK_SIGNALS:
            raise UnknownNameError(unknown_name_message("GDF block signal", signal, sorted(GDF_BLOCK_SIGNALS)))
        suffix = GDF_BLOCK_SIGNALS[signal]
        block = f"{transformer}.transformer_blocks.{groups['block']}"
        return f"{block}.{suffix}" if suffix else block
    return None


def resolve_name(name: str) -> str:
    """Map an alias (GDF, DIFT, CleanDIFT) to its canonical name; canonical names pass unchanged.

    Refuses names that can never be a dense feature (cross-attention keys and values)
    with a :class:`DfbenchInputError` explaining why.
    """
    name = name.strip()
    if name in CLEANDIFT_ALIASES:
        canonical = CLEANDIFT_ALIASES[name]
    elif name in GDF_AGGREGATES:
        canonical = GDF_AGGREGATES[name]
    elif match := _DIFT_PATTERN.match(name):
        canonical = f"up_blocks.{match.group(1)}"
    else:
        canonical = _gdf_to_canonical(name) or name
    if re.search(r"\.attn2\.(k|v)$", canonical):
        raise DfbenchInputError(
            f"{name!r}: cross-attention keys/values are projections of the text tokens, not of image "
            "positions, so they have no spatial map; use attn2.q (query) or attn2.out instead"
        )
    return canonical


_CANONICAL_PARTS = re.compile(
    r"(?:(?P<side>down|up)_blocks\.(?P<level>\d+)|(?P<mid>mid_block))"
    r"(?:\.(?P<kind>resnets|attentions)\.(?P<repeat>\d+)|\.(?P<sampler>upsamplers|downsamplers)\.0)?"
    r"(?:\.transformer_blocks\.(?P<block>\d+))?(?:\.(?P<suffix>increment|attn[12]\.(?:q|k|v|out|map)|ff\.inner))?$")
_GDF_SIGNAL_OF = {suffix: signal for signal, suffix in GDF_BLOCK_SIGNALS.items() if suffix}
_CLEANDIFT_OF = {canonical: alias for alias, canonical in CLEANDIFT_ALIASES.items()}


def aliases_of(canonical: str) -> list[str]:
    """The other names of a canonical activation: CleanDIFT's, DIFT's and GDF's (the inverse of
    :func:`resolve_name`; GDF has no name for a whole block, nor for attn outputs)."""
    found = [_CLEANDIFT_OF[canonical]] if canonical in _CLEANDIFT_OF else []
    found += [alias for alias, name in GDF_AGGREGATES.items() if name == canonical]
    if re.fullmatch(r"up_blocks\.\d+", canonical):
        found.append(f"up_ft_index={canonical.split('.')[1]}")
    gdf = {value: key for key, value in _GDF_WHOLE.items()}.get(canonical)
    match = _CANONICAL_PARTS.match(canonical) if gdf is None else None
    if match:
        parts = match.groupdict()
        place = f"{parts['side']}-level{parts['level']}" if parts["side"] else "mid"
        repeat = f"-repeat{parts['repeat']}" if parts["repeat"] is not None and parts["side"] else ""
        if parts["sampler"] and not parts["suffix"]:
            gdf = f"{place}-{parts['sampler'][:-1]}-out"
        elif parts["kind"] == "resnets" and parts["suffix"] in (None, "increment"):
            mid_repeat = f"-repeat{parts['repeat']}" if parts["mid"] else ""
            gdf = f"{place}{repeat}{mid_repeat}-res-{parts['suffix'] or 'out'}"
        elif parts["kind"] == "attentions" and parts["block"] is None and not parts["suffix"]:
            gdf = f"{place}{repeat}-vit-out" if parts["side"] or parts["repeat"] == "0" else None
        elif parts["kind"] == "attentions" and parts["block"] is not None:
            signal = "out" if not parts["suffix"] else _GDF_SIGNAL_OF.get(parts["suffix"])
            if signal and (parts["side"] or parts["repeat"] == "0"):
                gdf = f"{place}{repeat}-vit-block{parts['block']}-{signal}"
    return found + ([gdf] if gdf else [])


def resolve_selection(names: Iterable[str]) -> list[str]:
    """Resolve every name (aliases allowed) and drop duplicates, keeping the first occurrence's order."""
    resolved: list[str] = []
    for name in names:
        canonical = resolve_name(name)
        if canonical not in resolved:
            resolved.append(canonical)
    if not resolved:
        raise DfbenchInputError("empty selection: name at least one activation (--select NAME or --preset P)")
    return resolved


def addressable_names(unet: nn.Module) -> list[str]:
    """Every canonical activation name the given UNet offers, in module-definition order."""
    # Imported here: diffusers is heavy and this module is also used for pure name handling.
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.upsampling import Upsample2D

    names: list[str] = []
    for path, module in unet.named_modules():
        if path in ("conv_in", "conv_out", "mid_block") or re.fullmatch(r"(down|up)_blocks\.\d+", path):
            names.append(path)
        elif isinstance(module, ResnetBlock2D):
            names += [path, f"{path}.increment"]
        elif isinstance(module, (Transformer2DModel, Downsample2D, Upsample2D)):
            names.append(path)
        elif isinstance(module, BasicTransformerBlock):
            names += [path, f"{path}.attn1.q", f"{path}.attn1.k", f"{path}.attn1.v", f"{path}.attn1.out",
                      f"{path}.attn1.map"]
            if getattr(module, "attn2", None) is not None:
                names += [f"{path}.attn2.q", f"{path}.attn2.out", f"{path}.attn2.map"]
            names.append(f"{path}.ff.inner")
    return names


def validate_selection(names: Sequence[str], valid: Sequence[str], backbone: str) -> list[str]:
    """Resolve ``names`` and check each against ``valid``; an unknown one fails with close suggestions."""
    valid_set = set(valid)
    for name in names:
        canonical = resolve_name(name)
        if canonical not in valid_set:
            kind = f"activation of {backbone}" + ("" if canonical == name.strip() else f" ({name.strip()} →)")
            raise UnknownNameError(
                unknown_name_message(kind, canonical, list(valid), f"see `dfbench activations {backbone}`")
            )
    return resolve_selection(names)


@dataclass(frozen=True)
class ActivationInfo:
    """One addressable activation and its shape for a given input resolution."""

    name: str
    channels: int
    height: int
    width: int

    def to_dict(self) -> dict[str, int | str]:
        return {"name": self.name, "channels": self.channels, "height": self.height, "width": self.width}
