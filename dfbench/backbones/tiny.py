"""Tiny backbones: the real architectures' configs with small channels and seeded random weights.

Every module name of the real model is kept (same blocks, same number of resnets, attentions and
transformer blocks — SDXL's 10-deep level included), so every activation path is testable; only
widths shrink. They load in well under a second and run a 64 px image in milliseconds. Nothing
is downloaded: the tokenizer is built in memory. ``weights=DIR`` loads a tiny model saved with
``save_pretrained`` instead (the real ``from_pretrained`` path).

Their random weights do not depend on diffusers' or transformers' initialisation code or order
(:func:`name_seeded_init`): every parameter is drawn from its own generator, seeded by the
backbone's seed and the parameter's full name (``tiny-sd15/unet.conv_in.weight``), so a library
upgrade does not move the CI baseline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from dfbench.backbones.base import DiffusionBackbone
from dfbench.backbones.flux import MODEL_CARDS as FLUX_CARDS
from dfbench.backbones.flux import FluxBackbone
from dfbench.backbones.hunyuan import MODEL_CARD as HUNYUAN_CARD
from dfbench.backbones.hunyuan import HunyuanDitBackbone
from dfbench.backbones.parts import is_meta
from dfbench.backbones.pixart import MODEL_CARDS as PIXART_CARDS
from dfbench.backbones.pixart import PixArtBackbone
from dfbench.backbones.sd3 import MODEL_CARDS as SD3_CARDS
from dfbench.backbones.sd3 import Sd3Backbone
from dfbench.backbones.sdxl import MODEL_CARD as SDXL_CARD
from dfbench.backbones.sdxl import StableDiffusionXLBackbone
from dfbench.backbones.stable_diffusion import MODEL_CARDS, StableDiffusionBackbone

TINY_RESOLUTION = 64
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
             "vocab_size": 514, "max_position_embeddings": 77, "bos_token_id": 512, "eos_token_id": 513,
             "pad_token_id": 513, "projection_dim": 32}
TINY_VAE = {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64}


def _shrink(configs: dict[str, dict], unet: dict[str, Any]) -> dict[str, dict]:
    tiny = {"unet": {**configs["unet"], **unet}, "vae": {**configs["vae"], **TINY_VAE}}
    for component, config in configs.items():
        if component.startswith("text_encoder"):
            tiny[component] = {**config, **TINY_TEXT}
    return tiny


def tiny_sd15_configs() -> dict[str, dict]:
    """SD1.5's configs with widths 32/64/64/64 (same blocks and names)."""
    unet = {"block_out_channels": [32, 64, 64, 64], "attention_head_dim": 8, "cross_attention_dim": 32,
            "norm_num_groups": 8, "sample_size": 8}
    return _shrink(MODEL_CARDS["sd15"].bundled_configs(), unet)


def tiny_sd21_configs() -> dict[str, dict]:
    """SD2.1's configs (linear projections, upcast attention) with widths 32/64/64/64."""
    unet = {"block_out_channels": [32, 64, 64, 64], "attention_head_dim": [2, 4, 4, 4], "cross_attention_dim": 32,
            "norm_num_groups": 8, "sample_size": 8}
    return _shrink(MODEL_CARDS["sd21"].bundled_configs(), unet)


#: T5 (v1.1's gated GELU) at small widths, for PixArt's text conditioning
TINY_T5 = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2,
           "vocab_size": 514}


def tiny_pixart_configs() -> dict[str, dict]:
    """PixArt-α's configs (28 blocks, 2×2 patches, T5 text) with 16-channel blocks (2 heads of 8)."""
    configs = PIXART_CARDS["pixart-alpha"].bundled_configs()
    transformer = {"num_attention_heads": 2, "attention_head_dim": 8, "cross_attention_dim": 16,
                   "caption_channels": TINY_T5["d_model"], "sample_size": 8}
    return {"transformer": {**configs["transformer"], **transformer}, "vae": {**configs["vae"], **TINY_VAE},
            "text_encoder": {**configs["text_encoder"], **TINY_T5}, "scheduler": configs["scheduler"]}


