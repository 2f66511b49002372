"""Stable Diffusion XL: two text encoders and the extra ``text_embeds`` / ``time_ids`` conditioning."""

from __future__ import annotations

from typing import ClassVar

import torch

from dfbench.backbones.parts import PromptEmbedding
from dfbench.backbones.stable_diffusion import ModelCard, StableDiffusionBackbone, card_factory
from dfbench.backbones.text import DualClipText, TextConditioner


class StableDiffusionXLBackbone(StableDiffusionBackbone):
    """SDXL: ``encoder_hidden_states`` = the penultimate hidden states of both text encoders,
    concatenated (768 + 1280 = 2048 channels); ``added_cond_kwargs`` = the pooled projection of
    the second encoder (``text_embeds``) and ``time_ids`` = (original size, crop top-left, target
    size) = (res, res, 0, 0, res, res), as the SDXL pipeline builds them."""

    TEXT: ClassVar[type[TextConditioner]] = DualClipText

    def added_cond_kwargs(self, embedding: PromptEmbedding, rows: int, resolution: int) -> dict:
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=self.dtype)
        if embedding.pooled is None:
            raise ValueError("SDXL needs the pooled text embedding (text_embeds)")
        return {
            "text_embeds": embedding.pooled.to(self.dtype).expand(rows, -1),
            "time_ids": time_ids.to(self.device).expand(rows, -1),
        }

    def meta_added_cond_kwargs(self, rows: int, resolution: int) -> dict:
        config = self.unet.config
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        return {
            "text_embeds": torch.empty(rows, pooled, device="meta"),
            "time_ids": torch.empty(rows, 6, device="meta"),
        }


MODEL_CARD = ModelCard("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024,
                       "Stable Diffusion XL base 1.0, two text encoders",
                       components=("unet", "vae", "text_encoder", "text_encoder_2"))
sdxl = card_factory(MODEL_CARD, StableDiffusionXLBackbone)
