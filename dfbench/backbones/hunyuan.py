"""Hunyuan-DiT: a DiT (``HunyuanDiT2DModel``: 40 blocks of 1408 channels on 2×2 patches of the SDXL VAE's latent,
long skip connections from the first half to the second, RoPE positions) conditioned on a bilingual CLIP text tower
(a BERT, 77 tokens) and mT5-XL (256 tokens), trained with DDPM's discrete noise (v-prediction).

The denoiser is called as ``HunyuanDiTPipeline`` calls it: ``transformer(latents, t, encoder_hidden_states=BERT
states, text_embedding_mask=their mask, encoder_hidden_states_t5=mT5 states, text_embedding_mask_t5=their mask,
image_meta_size=(1024, 1024, R, R, 0, 0), style=0, image_rotary_emb=the 2-D RoPE of the patch grid)`` — the pipeline's
defaults: ``original_size`` (1024, 1024), ``target_size`` the input size, no crop, style 0, and the rotary grid
cropped onto the 32×32 base grid (``get_resize_crop_region_for_grid``). ``t`` is passed in the latents' dtype, as
the pipeline's ``t_expand``.

Activations: ``blocks.{i}`` (a block's output tokens), ``.attn1.{q,k,v,out}``, ``.attn2.{q,out}``, ``.ff.inner``; each
token sequence becomes a map on the patch grid (resolution / 16 per side); negative block indices count from the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers.models.embeddings import get_2d_rotary_pos_embed

from dfbench.backbones.base import DiffusionBackbone
from dfbench.backbones.img2img import RECIPES
from dfbench.backbones.parts import PromptEmbedding
from dfbench.backbones.stable_diffusion import ModelCard, card_factory
from dfbench.backbones.text import HunyuanText, TextConditioner
from dfbench.errors import DfbenchInputError
from dfbench.options import parse_options

BLOCK_SIGNALS = ("", ".attn1.q", ".attn1.k", ".attn1.v", ".attn1.out", ".attn2.q", ".attn2.out", ".ff.inner")
#: the pipeline's ``original_size`` default, embedded in ``image_meta_size``
ORIGINAL_SIZE = (1024, 1024)


@dataclass(frozen=True)
class HunyuanOptions:
    """Backbone options of Hunyuan-DiT (``--backbone-option KEY=VALUE``): ``recipe`` ``single`` (one denoiser call
    at t) or ``gdf-img2img`` (GDF's: the last of ``steps`` img2img steps from strength t/1000, 50 as its pipeline;
    :mod:`dfbench.backbones.img2img`)."""

    recipe: str = "single"
    steps: int = 50

    def validate(self, where: str) -> None:
        if self.recipe not in RECIPES or self.steps < 1:
            raise DfbenchInputError(f"{where}: recipe={self.recipe!r}, steps={self.steps}: choose recipe from "
                                    f"{', '.join(RECIPES)} and steps ≥ 1")


class HunyuanDitBackbone(DiffusionBackbone):
    """Hunyuan-DiT v1.x (see the module docstring)."""

    #: the options in force (the defaults until :meth:`configure`)
    hunyuan_options: HunyuanOptions = HunyuanOptions()

    @property
    def options(self) -> dict[str, Any]:
        """Every option with its value, recorded with every run and part of its identity."""
        return dataclasses.asdict(self.hunyuan_options)

    def activation_options(self) -> dict[str, Any]:
        """The recipe changes the activations (off its default, ``single``)."""
        recipe = self.hunyuan_options
        return {"recipe": recipe.recipe, "steps": recipe.steps} if recipe.recipe != "single" else {}

    def configure(self, options: dict[str, Any]) -> None:
        self.hunyuan_options = parse_options(HunyuanOptions, options, f"backbone {self.name}")
        recipe = self.hunyuan_options
        self.img2img_steps = recipe.steps if recipe.recipe == "gdf-img2img" else 0

    def prediction(self, output: Any, latents: torch.Tensor) -> torch.Tensor:
        """The first ``C`` output channels (the model also predicts its variance: ``learn_sigma``), as the pipeline
        keeps them."""
        return output[0][:, : latents.shape[1]]

    DENOISER = ("transformer", "HunyuanDiT2DModel")
    TEXT: ClassVar[type[TextConditioner]] = HunyuanText
    MAX_SEQUENCE_LENGTH: ClassVar[int] = 256
    BLOCK_STACKS = ("blocks",)

    @property
    def patch_size(self) -> int:
        return int(self.denoiser.config.patch_size)

    def activation_names(self) -> list[str]:
        return [f"blocks.{index}{signal}" for index in range(len(self.denoiser.blocks)) for signal in BLOCK_SIGNALS]

    def conditions(self, denoiser: Any, rows: int, resolution: int, device: torch.device, dtype: torch.dtype
                   ) -> dict[str, Any]:
        """The image-size / style conditioning and the rotary embedding of the patch grid, for ``rows`` inputs."""
        # the pipeline's module imports its safety checker's image processor: only when a Hunyuan-DiT runs
        from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid

        patch = int(denoiser.config.patch_size)
        grid = resolution // self.vae_scale_factor // patch
        base = 512 // self.vae_scale_factor // patch
        rotary = get_2d_rotary_pos_embed(denoiser.inner_dim // denoiser.num_heads,
                                         get_resize_crop_region_for_grid((grid, grid), base), (grid, grid),
                                         device=device, output_type="pt")
        meta = torch.tensor([[*ORIGINAL_SIZE, resolution, resolution, 0, 0]], dtype=dtype, device=device)
        return {"image_meta_size": meta.repeat(rows, 1),
                "style": torch.zeros(rows, dtype=torch.long, device=device), "image_rotary_emb": rotary}

    def denoiser_call(self, rows: torch.Tensor, timesteps: torch.Tensor, embeddings: list[PromptEmbedding],
                      resolution: int) -> Callable[[], Any]:
        def joined(field: str) -> torch.Tensor:
            return torch.cat([getattr(embedding, field) for embedding in embeddings])

        arguments = {"encoder_hidden_states": joined("hidden_states").to(self.dtype),
                     "text_embedding_mask": joined("attention_mask"),
                     "encoder_hidden_states_t5": joined("hidden_states_2").to(self.dtype),
                     "text_embedding_mask_t5": joined("attention_mask_2"),
                     **self.conditions(self.denoiser, len(rows), resolution, rows.device, rows.dtype)}
        return lambda: self.denoiser(rows, timesteps.to(rows.dtype), **arguments, return_dict=False)

    def meta_call(self, denoiser: Any, resolution: int) -> Callable[[], Any]:
        config, size = denoiser.config, resolution // self.vae_scale_factor
        sample = torch.empty(1, config.in_channels, size, size)
        clip, t5 = HunyuanText.CLIP_TOKENS, self.MAX_SEQUENCE_LENGTH
        arguments = {"encoder_hidden_states": torch.empty(1, clip, config.cross_attention_dim),
                     "text_embedding_mask": torch.ones(1, clip, dtype=torch.long),
                     "encoder_hidden_states_t5": torch.empty(1, t5, config.cross_attention_dim_t5),
                     "text_embedding_mask_t5": torch.ones(1, t5, dtype=torch.long),
                     **self.conditions(denoiser, 1, resolution, torch.device("meta"), torch.float32)}
        return lambda: denoiser(sample, torch.zeros(1), **arguments, return_dict=False)


HUNYUAN_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler")
MODEL_CARD = ModelCard("hunyuan-dit", "Tencent-Hunyuan/HunyuanDiT-Diffusers", "hunyuan-dit", 1024,
                       "Hunyuan-DiT v1.0 (DiT-g/2, 40 blocks with long skips; bilingual CLIP + mT5-XL; SDXL VAE)",
                       HUNYUAN_COMPONENTS)
hunyuan_dit = card_factory(MODEL_CARD, HunyuanDitBackbone)
