"""Stable Diffusion 3 / 3.5: an MMDiT (``SD3Transformer2DModel``) whose joint blocks carry a text stream and an
image stream side by side, conditioned on CLIP-L + CLIP-G + T5-XXL, trained with rectified flow (shift 3).

Noise: x_t = (1 − σ)·x₀ + σ·ε with σ the scheduler's at ``--timestep`` (shift included), the transformer told σ·1000
(:class:`~dfbench.backbones.noise.FlowMatchingNoise`); latents are the 16-channel VAE's, shifted and scaled
(``(z − 0.0609)·1.5305``). The denoiser is called as ``StableDiffusion3Pipeline`` calls it: ``transformer(latents,
encoder_hidden_states=[CLIP states padded to T5's width; T5 states], pooled_projections=the CLIPs' pooled,
timestep=σ·1000)``.

Activations (image stream only): ``transformer_blocks.{i}`` — the image tokens a ``JointTransformerBlock`` returns
(its output is ``(text, image)``: element 1 is read; element 0, the text stream, never is), ``.attn.{q,k,v}`` — the
image part of the joint attention's projections (``to_q/k/v``; the text part is ``add_{q,k,v}_proj``), and
``.ff.inner`` — the image feed-forward's GELU output. Text-stream signals are refused. Tokens lie on the 2×2-patch
grid (resolution / 16 per side); negative block indices count from the last block.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from dfbench.backbones.base import DiffusionBackbone
from dfbench.backbones.noise import DiscreteNoise, FlowMatchingNoise
from dfbench.backbones.parts import PromptEmbedding
from dfbench.backbones.stable_diffusion import ModelCard, card_factory
from dfbench.backbones.text import Sd3Text, TextConditioner
from dfbench.capture import ActivationCapture
from dfbench.errors import DfbenchInputError

#: the signals of one joint block, all of its image stream
BLOCK_SIGNALS = ("", ".attn.q", ".attn.k", ".attn.v", ".ff.inner")
TEXT_STREAM = re.compile(r"\.(ff_context|norm1_context|norm2_context|attn\.add_[qkv]_proj|attn\.to_add_out)\b")


class Sd3Backbone(DiffusionBackbone):
    """SD3-medium, SD3.5-medium and SD3.5-large (see the module docstring)."""

    DENOISER = ("transformer", "SD3Transformer2DModel")
    TEXT: ClassVar[type[TextConditioner]] = Sd3Text
    SCHEDULER = "FlowMatchEulerDiscreteScheduler"
    NOISE: ClassVar[type[DiscreteNoise] | type[FlowMatchingNoise]] = FlowMatchingNoise
    #: T5 tokens (``StableDiffusion3Pipeline``'s ``max_sequence_length``) and CLIP tokens
    MAX_SEQUENCE_LENGTH: ClassVar[int] = 256
    CLIP_TOKENS: ClassVar[int] = 77
    BLOCK_STACKS = ("transformer_blocks",)

    @property
    def blocks(self) -> int:
        return len(self.denoiser.transformer_blocks)

    @property
    def patch_size(self) -> int:
        return int(self.denoiser.config.patch_size)

    def activation_names(self) -> list[str]:
        return [f"transformer_blocks.{index}{signal}" for index in range(self.blocks) for signal in BLOCK_SIGNALS]

    def canonical_selection(self, selection: Sequence[str]) -> list[str]:
        """A text-stream signal is one line saying so; the rest as every diffusion backbone resolves names."""
        for name in selection:
            if TEXT_STREAM.search(name):
                raise DfbenchInputError(f"{name!r}: a text-stream signal of the joint block; {self.name} offers the "
                                        "image stream only (transformer_blocks.{i}, .attn.{q,k,v}, .ff.inner)")
        return super().canonical_selection(selection)

    def capture(self, denoiser: Any, names: list[str], resolution: int, stop_early: bool = True) -> ActivationCapture:
        """The block outputs read at element 1 of ``(text, image)``."""
        streams = {f"transformer_blocks.{index}": 1 for index in range(len(denoiser.transformer_blocks))}
        return ActivationCapture(denoiser, names, stop_early=stop_early, token_grid=self.token_grid(resolution),
                                 streams=streams)

    def denoiser_call(self, rows: torch.Tensor, timesteps: torch.Tensor, embeddings: list[PromptEmbedding],
                      resolution: int) -> Callable[[], Any]:
        text = torch.cat([embedding.hidden_states for embedding in embeddings]).to(self.dtype)
        pooled = torch.cat([embedding.pooled for embedding in embeddings if embedding.pooled is not None])
        return lambda: self.denoiser(rows, encoder_hidden_states=text, pooled_projections=pooled.to(self.dtype),
                                     timestep=timesteps, return_dict=False)

    def meta_call(self, denoiser: Any, resolution: int) -> Callable[[], Any]:
        config, size = denoiser.config, resolution // self.vae_scale_factor
        sample = torch.empty(1, config.in_channels, size, size)
        text = torch.empty(1, self.CLIP_TOKENS + self.MAX_SEQUENCE_LENGTH, config.joint_attention_dim)
        pooled, timestep = torch.empty(1, config.pooled_projection_dim), torch.zeros(1)
        return lambda: denoiser(sample, encoder_hidden_states=text, pooled_projections=pooled, timestep=timestep,
                                return_dict=False)


SD3_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "scheduler")
SD3_SHARED = tuple((component, "sd3-medium") for component in ("vae", "text_encoder", "text_encoder_2",
                                                               "text_encoder_3"))
MODEL_CARDS = {card.name: card for card in (
    ModelCard("sd3-medium", "stabilityai/stable-diffusion-3-medium-diffusers", "sd3-medium", 1024,
              "Stable Diffusion 3 medium (MMDiT, 24 joint blocks; CLIP-L + CLIP-G + T5-XXL; rectified flow)",
              SD3_COMPONENTS),
    ModelCard("sd35-medium", "stabilityai/stable-diffusion-3.5-medium", "sd35-medium", 1024,
              "Stable Diffusion 3.5 medium (MMDiT-X, 24 joint blocks, dual attention in 0-12; rectified flow)",
              SD3_COMPONENTS, shared=SD3_SHARED),
    ModelCard("sd35-large", "stabilityai/stable-diffusion-3.5-large", "sd35-large", 1024,
              "Stable Diffusion 3.5 large (MMDiT, 38 joint blocks; rectified flow)", SD3_COMPONENTS,
              shared=SD3_SHARED),
)}
sd3_medium, sd35_medium, sd35_large = (card_factory(MODEL_CARDS[name], Sd3Backbone)
                                       for name in ("sd3-medium", "sd35-medium", "sd35-large"))
