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

# Playground v2 (GDF's ``pgv2``, feature/components/models.py) is an SDXL UNet trained from scratch: its
# unet/config.json text was not found, but a re-save of the same snapshot (baseten/playground-v2-aesthetic-onnx)
# shows every architecture field equal to SDXL-base's, and the official fp32 UNet file (10.3 GB, about 2.57 B
# values) matches SDXL's UNet size, so it is built from SDXL's bundled configs. Its scheduler is SD's betas
# (scaled_linear 0.00085-0.012, EulerAncestral for sampling): the noise is DDPM's at t, as for SDXL.
PGV2_CARD = ModelCard("pgv2", "playgroundai/playground-v2-1024px-aesthetic", "sdxl", 1024,
                      "Playground v2 1024px aesthetic (an SDXL UNet trained from scratch; GDF's pgv2)",
                      components=MODEL_CARD.components)
pgv2 = card_factory(PGV2_CARD, StableDiffusionXLBackbone)