def tiny_sd3_configs() -> dict[str, dict]:
    """SD3-medium's configs (24 joint blocks, 16-channel latents, CLIP-L + CLIP-G + T5) with 16-channel blocks; T5 as
    wide as the two CLIPs together (the pipeline pads their states to T5's width)."""
    configs = SD3_CARDS["sd3-medium"].bundled_configs()
    t5_width = 2 * TINY_TEXT["hidden_size"]
    transformer = {"num_attention_heads": 2, "attention_head_dim": 8, "caption_projection_dim": 16,
                   "joint_attention_dim": t5_width, "pooled_projection_dim": 2 * TINY_TEXT["projection_dim"],
                   "sample_size": 8, "pos_embed_max_size": 16}
    tiny = {"transformer": {**configs["transformer"], **transformer}, "vae": {**configs["vae"], **TINY_VAE},
            "text_encoder_3": {**configs["text_encoder_3"], **TINY_T5, "d_model": t5_width},
            "scheduler": configs["scheduler"]}
    for component in ("text_encoder", "text_encoder_2"):
        tiny[component] = {**configs[component], **TINY_TEXT}
    return tiny


def tiny_flux_configs() -> dict[str, dict]:
    """FLUX.1-dev's configs (19 double + 38 single blocks, 2×2-packed 16-channel latents, guidance embedding) with
    16-channel blocks (2 heads of 8; RoPE axes 2 + 2 + 4 = the head width)."""
    configs = FLUX_CARDS["flux-dev"].bundled_configs()
    transformer = {"num_attention_heads": 2, "attention_head_dim": 8, "axes_dims_rope": [2, 2, 4],
                   "joint_attention_dim": TINY_T5["d_model"], "pooled_projection_dim": TINY_TEXT["hidden_size"]}
    return {"transformer": {**configs["transformer"], **transformer}, "vae": {**configs["vae"], **TINY_VAE},
            "text_encoder": {**configs["text_encoder"], **TINY_TEXT},
            "text_encoder_2": {**configs["text_encoder_2"], **TINY_T5}, "scheduler": configs["scheduler"]}


#: a BERT (Hunyuan-DiT's bilingual CLIP tower) at small widths
TINY_BERT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
             "vocab_size": 514}


def tiny_hunyuan_configs() -> dict[str, dict]:
    """Hunyuan-DiT's configs (40 blocks with long skips, 2×2 patches, BERT + mT5 text) with 16-channel blocks (2 heads
    of 8, the RoPE's width)."""
    configs = HUNYUAN_CARD.bundled_configs()
    transformer = {"num_attention_heads": 2, "attention_head_dim": 8, "hidden_size": 16,
                   "cross_attention_dim": TINY_BERT["hidden_size"], "cross_attention_dim_t5": TINY_T5["d_model"],
                   "pooled_projection_dim": 16, "sample_size": 8}
    return {"transformer": {**configs["transformer"], **transformer}, "vae": {**configs["vae"], **TINY_VAE},
            "text_encoder": {**configs["text_encoder"], **TINY_BERT},
            "text_encoder_2": {**configs["text_encoder_2"], **TINY_T5}, "scheduler": configs["scheduler"]}


