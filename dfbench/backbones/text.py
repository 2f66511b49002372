"""Text conditioners: how a prompt becomes the denoiser's conditioning. A family picks one (CLIP-L for SD1.x,
OpenCLIP-H for SD2.x, CLIP-L + OpenCLIP-G for SDXL, T5-XXL for PixArt); each distinct prompt is encoded once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import transformers

from dfbench.backbones.parts import PromptEmbedding, is_meta
from dfbench.errors import DfbenchInputError


class TextConditioner:
    """Text encoders with their tokenizers; :meth:`embedding` encodes each distinct prompt once (inference mode)."""

    #: the default (model folder, tokenizer folder, transformers class) of each encoder in a diffusers folder
    COMPONENTS: ClassVar[tuple[tuple[str, str, str], ...]] = (("text_encoder", "tokenizer", "CLIPTextModel"),)
    #: the transformers class that loads the tokenizers
    TOKENIZER: ClassVar[str] = "CLIPTokenizer"

    #: the T5 tokens a prompt is padded or cut to, for conditioners with a T5 (the pipeline's
    #: ``max_sequence_length``); a family may give its own
    MAX_LENGTH: ClassVar[int] = 0

    def __init__(self, encoders: Sequence[Any], tokenizers: Sequence[Any], max_length: int | None = None) -> None:
        self.encoders = [encoder.eval().requires_grad_(False) for encoder in encoders]
        self.tokenizers = list(tokenizers)
        self.max_length = max_length or self.MAX_LENGTH
        self._cache: dict[str, PromptEmbedding] = {}

    @classmethod
    def load(cls, model_id: str, skipped: set[int], dtype: torch.dtype, local_files_only: bool | None
             ) -> tuple[list[Any], list[Any]]:
        """The encoders (those in ``skipped`` built on the meta device from their config only) and tokenizers of a
        diffusers folder or hub id, with transformers' ``from_pretrained``."""
        common = {"local_files_only": local_files_only} if local_files_only is not None else {}
        encoders, tokenizers = [], []
        for index, (model_folder, tokenizer_folder, encoder_class) in enumerate(cls.COMPONENTS):
            model_class = getattr(transformers, encoder_class)
            if index in skipped:
                config = model_class.config_class.from_pretrained(model_id, subfolder=model_folder, **common)
                with torch.device("meta"):
                    encoders.append(model_class(config))
            else:
                encoders.append(model_class.from_pretrained(model_id, subfolder=model_folder, dtype=dtype, **common))
            tokenizers.append(getattr(transformers, cls.TOKENIZER).from_pretrained(
                model_id, subfolder=tokenizer_folder, local_files_only=bool(local_files_only)))
        return encoders, tokenizers

    @classmethod
    def clip_indices(cls) -> set[int]:
        """The encoders ``--text-encoders clip`` keeps: the CLIP ones (not a T5)."""
        return {index for index, (_, _, encoder_class) in enumerate(cls.COMPONENTS)
                if encoder_class.startswith("CLIP")}

    @classmethod
    def skipped(cls, text_encoders: str) -> set[int]:
        """The encoders (by position) that ``--text-encoders`` leaves unloaded: every one for ``none``, those that
        are not CLIP (a T5) for ``clip``; they are built on the meta device from their config (no weights)."""
        return {index for index in range(len(cls.COMPONENTS))
                if text_encoders == "none" or text_encoders == "clip" and index not in cls.clip_indices()}

    def encode(self, prompt: str, device: torch.device) -> PromptEmbedding:
        """The conditioning of one prompt by every encoder."""
        raise NotImplementedError

    def encode_clip(self, prompt: str, device: torch.device) -> PromptEmbedding:
        """The conditioning with the CLIP encoders only, any T5's part zeros (a CLIP-only family: :meth:`encode`)."""
        return self.encode(prompt, device)

    def empty(self, device: torch.device) -> PromptEmbedding:
        """Zero conditioning of the shapes :meth:`encode` gives, from the encoders' configs (no encoder runs)."""
        raise NotImplementedError

    def embedding(self, prompt: str, device: torch.device, encoders: str = "all") -> PromptEmbedding:
        """The conditioning of ``prompt`` by ``encoders`` (``all``, ``clip``, ``none``: settings.text_encoders),
        computed once per distinct prompt and mode."""
        key = f"{encoders}:{prompt}"
        needed = [index for index in range(len(self.COMPONENTS))
                  if encoders == "all" or encoders == "clip" and index in self.clip_indices()]
        unloaded = [self.COMPONENTS[index][0] for index in needed if is_meta(self.encoders[index])]
        if unloaded:
            raise DfbenchInputError(f"text encoder {', '.join(unloaded)} was not loaded (the backbone was built for "
                                    f"fewer text encoders); build it again for --text-encoders {encoders}")
        if key not in self._cache:
            with torch.inference_mode():
                if encoders == "none":
                    self._cache[key] = self.empty(device)
                elif encoders == "clip":
                    self._cache[key] = self.encode_clip(prompt, device)
                else:
                    self._cache[key] = self.encode(prompt, device)
        return self._cache[key]

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

    def empty(self, device: torch.device) -> PromptEmbedding:
        config = self.encoders[0].config
        return PromptEmbedding(hidden_states=torch.zeros(1, self.tokenizers[0].model_max_length, config.hidden_size,
                                                         device=device))


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

    def empty(self, device: torch.device) -> PromptEmbedding:
        width = sum(encoder.config.hidden_size for encoder in self.encoders)
        return PromptEmbedding(hidden_states=torch.zeros(1, self.tokenizers[0].model_max_length, width, device=device),
                               pooled=torch.zeros(1, self.encoders[-1].config.projection_dim, device=device))


