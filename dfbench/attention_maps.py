"""Attention maps as activations (GDF's ``*-self-map`` / ``*-cross-map`` and its ``up_cross`` aggregate).

``….attn2.map`` is a block's cross-attention probabilities softmax(q·kᵀ·scale) averaged over heads, one channel per
text token (N×77×h×w for CLIP): what GDF's attention store keeps of a block (``to_store.mean(1)``,
Darkbblue/generic-diffusion-feature ``feature/components/attention.py`` 238-242 and 109-115). ``….attn1.map`` is the
self-attention's, one channel per key position (N×(h·w)×h×w); GDF gathers it per head as a 4-D
batch × head × query × key tensor (``attention.py`` 243-244): this is its mean over heads with the keys as channels.
Both are computed from the attention module's own inputs and projections (``to_q``, ``to_k``, its ``scale``, a mask
it is given), head by head in float32, so one head's scores are held at a time.

``gdf.up_cross`` (GDF's ``--attention up_cross``): the up blocks' cross-attention maps whose side lies between
img/32 and img/16 (``AttentionStore(img_size // 32, img_size // 16)``, ``attention.py`` 531-534, 109-115), averaged
per side (143-161), each resized (nearest) to img/8 and concatenated (``feature/diffusion_feature.py`` 492-500):
SD1.5 at 512 px has sides 16 and 32, 2 × 77 = 154 channels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

UP_CROSS = "gdf.up_cross"
MAP_SUFFIX = re.compile(r"\.attn[12]\.map$")


def head_mean_probabilities(attention: Any, hidden_states: torch.Tensor, context: torch.Tensor | None,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale) of an attention module averaged over its heads: N×queries×keys, float32. ``context``:
    the keys' source (``None``: self-attention); ``mask``: an additive bias (or boolean keep-mask) over the keys."""
    query = attention.to_q(hidden_states).float()
    source = hidden_states if context is None else context
    if context is not None and getattr(attention, "norm_cross", None):
        source = attention.norm_encoder_hidden_states(source)
    key = attention.to_k(source).float()
    heads = attention.heads
    batch, queries, width = query.shape
    query = query.view(batch, queries, heads, width // heads)
    key = key.view(batch, key.shape[1], heads, width // heads)
    total = torch.zeros(batch, queries, key.shape[1], device=query.device)
    for head in range(heads):
        scores = query[:, :, head] @ key[:, :, head].transpose(1, 2) * attention.scale
        if mask is not None:
            bias = mask.reshape(batch, -1, key.shape[1])
            scores = scores.masked_fill(~bias, float("-inf")) if bias.dtype == torch.bool else scores + bias.float()
        total += scores.softmax(dim=-1)
    return total / heads


def map_reader(module: Any, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """The head-mean attention probabilities of an attention module's call, as tokens N×queries×keys (the capture
    lays the queries on their grid: N×keys×h×w)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    return head_mean_probabilities(module, hidden, context, kwargs.get("attention_mask"))


def up_cross_components(names: Sequence[str], up_block_sides: dict[int, int], resolution: int) -> list[str]:
    """The up blocks' ``….attn2.map`` names (from ``names``, in order) whose map side lies in [img/32, img/16];
    ``up_block_sides``: up block index → its maps' side."""
    low, high = resolution // 32, resolution // 16
    chosen = []
    for name in names:
        match = re.match(r"up_blocks\.(\d+)\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.map$", name)
        if match and low <= up_block_sides[int(match[1])] <= high:
            chosen.append(name)
    return chosen


def aggregate_up_cross(maps: Sequence[torch.Tensor], resolution: int) -> torch.Tensor:
    """GDF's aggregate: the maps (N×77×s×s each) averaged per side in order of first appearance, each resized
    nearest to img/8, concatenated along channels."""
    by_side: dict[int, list[torch.Tensor]] = {}
    for value in maps:
        by_side.setdefault(value.shape[-1], []).append(value)
    size = resolution // 8
    return torch.cat([F.interpolate(torch.stack(group).mean(0), size=(size, size))
                      for group in by_side.values()], dim=1)


class UpCrossCapture:
    """An activation capture that also yields ``gdf.up_cross``: it captures the components' maps with the wrapped
    capture (:class:`~dfbench.capture.ActivationCapture`), aggregates them and keeps only the names asked for."""

    def __init__(self, capture: Any, names: Sequence[str], components: Sequence[str], resolution: int) -> None:
        self.capture = capture
        self.names = list(names)
        self.components = list(components)
        self.resolution = resolution
        self.features: dict[str, torch.Tensor] = {}

    def run(self, forward: Callable[[], Any]) -> dict[str, torch.Tensor]:
        captured = self.capture.run(forward)
        aggregate = aggregate_up_cross([captured[name] for name in self.components], self.resolution)
        self.features = {name: captured[name] for name in self.capture.features if name in self.names}
        self.features[UP_CROSS] = aggregate
        return {name: self.features[name] for name in self.names}
