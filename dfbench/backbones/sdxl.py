"""Stable Diffusion XL: two text encoders and the extra ``text_embeds`` / ``time_ids`` conditioning."""

from __future__ import annotations

import torch

from dfbench.backbones.base import DiffusionBackbone, PromptEmbedding, load_config

HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"


class StableDiffusionXLBackbone(DiffusionBackbone):
    """SDXL: ``encoder_hidden_states`` = the penultimate hidden states of both text encoders,
    concatenated (768 + 1280 = 2048 channels); ``added_cond_kwargs`` = the pooled projection of
    the second encoder (``text_embeds``) and ``time_ids`` = (original size, crop top-left, target
    size) = (res, res, 0, 0, res, res), as the SDXL pipeline builds them."""

    TEXT_ENCODERS = (
        ("text_encoder", "tokenizer", "CLIPTextModel"),
        ("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection"),
    )

    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        states, pooled = [], None
        for encoder, tokenizer in zip(self.text_encoders, self.tokenizers, strict=True):
            output = encoder(self.tokenize(tokenizer, prompt), output_hidden_states=True)
            states.append(output.hidden_states[-2])
            pooled = output[0]  # the last encoder's projected pooled output (text_embeds)
        return PromptEmbedding(hidden_states=torch.cat(states, dim=-1), pooled=pooled)

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


def sdxl_configs() -> dict[str, dict]:
    """The packaged real SDXL-base configs keyed by component folder."""
    return {c: load_config("sdxl", c) for c in ("unet", "vae", "text_encoder", "text_encoder_2")}


def sdxl(
    weights: str | None = None,
    *,
    init: str = "pretrained",
    torch_dtype: str = "float32",
    device: str | None = None,
    local_files_only: bool | None = None,
    seed: int = 0,
) -> StableDiffusionXLBackbone:
    """Stable Diffusion XL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0), 1024 px, two text encoders."""
    if init == "pretrained":
        return StableDiffusionXLBackbone.from_pretrained(
            "sdxl", weights or HUB_ID, 1024, torch_dtype, device, local_files_only
        )
    return StableDiffusionXLBackbone.from_configs("sdxl", sdxl_configs(), 1024, init, seed, device, torch_dtype)