class T5Text(TextConditioner):
    """PixArt: T5's last hidden state over ``max_length`` tokens (PixArt-α 120, PixArt-Σ 300: the pipelines'
    ``max_sequence_length``) and the tokens' attention mask, which the transformer's cross-attention applies
    (diffusers ``PixArtAlphaPipeline.encode_prompt``)."""

    COMPONENTS = (("text_encoder", "tokenizer", "T5EncoderModel"),)
    TOKENIZER = "AutoTokenizer"

    MAX_LENGTH = 120

    def encode(self, prompt: str, device: torch.device) -> PromptEmbedding:
        tokens = self.token_ids(self.tokenizers[0], prompt, device, self.max_length)
        mask = tokens.attention_mask
        hidden = self.encoders[0](tokens.input_ids, attention_mask=mask)[0]
        return PromptEmbedding(hidden_states=hidden, attention_mask=mask)

    def encode_clip(self, prompt: str, device: torch.device) -> PromptEmbedding:
        return self.empty(device)     # no CLIP here: T5 is the only encoder

    def empty(self, device: torch.device) -> PromptEmbedding:
        """Zeros for every token, each attended (a mask of ones)."""
        width = self.encoders[0].config.d_model
        return PromptEmbedding(hidden_states=torch.zeros(1, self.max_length, width, device=device),
                               attention_mask=torch.ones(1, self.max_length, dtype=torch.long, device=device))