def tiny_sdxl_configs() -> dict[str, dict]:
    """SDXL-base's configs (transformer depths 1/2/10 kept) with widths 32/64/64."""
    unet = {"block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4], "cross_attention_dim": 64,
            "norm_num_groups": 8, "sample_size": 8, "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 32 + 6 * 8}
    return _shrink(SDXL_CARD.bundled_configs(), unet)


def parameter_seed(seed: int, name: str) -> int:
    """The generator seed of one parameter: the first 8 bytes of SHA-256 of ``"<seed>:<name>"``."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def name_seeded_init(model: torch.nn.Module, seed: int, prefix: str) -> None:
    """Redraw every parameter of ``model`` from a generator seeded by ``seed`` and its full name
    (``prefix.parameter``), by module kind: norms weight 1, bias 0; embeddings normal(0, 0.02);
    any other weight uniform(±1/√fan_in) (PyTorch's default bound for Linear and Conv) and its
    bias uniform with the same bound."""
    with torch.no_grad():
        for module_name, module in model.named_modules():
            fan_in = None
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.nn.Parameter) and weight.dim() >= 2:
                fan_in = weight[0].numel()
            for parameter_name, parameter in module.named_parameters(recurse=False):
                name = ".".join(part for part in (prefix, module_name, parameter_name) if part)
                generator = torch.Generator().manual_seed(parameter_seed(seed, name))
                if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                    parameter.fill_(1.0 if parameter_name == "weight" else 0.0)
                elif isinstance(module, torch.nn.Embedding):
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
                else:
                    bound = 1 / (fan_in or parameter.numel()) ** 0.5
                    parameter.copy_((torch.rand(parameter.shape, generator=generator) * 2 - 1) * bound)


BackboneT = TypeVar("BackboneT", bound=DiffusionBackbone)


def _create(cls: type[BackboneT], name: str, configs: dict, weights: str | None, init: str, seed: int,
            device: str | None, torch_dtype: str, local_files_only: bool | None, text_encoders: str,
            load_only: Sequence[str] | None = None) -> BackboneT:
    if weights is not None and init != "meta":
        return cls.from_pretrained(name, weights, TINY_RESOLUTION, torch_dtype, device or "cpu", local_files_only,
                                   text_encoders, load_only)
    init = "random" if init == "pretrained" else init
    backbone = cls.from_configs(name, configs, TINY_RESOLUTION, init, seed, "cpu", "float32", text_encoders)
    if init == "meta":          # weightless: it stands for the weights it would have (a run's identity names them)
        backbone.source = weights or "random init"
    if init == "random":
        for component, model in ((cls.DENOISER[0], backbone.denoiser), ("vae", backbone.vae),
                                 *((f"text_encoder_{index}", encoder)
                                   for index, encoder in enumerate(backbone.text_encoders)
                                   if not is_meta(encoder))):
            name_seeded_init(model, seed, f"{name}/{component}")
    return backbone if init == "meta" else backbone.to(device or "cpu", torch_dtype)


def tiny_factory(name: str, cls: type[BackboneT], configs: Callable[[], dict[str, dict]],
                 summary: str) -> Callable[..., BackboneT]:
    """The registry factory of a tiny model: seeded name-keyed random weights (``init="random"``, the default),
    ``meta``, or a saved folder (``weights``)."""

    def factory(weights: str | None = None, *, options: dict[str, Any] | None = None, init: str = "random",
                seed: int = 0, device: str | None = None, torch_dtype: str = "float32",
                local_files_only: bool | None = None, text_encoders: str = "all",
                load_only: Sequence[str] | None = None) -> BackboneT:
        backbone = _create(cls, name, configs(), weights, init, seed, device, torch_dtype, local_files_only,
                           text_encoders, load_only)
        if options:
            backbone.configure(options)
        return backbone

    factory.__doc__ = f"{summary}, {TINY_RESOLUTION} px — tests and the offline demo."
    return factory


#: the tiny models: (registry name, class, architecture, one line)
TINY_MODELS: tuple[tuple[str, type[DiffusionBackbone], Callable[[], dict[str, dict]], str], ...] = (
    ("tiny-sd15", StableDiffusionBackbone, tiny_sd15_configs, "Tiny SD1.5 (random weights, real module names)"),
    ("tiny-sd21", StableDiffusionBackbone, tiny_sd21_configs, "Tiny SD2.1 (random weights, real module names)"),
    ("tiny-sdxl", StableDiffusionXLBackbone, tiny_sdxl_configs,
     "Tiny SDXL (random weights, real module names, both text encoders)"),
    ("tiny-pgv2", StableDiffusionXLBackbone, tiny_sdxl_configs,
     "Tiny Playground v2 (SDXL's architecture; its own random weights, drawn under its own name)"),
    ("tiny-pixart", PixArtBackbone, tiny_pixart_configs,
     "Tiny PixArt-α (random weights, real module names: 28 DiT blocks, T5 text)"),
    ("tiny-sd3", Sd3Backbone, tiny_sd3_configs,
     "Tiny SD3 (random weights, real module names: 24 joint blocks, CLIP-L + CLIP-G + T5, rectified flow)"),
    ("tiny-flux", FluxBackbone, tiny_flux_configs,
     "Tiny FLUX.1-dev (random weights, real module names: 19 double + 38 single blocks, T5 + CLIP-L)"),
    ("tiny-hunyuan", HunyuanDitBackbone, tiny_hunyuan_configs,
     "Tiny Hunyuan-DiT (random weights, real module names: 40 blocks with long skips, BERT + mT5)"),
)
(tiny_sd15, tiny_sd21, tiny_sdxl, tiny_pgv2, tiny_pixart, tiny_sd3, tiny_flux,
 tiny_hunyuan) = (tiny_factory(*model) for model in TINY_MODELS)
