"""Text conditioners: how a prompt becomes the denoiser's conditioning. A family picks one (CLIP-L for SD1.x,
OpenCLIP-H for SD2.x, CLIP-L + OpenCLIP-G for SDXL, T5-XXL for PixArt); each distinct prompt is encoded once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from dfbench.backbones.parts import PromptEmbedding


class TextConditioner:
    """Text encoders with their tokenizers; :meth:`embedding` encodes each distinct prompt once (inference mode)."""

    #: the default (model folder, tokenizer folder, transformers class) of each encoder in a diffusers folder
    COMPONENTS: ClassVar[tuple[tuple[str, str, str], ...]] = (("text_encoder", "tokenizer", "CLIPTextModel"),)
    #: the transformers class that loads the tokenizers
    TOKENIZER: ClassVar[str] = "CLIPTokenizer"

    def __init__(self, encoders: Sequence[Any], tokenizers: Sequence[Any]) -> None:
        self.encoders = [encoder.eval().requires_grad_(False) for encoder in encoders]
        self.tokenizers = list(tokenizers)
        self._cache: dict[str, PromptEmbedding] = {}

    def encode(self, prompt: str, device: torch.device) -> PromptEmbedding:
        """The conditioning of one prompt."""
        raise NotImplementedError

    def embedding(self, prompt: str, device: torch.device) -> PromptEmbedding:
        """:meth:`encode`, once per distinct prompt."""
        if prompt not in self._cache:
            with torch.inference_mode():
                self._cache[prompt] = self.encode(prompt, device)
        return self._cache[prompt]

    def clear(self) -> None:
        """Forget the encoded prompts (after the encoders moved or changed dtype)."""
        self._cache.clear()

    @staticmethod
    def token_ids(tokenizer: Any, prompt: str, device: torch.device, max_length: int | None = None) -> Any:
        """The tokenizer's output for ``prompt``, padded and truncated to ``max_length`` (default: the tokenizer's
        ``model_max_length``, 77 for CLIP), on ``device``."""
        tokens = tokenizer([prompt], padding="max_length", max_length=max_length or tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
        return tokens.to(device)


class ClipText(TextConditioner):
    """Stable Diffusion 1.x / 2.x: the text encoder's last hidden state (1×77×D)."""

    def encode(self, prompt: str, device: torch.device) -> PromptEmbedding:
        ids = self.token_ids(self.tokenizers[0], prompt, device).input_ids
        return PromptEmbedding(hidden_states=self.encoders[0](ids)[0])


class DualClipText(TextConditioner):
    """SDXL: the penultimate hidden states of both encoders concatenated (768 + 1280 channels), and the second
    encoder's projected pooled output (``text_embeds``)."""

    COMPONENTS = (
        ("text_encoder", "tokenizer", "CLIPTextModel"),
        ("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection"),
    )

    def encode(self, prompt: str, device: torch.device) -> PromptEmbedding:
        states, pooled = [], None
        for encoder, tokenizer in zip(self.encoders, self.tokenizers, strict=True):
            output = encoder(self.token_ids(tokenizer, prompt, device).input_ids, output_hidden_states=True)
            states.append(output.hidden_states[-2])
            pooled = output[0]  # the last encoder's projected pooled output (text_embeds)
        return PromptEmbedding(hidden_states=torch.cat(states, dim=-1), pooled=pooled)


class T5Text(TextConditioner):
    """PixArt: T5's last hidden state over ``max_length`` tokens (PixArt-α 120, PixArt-Σ 300: the pipelines'
    ``max_sequence_length``) and the tokens' attention mask, which the transformer's cross-attention applies
    (diffusers ``PixArtAlphaPipeline.encode_prompt``)."""

    COMPONENTS = (("text_encoder", "tokenizer", "T5EncoderModel"),)
    TOKENIZER = "AutoTokenizer"

    def __init__(self, encoders: Sequence[Any], tokenizers: Sequence[Any], max_length: int = 120) -> None:
        super().__init__(encoders, tokenizers)
        self.max_length = max_length

    def encode(self, prompt: str, device: torch.device) -> PromptEmbedding:
        tokens = self.token_ids(self.tokenizers[0], prompt, device, self.max_length)
        mask = tokens.attention_mask
        hidden = self.encoders[0](tokens.input_ids, attention_mask=mask)[0]
        return PromptEmbedding(hidden_states=hidden, attention_mask=mask)