class Sd3Text(TextConditioner):
    """SD3 / SD3.5: CLIP-L and CLIP-G (each's penultimate hidden states, concatenated and zero-padded to T5's
    width) followed along the sequence by T5-XXL's last hidden state over ``max_length`` tokens (256, the
    pipeline's ``max_sequence_length``; no mask), and the two CLIPs' pooled projections concatenated
    (``StableDiffusion3Pipeline.encode_prompt`` with ``clip_skip=None``)."""

    COMPONENTS = (
        ("text_encoder", "tokenizer", "CLIPTextModelWithProjection"),
        ("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection"),
        ("text_encoder_3", "tokenizer_3", "T5EncoderModel"),
    )
    TOKENIZER = "AutoTokenizer"

    MAX_LENGTH = 256

    def clip_part(self, prompt: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The CLIPs' hidden states (1×77×(768+1280)) and pooled projections (1×(768+1280))."""
        states, pooled = [], []
        for encoder, tokenizer in zip(self.encoders[:2], self.tokenizers[:2], strict=True):
            output = encoder(self.token_ids(tokenizer, prompt, device, 77).input_ids, output_hidden_states=True)
            states.append(output.hidden_states[-2])
            pooled.append(output[0])
        return torch.cat(states, dim=-1), torch.cat(pooled, dim=-1)

    def joined(self, clip: torch.Tensor, pooled: torch.Tensor, t5: torch.Tensor) -> PromptEmbedding:
        padded = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return PromptEmbedding(hidden_states=torch.cat([padded, t5], dim=-2), pooled=pooled)

    def t5_zeros(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, self.max_length, self.encoders[2].config.d_model, device=device)

    def encode(self, prompt: str, device: torch.device) -> PromptEmbedding:
        clip, pooled = self.clip_part(prompt, device)
        t5 = self.encoders[2](self.token_ids(self.tokenizers[2], prompt, device, self.max_length).input_ids)[0]
        return self.joined(clip, pooled, t5)

    def encode_clip(self, prompt: str, device: torch.device) -> PromptEmbedding:
        """The pipeline without T5 (``text_encoder_3=None``): zeros in its place."""
        clip, pooled = self.clip_part(prompt, device)
        return self.joined(clip, pooled, self.t5_zeros(device))

    def empty(self, device: torch.device) -> PromptEmbedding:
        width = sum(encoder.config.hidden_size for encoder in self.encoders[:2])
        pooled = sum(encoder.config.projection_dim for encoder in self.encoders[:2])
        return self.joined(torch.zeros(1, 77, width, device=device), torch.zeros(1, pooled, device=device),
                           self.t5_zeros(device))


class FluxText(TextConditioner):
    """FLUX.1: T5-XXL's last hidden state over ``max_length`` tokens (512, FluxPipeline's ``max_sequence_length``;
    no mask) and CLIP-L's pooled output (``pooler_output``, 768) as ``pooled_projections``
    (``FluxPipeline._get_t5_prompt_embeds`` / ``_get_clip_prompt_embeds``)."""

    COMPONENTS = (
        ("text_encoder", "tokenizer", "CLIPTextModel"),
        ("text_encoder_2", "tokenizer_2", "T5EncoderModel"),
    )
    TOKENIZER = "AutoTokenizer"

    MAX_LENGTH = 512

    def pooled(self, prompt: str, device: torch.device) -> torch.Tensor:
        ids = self.token_ids(self.tokenizers[0], prompt, device, 77).input_ids
        return self.encoders[0](ids, output_hidden_states=False).pooler_output

    def t5_zeros(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, self.max_length, self.encoders[1].config.d_model, device=device)

    def encode(self, prompt: str, device: torch.device) -> PromptEmbedding:
        ids = self.token_ids(self.tokenizers[1], prompt, device, self.max_length).input_ids
        return PromptEmbedding(hidden_states=self.encoders[1](ids, output_hidden_states=False)[0],
                               pooled=self.pooled(prompt, device))

    def encode_clip(self, prompt: str, device: torch.device) -> PromptEmbedding:
        return PromptEmbedding(hidden_states=self.t5_zeros(device), pooled=self.pooled(prompt, device))

    def empty(self, device: torch.device) -> PromptEmbedding:
        return PromptEmbedding(hidden_states=self.t5_zeros(device),
                               pooled=torch.zeros(1, self.encoders[0].config.hidden_size, device=device))


class HunyuanText(TextConditioner):
    """Hunyuan-DiT: its bilingual CLIP (a ``BertModel``; 77 tokens) and mT5-XL (256 tokens), each's last hidden
    state with its tokens' attention mask, passed to the transformer as two inputs (``HunyuanDiTPipeline.encode_prompt``
    with ``text_encoder_index`` 0 and 1). ``--text-encoders clip`` keeps the BERT and zeroes mT5's part."""

    COMPONENTS = (
        ("text_encoder", "tokenizer", "BertModel"),
        ("text_encoder_2", "tokenizer_2", "T5EncoderModel"),
    )
    TOKENIZER = "AutoTokenizer"

    #: mT5's tokens (the pipeline's ``max_length`` for ``text_encoder_index=1``); the BERT's are 77
    MAX_LENGTH = 256
    CLIP_TOKENS = 77

    @classmethod
    def clip_indices(cls) -> set[int]:
        return {0}          # the bilingual CLIP text tower, a BERT by class

    def states(self, index: int, prompt: str, device: torch.device, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.token_ids(self.tokenizers[index], prompt, device, length)
        return self.encoders[index](tokens.input_ids, attention_mask=tokens.attention_mask)[0], tokens.attention_mask

    def zeros(self, index: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero states of encoder ``index``, every token attended (a mask of ones)."""
        config = self.encoders[index].config
        width = config.d_model if index else config.hidden_size
        return (torch.zeros(1, length, width, device=device),
                torch.ones(1, length, dtype=torch.long, device=device))

    @staticmethod
    def joined(clip: tuple[torch.Tensor, torch.Tensor], t5: tuple[torch.Tensor, torch.Tensor]) -> PromptEmbedding:
        return PromptEmbedding(hidden_states=clip[0], attention_mask=clip[1], hidden_states_2=t5[0],
                               attention_mask_2=t5[1])

    def encode(self, prompt: str, device: torch.device) -> PromptEmbedding:
        return self.joined(self.states(0, prompt, device, self.CLIP_TOKENS),
                           self.states(1, prompt, device, self.max_length))

    def encode_clip(self, prompt: str, device: torch.device) -> PromptEmbedding:
        return self.joined(self.states(0, prompt, device, self.CLIP_TOKENS), self.zeros(1, self.max_length, device))

    def empty(self, device: torch.device) -> PromptEmbedding:
        return self.joined(self.zeros(0, self.CLIP_TOKENS, device), self.zeros(1, self.max_length, device))
