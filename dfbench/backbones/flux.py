"""FLUX.1 [dev] and [schnell]: a rectified-flow transformer of 19 double-stream blocks (text and image side by
side) and 38 single-stream blocks (one ``[text, image]`` sequence), on 2×2-packed 16-channel latents, with RoPE
positions, conditioned on T5-XXL and CLIP-L's pooled output; [dev] also embeds a guidance value.

The denoiser is called as ``FluxPipeline`` calls it: the latents packed 2×2 (``_pack_latents``: 64 channels per
token, tokens row-major over the packed grid), ``img_ids`` = (0, row, column) of each token, ``txt_ids`` zeros,
``timestep`` = the scheduler's σ·1000 / 1000 (the transformer multiplies it back), ``guidance`` = 3.5 (the
pipeline's default ``guidance_scale``; backbone option ``guidance``) on [dev]. Backbone options
(:class:`FluxOptions`) also give DiTF's σ rule and descriptor. Noise: x_t = (1 − σ)·x₀ + σ·ε with σ the scheduler's at
``--timestep``: [dev] shifts it by the image's token count (``use_dynamic_shifting``), [schnell] does not.

Activations, image tokens only, on the packed grid (resolution / 16 per side): ``transformer_blocks.{i}`` (element
1 of a double block's ``(text, image)``), ``single_transformer_blocks.{i}`` (its image tokens, the sequence's
last), ``.attn.{q,k,v}`` (a double block's image projections; a single block's projections of its image tokens),
and ``.mod.{shift,scale,gate}`` — the block's AdaLN modulation of its attention input (the first three chunks of
``norm1.linear`` / ``norm.linear``), N×C×1×1, from which DiTF's modulated descriptor is composed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from dfbench.backbones.base import DiffusionBackbone
from dfbench.backbones.img2img import RECIPES
from dfbench.backbones.noise import DiscreteNoise, FlowMatchingNoise
from dfbench.backbones.parts import PromptEmbedding
from dfbench.backbones.stable_diffusion import ModelCard, card_factory
from dfbench.backbones.text import FluxText, TextConditioner
from dfbench.capture import ActivationCapture
from dfbench.errors import DfbenchInputError
from dfbench.features import combine_activations
from dfbench.options import parse_options

SIGNALS = ("", ".attn.q", ".attn.k", ".attn.v", ".mod.shift", ".mod.scale", ".mod.gate")
MODULATION = {"shift": 0, "scale": 1, "gate": 2}
SIGMA_RULES = ("scheduler", "linear")
DESCRIPTORS = ("none", "ditf")


@dataclass(frozen=True)
class FluxOptions:
    """Backbone options of FLUX (``--backbone-option KEY=VALUE``, a preset's ``backbone_options``).

    sigma: ``scheduler`` (σ at t from the model's scheduler, [dev]'s dynamic shift included) or ``linear``
    (DiTF's σ = t/1000 unshifted: ``src/flux/feat_flux.py`` 137-144, ``t = timestep / 1000``). guidance: the
    guidance value [dev] embeds (FluxPipeline's default 3.5; DiTF's ``guidance=3.5``). descriptor: ``none``
    (the selected activations as every backbone combines them) or ``ditf`` — DiTF's descriptor
    (``eval_spair.py`` 113, 145-160): the one selected map with the channels in ``discard`` zeroed (its "massive
    activations"; ``154,1446`` for FLUX.1-dev, ``--cd``), LayerNorm over channels without affine (eps 1e-6,
    ``norm``), then ``(1 + scale)·x + shift`` with the selected ``….mod.scale`` / ``….mod.shift`` (``modulate``).
    """

    sigma: str = "scheduler"
    guidance: float = 3.5
    descriptor: str = "none"
    discard: str = "154,1446"
    norm: bool = True
    modulate: bool = True
    #: ``single`` (one denoiser call at t) or ``gdf-img2img`` (GDF's: the last of ``steps`` img2img steps from
    #: strength t/1000, :mod:`dfbench.backbones.img2img`; GDF runs it with guidance 1)
    recipe: str = "single"
    steps: int = 28

    def validate(self, where: str) -> None:
        if self.sigma not in SIGMA_RULES or self.descriptor not in DESCRIPTORS or self.recipe not in RECIPES:
            raise DfbenchInputError(f"{where}: sigma={self.sigma!r} / descriptor={self.descriptor!r} / recipe="
                                    f"{self.recipe!r}: choose sigma from {', '.join(SIGMA_RULES)}, descriptor from "
                                    f"{', '.join(DESCRIPTORS)} and recipe from {', '.join(RECIPES)}")
        if self.steps < 1:
            raise DfbenchInputError(f"{where}: steps={self.steps}: must be ≥ 1")
        try:
            self.discarded()
        except ValueError:
            raise DfbenchInputError(f"{where}: discard={self.discard!r}: channel numbers separated by commas "
                                    "(e.g. 154,1446), or empty") from None

    def discarded(self) -> list[int]:
        """The channels ``discard`` names."""
        return [int(part) for part in self.discard.replace(" ", "").split(",") if part]


def ditf_descriptor(activations: dict[str, torch.Tensor], options: FluxOptions) -> torch.Tensor:
    """DiTF's descriptor N×C×h×w from one selected map and (``modulate``) its ``….mod.scale`` / ``….mod.shift``."""
    maps = [value for name, value in activations.items() if ".mod." not in name]
    mods = {name.rsplit(".", 1)[1]: value for name, value in activations.items() if ".mod." in name}
    if len(maps) != 1 or options.modulate and not {"shift", "scale"} <= set(mods):
        raise DfbenchInputError("backbone option descriptor=ditf takes one activation map and, with modulate, the "
                                "….mod.shift and ….mod.scale of the block that reads it (preset ditf-flux)")
    features = maps[0].float().clone()
    if any(channel >= features.shape[1] for channel in options.discarded()):
        raise DfbenchInputError(f"backbone option discard={options.discard}: the map has {features.shape[1]} "
                                "channels (154,1446 are FLUX.1-dev's; choose channels of this model)")
    if options.discarded():
        features[:, options.discarded()] = 0.0
    if options.norm:
        features = F.layer_norm(features.permute(0, 2, 3, 1), (features.shape[1],), eps=1e-6).permute(0, 3, 1, 2)
    if options.modulate:
        features = (1 + mods["scale"].float()) * features + mods["shift"].float()
    return features


def modulation_reader(chunks: int, which: int) -> Callable[[Any], torch.Tensor]:
    """Chunk ``which`` of ``chunks`` of an AdaLN linear's output N×(chunks·C), as N×C×1×1."""

    def read(output: Any) -> torch.Tensor:
        width = output.shape[1] // chunks
        return output[:, which * width : (which + 1) * width, None, None]

    return read


def pack(latents: torch.Tensor) -> torch.Tensor:
    """N×C×H×W latents → N×(H/2·W/2)×4C tokens (``FluxPipeline._pack_latents``)."""
    batch, channels, height, width = latents.shape
    packed = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return packed.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """N×(H/2·W/2)×4C tokens → N×C×H×W latents, the inverse of :func:`pack` (``FluxPipeline._unpack_latents``)."""
    batch, _, packed = tokens.shape
    latents = tokens.view(batch, height // 2, width // 2, packed // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, packed // 4, height, width)


def image_ids(rows: int, columns: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(0, row, column) of each packed token, row-major (``FluxPipeline._prepare_latent_image_ids``)."""
    ids = torch.zeros(rows, columns, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(rows)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(columns)[None, :]
    return ids.reshape(rows * columns, 3).to(device=device, dtype=dtype)


class FluxBackbone(DiffusionBackbone):
    """FLUX.1 (see the module docstring)."""

    DENOISER = ("transformer", "FluxTransformer2DModel")
    TEXT: ClassVar[type[TextConditioner]] = FluxText
    SCHEDULER = "FlowMatchEulerDiscreteScheduler"
    NOISE: ClassVar[type[DiscreteNoise] | type[FlowMatchingNoise]] = FlowMatchingNoise
    #: T5 tokens (FluxPipeline's ``max_sequence_length``)
    MAX_SEQUENCE_LENGTH: ClassVar[int] = 512
    BLOCK_STACKS = ("transformer_blocks", "single_transformer_blocks")

    #: the options in force (the defaults until :meth:`configure`)
    flux_options: FluxOptions = FluxOptions()

    @property
    def options(self) -> dict[str, Any]:
        """Every option with its value, recorded with every run and part of its identity."""
        return dataclasses.asdict(self.flux_options)

    def activation_options(self) -> dict[str, Any]:
        """σ rule, guidance and recipe change the activations (the descriptor options only combine them): those off
        their defaults (so caches written before this key existed stay valid)."""
        options, default = self.flux_options, FluxOptions()
        keys = ("sigma", "guidance", "recipe", *(("steps",) if options.recipe != "single" else ()))
        return {key: getattr(options, key) for key in keys if getattr(options, key) != getattr(default, key)}

    def configure(self, options: dict[str, Any]) -> None:
        self.flux_options = parse_options(FluxOptions, options, f"backbone {self.name}")
        assert isinstance(self.noise, FlowMatchingNoise)
        self.noise.shifted = self.flux_options.sigma == "scheduler"
        self.img2img_steps = self.flux_options.steps if self.flux_options.recipe == "gdf-img2img" else 0

    def describe(self) -> str:
        """The options in one line, for the leaderboard."""
        options = self.flux_options
        parts = [f"σ {options.sigma}", f"guidance {options.guidance:g}"]
        if options.recipe == "gdf-img2img":
            parts.append(f"GDF img2img ({options.steps} steps)")
        if options.descriptor == "ditf":
            steps = [step for step, on in (("discard " + options.discard, bool(options.discarded())),
                                           ("LN", options.norm), ("AdaLN", options.modulate)) if on]
            parts.append("DiTF[" + ", ".join(steps) + "]")
        return " ".join(parts)

    def combine(self, activations: dict[str, torch.Tensor]) -> torch.Tensor:
        """One descriptor map N×C×H×W: DiTF's (``descriptor=ditf``), else the default combination."""
        if self.flux_options.descriptor == "ditf":
            return ditf_descriptor(activations, self.flux_options)
        return combine_activations(activations)

    @property
    def patch_size(self) -> int:
        """2: the latents are packed 2×2 into tokens (the transformer's own patch size is 1)."""
        return 2

    def activation_names(self) -> list[str]:
        doubles = len(self.denoiser.transformer_blocks)
        singles = len(self.denoiser.single_transformer_blocks)
        return [*(f"transformer_blocks.{index}{signal}" for index in range(doubles) for signal in SIGNALS),
                *(f"single_transformer_blocks.{index}{signal}" for index in range(singles) for signal in SIGNALS)]

    def capture(self, denoiser: Any, names: list[str], resolution: int, stop_early: bool = True) -> ActivationCapture:
        """Blocks read at element 1 of ``(text, image)``; ``.mod.*`` read off the blocks' AdaLN linears."""
        streams = {f"{stack}.{index}": 1 for stack in ("transformer_blocks", "single_transformer_blocks")
                   for index in range(len(getattr(denoiser, stack)))}
        readers = {}
        for name in names:
            if match := re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.mod\.(\w+)", name):
                double = match[1] == "transformer_blocks"
                path = f"{match[1]}.{match[2]}.{'norm1' if double else 'norm'}.linear"
                readers[name] = (path, modulation_reader(6 if double else 3, MODULATION[match[3]]))
        return ActivationCapture(denoiser, names, stop_early=stop_early, token_grid=self.token_grid(resolution),
                                 streams=streams, readers=readers)

    def call_arguments(self, denoiser: Any, latents: torch.Tensor, timesteps: torch.Tensor) -> dict[str, Any]:
        """The packed latents, their ids and the timestep (and guidance) as FluxPipeline passes them."""
        rows, columns = latents.shape[-2] // 2, latents.shape[-1] // 2
        arguments = {"hidden_states": pack(latents), "timestep": timesteps / 1000,
                     "img_ids": image_ids(rows, columns, latents.device, latents.dtype),
                     "txt_ids": torch.zeros(self.MAX_SEQUENCE_LENGTH, 3, device=latents.device, dtype=latents.dtype),
                     "guidance": None}
        if denoiser.config.guidance_embeds:
            arguments["guidance"] = torch.full([1], self.flux_options.guidance, device=latents.device,
                                               dtype=torch.float32).expand(len(latents))
        return arguments

    def denoiser_call(self, rows: torch.Tensor, timesteps: torch.Tensor, embeddings: list[PromptEmbedding],
                      resolution: int) -> Callable[[], Any]:
        text = torch.cat([embedding.hidden_states for embedding in embeddings]).to(self.dtype)
        pooled = torch.cat([embedding.pooled for embedding in embeddings if embedding.pooled is not None])
        arguments = self.call_arguments(self.denoiser, rows, timesteps)
        return lambda: self.denoiser(**arguments, encoder_hidden_states=text, pooled_projections=pooled.to(self.dtype),
                                     return_dict=False)

    def prediction(self, output: Any, latents: torch.Tensor) -> torch.Tensor:
        return unpack(output[0], latents.shape[-2], latents.shape[-1])

    def meta_call(self, denoiser: Any, resolution: int) -> Callable[[], Any]:
        config, size = denoiser.config, resolution // self.vae_scale_factor
        arguments = self.call_arguments(denoiser, torch.empty(1, config.in_channels // 4, size, size), torch.zeros(1))
        text = torch.empty(1, self.MAX_SEQUENCE_LENGTH, config.joint_attention_dim)
        pooled = torch.empty(1, config.pooled_projection_dim)
        return lambda: denoiser(**arguments, encoder_hidden_states=text, pooled_projections=pooled, return_dict=False)


FLUX_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler")
MODEL_CARDS = {card.name: card for card in (
    ModelCard("flux-dev", "black-forest-labs/FLUX.1-dev", "flux-dev", 1024,
              "FLUX.1 [dev] (19 double + 38 single blocks, T5-XXL + CLIP-L, guidance-distilled, rectified flow)",
              FLUX_COMPONENTS),
    ModelCard("flux-schnell", "black-forest-labs/FLUX.1-schnell", "flux-schnell", 1024,
              "FLUX.1 [schnell] (19 double + 38 single blocks, T5-XXL + CLIP-L, timestep-distilled)", FLUX_COMPONENTS,
              shared=tuple((component, "flux-dev") for component in ("vae", "text_encoder", "text_encoder_2"))),
)}
flux_dev, flux_schnell = (card_factory(MODEL_CARDS[name], FluxBackbone) for name in ("flux-dev", "flux-schnell"))
