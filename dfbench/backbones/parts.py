"""The parts a diffusion backbone is built from, each usable alone: text conditioning (:class:`PromptEmbedding`, an
offline CLIP tokenizer, CLIP text configs), Stable Diffusion's noise schedule, the seed of one image's random draws,
and the dtype and device helpers every backbone shares."""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from dfbench.errors import DfbenchInputError
from dfbench.settings import ExtractSettings

CONFIG_ROOT = Path(__file__).parent / "configs"
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Stable Diffusion's training noise schedule (identical for SD1.x, SD2.x and SDXL).
SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "steps_offset": 1,
}


@dataclass
class PromptEmbedding:
    """A prompt's text conditioning: per-token states 1×L×D, for SDXL the pooled 1×P vector, for T5 the mask; a
    family that passes a second encoder's states separately (Hunyuan-DiT's mT5) has them as ``*_2``."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None
    #: which text tokens count (1) and which are padding (0), where the denoiser masks its cross-attention (PixArt)
    attention_mask: torch.Tensor | None = None
    #: the second encoder's states and mask, where the denoiser takes them as a separate input
    hidden_states_2: torch.Tensor | None = None
    attention_mask_2: torch.Tensor | None = None


def byte_level_clip_tokenizer() -> Any:
    """A CLIP tokenizer built in memory (no download): every byte is a token, no merges.

    Its ids fit inside the real CLIP vocabulary, so it drives random-weight models of the real
    architecture and the tiny models; real checkpoints bring their own tokenizer.
    """
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable + [256 + n for n, b in enumerate(b for b in range(256) if b not in printable)]
    characters = [chr(code) for code in codes]
    vocab = {char: index for index, char in enumerate(characters)}
    vocab.update({char + "</w>": len(characters) + index for index, char in enumerate(characters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def load_config(family: str, component: str) -> dict[str, Any]:
    """A packaged real model config (``configs/<family>/<component>/config.json``)."""
    return json.loads((CONFIG_ROOT / family / component / "config.json").read_text())


def text_config(config: dict[str, Any]) -> Any:
    """A ``CLIPTextConfig`` from a config dict, without its ``torch_dtype`` (a float16 entry makes
    transformers 5 build a mixed-dtype model that crashes)."""
    from transformers import CLIPTextConfig

    clean = {key: value for key, value in config.items() if key not in ("torch_dtype", "dtype", "architectures")}
    return CLIPTextConfig(**clean)


def image_generator_seed(seed: int, pixels: torch.Tensor) -> int:
    """The seed of one image's random draws: SHA-256 of ``"<seed>:"`` followed by the bytes of the
    image's float32 model input (3×R×R, C order), first 8 bytes big-endian, top bit cleared.

    It depends on the settings' seed and the image content only, so the same image gets the same
    draws alone, in any batch, from the cache and on any rank, and different images independent ones.
    """
    digest = hashlib.sha256(f"{seed}:".encode())
    digest.update(pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "big") & (2**63 - 1)


@contextmanager
def out_of_memory_as_input_error(name: str, resolution: int, batch_size: int) -> Iterator[None]:
    """An allocation failure (GPU or CPU) becomes one line with the size tried and what to lower."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not isinstance(error, torch.OutOfMemoryError) and "allocate" not in str(error).lower():
            raise
        raise DfbenchInputError(f"{name}: out of memory extracting at {resolution}px with {batch_size} UNet rows "
                                "per forward; lower --batch-size or --resolution, or use --dtype bfloat16") from None


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def fill_prompts(template: str, categories: Sequence[str] | None, count: int) -> list[str]:
    """The prompt of each of ``count`` images: ``template`` with ``{category}`` filled (``{{``/``}}`` are braces)."""
    if "category" not in {field for _, field, _, _ in string.Formatter().parse(template)}:
        return [template.format()] * count
    if categories is None or len(categories) != count:
        raise DfbenchInputError(
            f"prompt {template!r} needs one category per image (got "
            f"{0 if categories is None else len(categories)} for {count} images); pass --category"
        )
    return [template.format(category=category) for category in categories]


def per_image_draws(pixels: torch.Tensor, settings: ExtractSettings, latent_channels: int, scale_factor: int
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The standard-normal draws of images N×3×R×R: posterior ε (``latent_mode="sample"``) and diffusion noise
    (``add_noise``), each (N·members)×C×h×w (``C = latent_channels``, ``h = R / scale_factor``) in image-major
    order, or ``None``. Every image has its own CPU generator (:func:`image_generator_seed`), which draws its
    members' posterior ε first, then their noises."""
    members = settings.ensemble_size
    shape = (members, latent_channels, pixels.shape[2] // scale_factor, pixels.shape[3] // scale_factor)
    sample = settings.latent_mode == "sample"
    if not sample and not settings.add_noise:
        return None, None
    posterior_eps, noise = [], []
    for image in pixels:
        generator = torch.Generator().manual_seed(image_generator_seed(settings.seed, image))
        if sample:
            posterior_eps.append(torch.randn(shape, generator=generator))
        if settings.add_noise:
            noise.append(torch.randn(shape, generator=generator))
    return (torch.cat(posterior_eps) if sample else None, torch.cat(noise) if settings.add_noise else None)


def is_meta(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds no weights (built on the meta device)."""
    return any(parameter.is_meta for parameter in module.parameters())


def encoder_from_config(class_name: str, config: dict[str, Any]) -> torch.nn.Module:
    """A transformers text encoder of ``class_name`` built from a config dict (CLIP: its text config)."""
    if class_name.startswith("CLIP"):
        return getattr(transformers, class_name)(text_config(config))
    clean = {key: value for key, value in config.items() if key not in ("torch_dtype", "dtype", "architectures")}
    model_class = getattr(transformers, class_name)
    return model_class(model_class.config_class(**clean))


def load_error(name: str, model_id: str, folders: Sequence[str], error: Exception) -> DfbenchInputError:
    """One line for a model that did not load: what a local folder lacks, or how to download it."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if Path(model_id).is_dir():  # a local folder: say what is missing there, not how to download it
        missing = [folder for folder in folders if not (Path(model_id) / folder).is_dir()]
        return DfbenchInputError(
            f"--weights {model_id}: not a diffusers model folder for {name}"
            + (f" (missing {', '.join(f'{m}/' for m in missing)})" if missing else f" ({first_line[:200]})")
            + f"; it needs {' '.join(f'{folder}/' for folder in folders)}")
    return DfbenchInputError(
        f"cannot load backbone {name} from {model_id!r} ({first_line[:200]}); download it with "
        f"`hf download {model_id}` on a machine with internet, or pass --weights DIR with a local "
        f"diffusers folder ({' '.join(f'{folder}/' for folder in folders)})")
