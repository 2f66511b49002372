"""The backbone contract: what the runner, the tasks, the feature cache and the CLI use of a backbone.

:class:`~dfbench.backbones.base.DiffusionBackbone` implements it; a non-diffusion backbone (a ViT, a
CNN: see ``tests/toy_plugin.py``) implements the same members and registers a factory
``factory(weights=None, *, torch_dtype="float32", device=None, …) -> Backbone``.

Optional members, used where present (:class:`~dfbench.backbones.fusion.FusionBackbone` has them):
``options`` (the resolved factory options, recorded with every run and part of its identity) with
``describe()`` (them in one line, for the leaderboard); ``combine(activations) -> N×C×H×W`` (the
backbone's own descriptor from its activations, used by ``spair/dift-nn`` instead of the default
per-activation normalisation); ``pair_fitted`` and ``combine_pair(first, second)`` (a descriptor that
depends on the image pair, made at matching time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Backbone(Protocol):
    """A feature extractor: images + activation names + settings → {name: float32 N×C×h×w}."""

    #: the registry name, e.g. ``sd21``
    name: str
    #: the square input size used when settings give none
    default_resolution: int
    #: settings this model is meant to be used with (the base of the settings precedence chain)
    default_settings: dict[str, Any]
    #: the ExtractSettings fields that change this backbone's features; others are refused
    setting_names: tuple[str, ...]
    #: where the weights came from (hub id, folder, "random init"), recorded with every run
    source: str

    @property
    def device(self) -> torch.device:
        """Where the model runs."""

    def check_resolution(self, resolution: int) -> None:
        """The input size rule (e.g. a multiple of 8; of the patch size for a ViT): raise
        :class:`~dfbench.errors.DfbenchInputError` with one line if ``resolution`` breaks it."""

    def canonical_selection(self, selection: Sequence[str]) -> list[str]:
        """Activation names (or aliases) → canonical names; an unknown name is one clear error."""

    def extract(self, images: Sequence[Any] | torch.Tensor, selection: Sequence[str], settings: Any = None,
                categories: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
        """Features of PIL ``images``, resized to ``settings.resolution`` by ``settings.resize_mode``
        (:func:`dfbench.images.to_model_input`), or of a float tensor N×3×R×R already in [-1, 1] and
        at the resolution (segmentation crops; ``to_model_input`` passes it through):
        {canonical name: float32 N×C×h×w}."""

    def weight_fingerprint(self) -> str:
        """A short fingerprint of the weights actually loaded (part of every feature-cache key)."""
