"""PixArt-α and PixArt-Σ: a DiT (``PixArtTransformer2DModel``, 28 blocks of 1152 channels on 2×2 patches of the
SD / SDXL VAE's latent) conditioned on T5-XXL, trained with DDPM's discrete noise.

The denoiser is called as GDF calls it (Darkbblue/generic-diffusion-feature, ``feature/diffusion_feature.py``
lines 467-474): ``transformer(latents, encoder_hidden_states=T5 states, encoder_attention_mask=the tokens' mask,
timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None})``; the prompt is encoded as the diffusers
pipelines do (``max_sequence_length`` 120 for α, 300 for Σ). Activations: ``transformer_blocks.{i}`` (a block's
output tokens), ``.attn1.{q,k,v,out}``, ``.attn2.{q,out}``, ``.ff.inner``; every token sequence becomes a map on
the patch grid (resolution / 16 per side). Negative block indices count from the last block
(``transformer_blocks.-1`` = ``transformer_blocks.27``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from dfbench.backbones.base import DiffusionBackbone
from dfbench.backbones.parts import PromptEmbedding
from dfbench.backbones.stable_diffusion import ModelCard, card_factory
from dfbench.backbones.text import T5Text, TextConditioner

#: GDF's call: no resolution / aspect-ratio conditioning (``feature/diffusion_feature.py:473``)
NO_ADDED_CONDITIONS: dict[str, Any] = {"resolution": None, "aspect_ratio": None}


class PixArtBackbone(DiffusionBackbone):
    """PixArt-α (the pipeline's 120 T5 tokens); PixArt-Σ is the same with 300 (:class:`PixArtSigmaBackbone`)."""

    DENOISER = ("transformer", "PixArtTransformer2DModel")
    TEXT: ClassVar[type[TextConditioner]] = T5Text
    #: the T5 tokens a prompt is padded or cut to (``PixArtAlphaPipeline.encode_prompt``'s ``max_sequence_length``)
    MAX_SEQUENCE_LENGTH: ClassVar[int] = 120
    BLOCK_STACKS = ("transformer_blocks",)

    @property
    def patch_size(self) -> int:
        return int(self.denoiser.config.patch_size)

    def denoiser_call(self, rows: torch.Tensor, timesteps: torch.Tensor, embeddings: list[PromptEmbedding],
                      resolution: int) -> Callable[[], Any]:
        text = torch.cat([embedding.hidden_states for embedding in embeddings]).to(self.dtype)
        masks = [embedding.attention_mask for embedding in embeddings]
        mask = torch.cat([m for m in masks if m is not None]) if all(m is not None for m in masks) else None
        return functools.partial(self.denoiser, rows, encoder_hidden_states=text, encoder_attention_mask=mask,
                                 timestep=timesteps, added_cond_kwargs=NO_ADDED_CONDITIONS, return_dict=False)

    def meta_call(self, denoiser: Any, resolution: int) -> Callable[[], Any]:
        size = resolution // self.vae_scale_factor
        sample = torch.empty(1, denoiser.config.in_channels, size, size)
        text = torch.empty(1, self.MAX_SEQUENCE_LENGTH, denoiser.config.caption_channels)
        timestep = torch.zeros(1, dtype=torch.long)
        return lambda: denoiser(sample, encoder_hidden_states=text, timestep=timestep,
                                added_cond_kwargs=NO_ADDED_CONDITIONS, return_dict=False)


class PixArtSigmaBackbone(PixArtBackbone):
    """PixArt-Σ: 300 T5 tokens (``PixArtSigmaPipeline.encode_prompt``), the SDXL VAE."""

    MAX_SEQUENCE_LENGTH = 300


PIXART_COMPONENTS = ("transformer", "vae", "text_encoder", "scheduler")
MODEL_CARDS = {card.name: card for card in (
    ModelCard("pixart-alpha", "PixArt-alpha/PixArt-XL-2-512x512", "pixart-alpha", 512,
              "PixArt-α XL-2 512 (DiT, T5-XXL, SD VAE)", PIXART_COMPONENTS),
    ModelCard("pixart-sigma", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "pixart-sigma", 1024,
              "PixArt-Σ XL-2 1024 (DiT, T5-XXL, SDXL VAE)", PIXART_COMPONENTS,
              shared=(("text_encoder", "pixart-alpha"),)),
    ModelCard("pixart-sigma-512", "PixArt-alpha/PixArt-Sigma-XL-2-512-MS", "pixart-sigma-512", 512,
              "PixArt-Σ XL-2 512 (DiT, T5-XXL, SDXL VAE)", PIXART_COMPONENTS,
              shared=(("vae", "pixart-sigma"), ("scheduler", "pixart-sigma"), ("text_encoder", "pixart-alpha"))),
)}
pixart_alpha = card_factory(MODEL_CARDS["pixart-alpha"], PixArtBackbone)
pixart_sigma = card_factory(MODEL_CARDS["pixart-sigma"], PixArtSigmaBackbone)
pixart_sigma_512 = card_factory(MODEL_CARDS["pixart-sigma-512"], PixArtSigmaBackbone)
