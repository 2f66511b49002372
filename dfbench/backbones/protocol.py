"""The backbone contract: what the runner, the tasks, the feature cache and the CLI use of a backbone.

:class:`~dfbench.backbones.base.DiffusionBackbone` implements it, and so do
:class:`~dfbench.backbones.dinov2.Dinov2Backbone` and :class:`~dfbench.backbones.fusion.FusionBackbone`;
a third-party backbone (a ViT, a CNN: see ``tests/toy_plugin.py``) implements the same members and
registers a factory ``factory(weights=None, *, torch_dtype="float32", device=None, …) -> Backbone``.
:func:`dfbench.registry.create_backbone` checks every backbone it creates against :class:`Backbone` and
names the members one lacks.

Three optional contracts, checked with ``isinstance`` where they apply (a fusion has all three):

- :class:`ConfiguredBackbone`: ``options`` (the resolved factory options, recorded with every run and part
  of its identity) and ``describe()`` (them in one line, for the leaderboard);
- :class:`DescriptorBackbone`: ``combine(activations) -> N×C×H×W``, the backbone's own descriptor from its
  activations, used by ``spair/dift-nn`` and ``spair/patch-nn`` instead of the default per-activation
  normalisation;
- :class:`PairFittedBackbone`: ``pair_fitted`` and ``combine_pair(first, second)``, a descriptor that depends
  on the image pair, made at matching time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing the contract costs nothing (the CLI imports it at start-up)
    import torch

    from dfbench.activations import ActivationInfo


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
    #: the version of the extraction recipe (an int; a fusion: one per source), part of every feature-cache
    #: key and run record, so features made by an earlier recipe are never reused unknowingly
    recipe_version: Any

    @property
    def device(self) -> torch.device:
        """Where the model runs."""

    def check_resolution(self, resolution: int) -> None:
        """The input size rule (e.g. a multiple of 8; of the patch size for a ViT): raise
        :class:`~dfbench.errors.DfbenchInputError` with one line if ``resolution`` breaks it."""

    def canonical_selection(self, selection: Sequence[str]) -> list[str]:
        """Activation names (or aliases) → canonical names; an unknown name is one clear error."""

    def activation_names(self) -> list[str]:
        """Every canonical activation name, in the model's order (``dfbench sweep`` expands its patterns
        over them)."""

    def catalog(self, resolution: int | None = None) -> list[ActivationInfo]:
        """Every activation with its channels and spatial size at ``resolution`` (default: the backbone's),
        computed without weights where possible (``dfbench activations``)."""

    def extract(self, images: Sequence[Any] | torch.Tensor, selection: Sequence[str], settings: Any = None,
                categories: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
        """Features of PIL ``images``, resized to ``settings.resolution`` by ``settings.resize_mode``
        (:func:`dfbench.images.to_model_input`), or of a float tensor N×3×R×R already in [-1, 1] and
        at the resolution (segmentation crops; ``to_model_input`` passes it through):
        {canonical name: float32 N×C×h×w}."""

    def weight_fingerprint(self) -> str:
        """A short fingerprint of the weights actually loaded (part of every feature-cache key)."""

    def to(self, device: str | torch.device, torch_dtype: str | None = None) -> Any:
        """Move the model to ``device`` (and cast to ``torch_dtype``); returns the backbone."""


@runtime_checkable
class ConfiguredBackbone(Protocol):
    """A backbone built with options that change its features (a fusion's input sizes, weights, PCA)."""

    options: dict[str, Any]

    def describe(self) -> str:
        """The options in one line, for the leaderboard."""


@runtime_checkable
class DescriptorBackbone(Protocol):
    """A backbone that makes its own descriptor map from its activations."""

    def combine(self, activations: dict[str, torch.Tensor]) -> torch.Tensor:
        """One descriptor map N×C×H×W from ``{name: N×C×h×w}``."""


@runtime_checkable
class PairFittedBackbone(Protocol):
    """A backbone whose descriptor is fitted on each image pair (Tale of Two Features' pair PCA)."""

    #: whether the descriptor depends on the pair with the current options
    pair_fitted: bool

    def combine_pair(self, first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two images' descriptor maps C×H×W from their activations ``{name: C×h×w}``."""


def missing_members(backbone: object) -> list[str]:
    """The members of :class:`Backbone` that ``backbone`` lacks (none: it satisfies the contract)."""
    members = [name for name in dir(Backbone) if not name.startswith("_")]
    members += list(getattr(Backbone, "__annotations__", {}))
    return sorted({name for name in members if not hasattr(backbone, name)})
