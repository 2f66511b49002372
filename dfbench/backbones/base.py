"""The machinery shared by every Stable-Diffusion-family backbone: load, encode, noise, capture.

A backbone turns an image batch, a selection of activation names and :class:`ExtractSettings`
into :data:`~dfbench.capture.Features`. The recipe (docs/recipes.md):

1. resize each image to res×res (``squash`` or ``pad``) and scale it to [-1, 1];
2. encode it **once** with the VAE encoder to its posterior (mean, std);
3. take N latents from that one posterior — the mean (``mode``) or N seeded draws (``sample``) —
   and scale them by the VAE's ``scaling_factor``;
4. noise each to timestep t with the scheduler's ``add_noise`` (N seeded noises), unless
   ``add_noise`` is off (CleanDIFT);
5. run the UNet with the prompt's text embedding, capture the requested activations and stop
   right after the last one;
6. average the N members' activations.

Random draws are **per image**, as in DIFT (``src/models/dift_sd.py``: a fresh ``latent_dist.sample()`` and
``torch.randn_like`` for every image and member), from a generator seeded by the settings' seed and the image's
content (:func:`~dfbench.backbones.parts.per_image_draws`): two images get independent noise (a shared field would
bias matches toward equal positions), and an image's features do not depend on its batch, the cache or the rank
that extracted it; the same seed gives bit-identical features on CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from tqdm.auto import tqdm
from typing_extensions import Self

from dfbench.activations import ActivationInfo, addressable_names, validate_selection
from dfbench.backbones.parts import (
    SD_SCHEDULER_CONFIG,
    TORCH_DTYPES,
    PromptEmbedding,
    byte_level_clip_tokenizer,
    default_device,
    fill_prompts,
    out_of_memory_as_input_error,
    per_image_draws,
    text_config,
)
from dfbench.cache import weight_fingerprint
from dfbench.capture import ActivationCapture, Features
from dfbench.errors import DfbenchInputError
from dfbench.hub import hub_source
from dfbench.images import to_model_input
from dfbench.settings import ExtractSettings

#: Version of the extraction recipe: part of every feature-cache key and run record, so features
#: made by an earlier recipe are never reused or compared unknowingly. 1: one noise field per call,
#: shared by every image; 2: independent draws per image (:func:`image_generator_seed`).
RECIPE_VERSION = 2


class DiffusionBackbone:
    """A latent-diffusion UNet (plus VAE, text encoders, scheduler) used as a feature extractor.

    Family subclasses say which text encoders they have (:attr:`TEXT_ENCODERS`) and how a prompt
    becomes conditioning (:meth:`encode_prompt`, :meth:`added_cond_kwargs`).
    """

    #: every ExtractSettings field changes a diffusion backbone's features (the diffusion-only ones:
    #: timestep, add_noise, ensemble_size, prompt, latent_mode); other backbones declare fewer
    setting_names: ClassVar[tuple[str, ...]] = ("resolution", "resize_mode", "timestep", "add_noise", "ensemble_size",
                                                "seed", "prompt", "latent_mode", "dtype", "batch_size",
                                                "pad_color", "resample")

    #: (model folder, tokenizer folder, transformers class name) for each text encoder.
    TEXT_ENCODERS: ClassVar[tuple[tuple[str, str, str], ...]] = (("text_encoder", "tokenizer", "CLIPTextModel"),)

    def __init__(
        self,
        name: str,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        scheduler: Any,
        text_encoders: Sequence[torch.nn.Module],
        tokenizers: Sequence[Any],
        default_resolution: int,
        source: str = "",
    ) -> None:
        self.name = name
        # diffusers models: their configs and call signatures are read dynamically, so typed as Any
        self.unet: Any = unet.eval().requires_grad_(False)
        self.vae: Any = vae.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.text_encoders: list[Any] = [encoder.eval().requires_grad_(False) for encoder in text_encoders]
        self.tokenizers = list(tokenizers)
        self.default_resolution = default_resolution
        self.source = source
        #: settings this model is meant to be used with (e.g. CleanDIFT: no noise); the base of
        #: ``extract(settings=None)`` and of the CLI's flags
        self.default_settings: dict[str, Any] = {}
        #: the extraction recipe's version (:data:`RECIPE_VERSION`), recorded with cached features and runs
        self.recipe_version = RECIPE_VERSION
        self._prompt_cache: dict[str, PromptEmbedding] = {}
        self._names: list[str] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name: str,
        model_id: str | Path,
        default_resolution: int,
        torch_dtype: str = "float32",
        device: str | None = None,
        local_files_only: bool | None = None,
    ) -> Self:
        """Load every component with diffusers/transformers ``from_pretrained`` from a hub id or a
        local diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``)."""
        import transformers
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTokenizer


        dtype = TORCH_DTYPES[torch_dtype]
        model_id = str(model_id)
        local_files_only = hub_source(name, model_id, local_files_only)
        common = {"local_files_only": local_files_only} if local_files_only is not None else {}
        try:
            unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", torch_dtype=dtype, **common)
            vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=dtype, **common)
            scheduler = DDPMScheduler.from_pretrained(model_id, subfolder="scheduler", **common)
            encoders, tokenizers = [], []
            for model_folder, tokenizer_folder, class_name in cls.TEXT_ENCODERS:
                encoder_class = getattr(transformers, class_name)
                encoders.append(encoder_class.from_pretrained(model_id, subfolder=model_folder, dtype=dtype, **common))
                tokenizers.append(CLIPTokenizer.from_pretrained(model_id, subfolder=tokenizer_folder,
                                                                local_files_only=bool(local_files_only)))
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if Path(model_id).is_dir():  # a local folder: say what is missing there, not how to download it
                wanted = ("unet", "vae", "scheduler", *(folder for pair in cls.TEXT_ENCODERS for folder in pair[:2]))
                missing = [folder for folder in wanted if not (Path(model_id) / folder).is_dir()]
                raise DfbenchInputError(
                    f"--weights {model_id}: not a diffusers model folder for {name}"
                    + (f" (missing {', '.join(f'{m}/' for m in missing)})" if missing else f" ({first_line[:200]})")
                    + "; it needs unet/ vae/ scheduler/ and the text encoder and tokenizer folders"
                ) from None
            raise DfbenchInputError(
                f"cannot load backbone {name} from {model_id!r} ({first_line[:200]}); download it with "
                f"`hf download {model_id}` on a machine with internet, or pass --weights DIR with a local "
                "diffusers folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)"
            ) from None
        backbone = cls(name, unet, vae, scheduler, encoders, tokenizers, default_resolution, source=model_id)
        return backbone.to(device or default_device(), torch_dtype)

    @classmethod
    def from_configs(
        cls,
        name: str,
        configs: dict[str, dict[str, Any]],
        default_resolution: int,
        init: str = "random",
        seed: int = 0,
        device: str | None = None,
        torch_dtype: str = "float32",
    ) -> Self:
        """Build from architecture configs with seeded random weights (``init="random"``) or with no
        weights at all on the meta device (``init="meta"``: shapes only)."""
        import transformers
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        if init not in ("random", "meta"):
            raise DfbenchInputError(f"init={init!r}: choose 'pretrained', 'random' or 'meta'")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.device("meta") if init == "meta" else nullcontext():
                unet = UNet2DConditionModel.from_config(configs["unet"])
                vae = AutoencoderKL.from_config(configs["vae"])
                encoders = [
                    getattr(transformers, class_name)(text_config(configs[model_folder]))
                    for model_folder, _, class_name in cls.TEXT_ENCODERS
                ]
        tokenizers = [byte_level_clip_tokenizer() for _ in cls.TEXT_ENCODERS]
        scheduler = DDPMScheduler(**SD_SCHEDULER_CONFIG)
        backbone = cls(name, unet, vae, scheduler, encoders, tokenizers, default_resolution, source=f"{init} init")
        if init == "meta":
            return backbone
        return backbone.to(device or default_device(), torch_dtype)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write every component in the diffusers folder layout (loadable by :meth:`from_pretrained`)."""
        directory = Path(directory)
        self.unet.save_pretrained(directory / "unet")
        self.vae.save_pretrained(directory / "vae")
        self.scheduler.save_pretrained(directory / "scheduler")
        for (model_folder, tokenizer_folder, _), encoder, tokenizer in zip(
            self.TEXT_ENCODERS, self.text_encoders, self.tokenizers, strict=True
        ):
            encoder.save_pretrained(directory / model_folder)
            tokenizer.save_pretrained(directory / tokenizer_folder)

    def to(self, device: str | torch.device, torch_dtype: str | None = None) -> Self:
        """Move every model to ``device`` (and cast to ``torch_dtype``); returns ``self``."""
        dtype = TORCH_DTYPES[torch_dtype] if torch_dtype else None
        for module in (self.unet, self.vae, *self.text_encoders):
            module.to(device)
            if dtype is not None and next(module.parameters()).dtype != dtype:
                module.to(dtype)
        if torch_dtype and torch_dtype == "float16" and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)  # the SDXL VAE overflows in float16
        self._prompt_cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ conditioning (per family)
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        """The text conditioning of one prompt (computed once per distinct prompt, then cached)."""
        raise NotImplementedError

    def added_cond_kwargs(self, embedding: PromptEmbedding, rows: int, resolution: int) -> dict | None:
        """Extra UNet conditioning (SDXL's ``text_embeds`` / ``time_ids``); ``None`` for SD1.x/2.x."""
        return None

    def meta_added_cond_kwargs(self, rows: int, resolution: int) -> dict | None:
        """Meta-device stand-ins for :meth:`added_cond_kwargs`, for shape-only forwards."""
        return None

    def prompt_embedding(self, prompt: str) -> PromptEmbedding:
        """Cached :meth:`encode_prompt`."""
        if prompt not in self._prompt_cache:
            with torch.inference_mode():
                self._prompt_cache[prompt] = self.encode_prompt(prompt)
        return self._prompt_cache[prompt]

    def tokenize(self, tokenizer: Any, prompt: str) -> torch.Tensor:
        """Token ids 1×77 (padded, truncated) on the model device."""
        ids = tokenizer(
            [prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return ids.to(self.device)

    def check_resolution(self, resolution: int) -> None:
        """The input size rule: a multiple of the VAE's downsampling factor (8) of at least 8 pixels."""
        factor = self.vae_scale_factor
        if resolution < factor or resolution % factor:
            raise DfbenchInputError(f"settings.resolution={resolution}: {self.name} needs a positive multiple "
                                    f"of {factor} (e.g. {self.default_resolution})")

    def weight_fingerprint(self) -> str:
        """A fingerprint of the weights actually loaded (UNet, VAE, text encoders; see the cache)."""

        return weight_fingerprint([self.unet, self.vae, *self.text_encoders])

    # ------------------------------------------------------------------ activations
    def canonical_selection(self, selection: Sequence[str]) -> list[str]:
        """``selection`` with aliases resolved to canonical names; an unknown name is one clear error."""
        return validate_selection(selection, self.activation_names(), self.name)

    def activation_names(self) -> list[str]:
        """Every canonical activation name this backbone offers."""
        if self._names is None:
            self._names = addressable_names(self.unet)
        return self._names

    def catalog(self, resolution: int | None = None) -> list[ActivationInfo]:
        """Every addressable activation with its channels and spatial size at ``resolution``,
        in execution order — from a forward on the meta device (no weights, no compute)."""
        from diffusers import UNet2DConditionModel

        resolution = resolution or self.default_resolution
        self.check_resolution(resolution)
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(self.unet.config)
            size = resolution // self.vae_scale_factor
            sample = torch.empty(1, unet.config.in_channels, size, size)
            text = torch.empty(1, 77, unet.config.cross_attention_dim)
            added = self.meta_added_cond_kwargs(1, resolution)
            capture = ActivationCapture(unet, self.activation_names(), stop_early=False)
            capture.run(lambda: unet(sample, 1, text, added_cond_kwargs=added, return_dict=False))
        # capture.features is filled in execution order
        return [ActivationInfo(name, *value.shape[1:4]) for name, value in capture.features.items()]

    def extract(
        self,
        images: Sequence[Image.Image] | torch.Tensor,
        selection: Sequence[str],
        settings: ExtractSettings | None = None,
        categories: Sequence[str] | None = None,
        progress: bool = False,
    ) -> Features:
        """Features of ``images`` for the activations in ``selection``: name → float32 N×C×h×w.

        ``images`` are PIL images (any size; resized per ``settings``) or a float tensor N×3×R×R
        already in [-1, 1]. ``categories`` (one per image) fill ``{category}`` in the prompt.
        """
        settings = settings or ExtractSettings.from_dict(self.default_settings)
        names = validate_selection(selection, self.activation_names(), self.name)
        resolution = settings.resolution or self.default_resolution
        self.check_resolution(resolution)
        if isinstance(images, torch.Tensor):
            pixels = images.float()
            if pixels.dim() != 4 or pixels.shape[1] != 3:
                raise DfbenchInputError(f"image tensor of shape {tuple(pixels.shape)}: expected N×3×H×W")
        else:
            pixels = to_model_input(images, resolution, settings.resize_mode, settings.pad_color, settings.resample)
        prompts = fill_prompts(settings.prompt, categories, len(pixels))
        if settings.timestep >= self.scheduler.config.num_train_timesteps:
            raise DfbenchInputError(
                f"timestep {settings.timestep}: this scheduler has {self.scheduler.config.num_train_timesteps} steps"
            )
        if self.dtype != TORCH_DTYPES[settings.dtype]:
            # casting here would be lossy both ways (bfloat16 → float32 cannot restore the weights)
            loaded = str(self.dtype).removeprefix("torch.")
            raise DfbenchInputError(
                f"settings.dtype={settings.dtype} but backbone {self.name} holds {loaded} weights; create it "
                f"with torch_dtype={settings.dtype!r} (the CLI does this from --dtype)"
            )

        members = settings.ensemble_size
        images_per_step = settings.images_per_batch
        steps = range(0, len(pixels), images_per_step)
        collected: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        with torch.inference_mode(), out_of_memory_as_input_error(self.name, resolution, settings.batch_size):
            for start in tqdm(steps, desc=f"extract {self.name}", disable=not progress, unit="batch"):
                chunk = pixels[start : start + images_per_step]
                posterior_eps, noise = per_image_draws(chunk, settings, self.unet.config.in_channels,
                                                       self.vae_scale_factor)
                latents = self._latents(chunk, posterior_eps, noise, settings)
                features = self._unet_features(latents, prompts[start : start + len(chunk)], names, settings)
                for name, value in features.items():
                    value = value.float().reshape(len(chunk), members, *value.shape[1:]).mean(dim=1)
                    collected[name].append(value)
        return {name: torch.cat(values) for name, values in collected.items()}

    # ------------------------------------------------------------------ extraction steps
    def _latents(
        self,
        pixels: torch.Tensor,
        posterior_eps: torch.Tensor | None,
        noise: torch.Tensor | None,
        settings: ExtractSettings,
    ) -> torch.Tensor:
        """Images → (image × member) rows of UNet input latents, noised to t when asked.

        ``posterior_eps`` and ``noise`` are the rows' draws (:func:`~dfbench.backbones.parts.per_image_draws`) or
        ``None``."""
        members = settings.ensemble_size
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(pixels.to(self.device, vae_dtype)).latent_dist
        mean = posterior.mean.float().repeat_interleave(members, dim=0)
        if posterior_eps is not None:
            std = posterior.std.float().repeat_interleave(members, dim=0)
            latents = mean + std * posterior_eps.to(mean.device)
        else:
            latents = mean
        latents = latents * self.vae.config.scaling_factor
        if noise is not None:
            timesteps = torch.full((len(latents),), settings.timestep, dtype=torch.long, device=latents.device)
            latents = self.scheduler.add_noise(latents, noise.to(latents.device), timesteps)
        return latents.to(self.dtype)

    def _unet_features(
        self, latents: torch.Tensor, prompts: list[str], names: list[str], settings: ExtractSettings
    ) -> Features:
        """Run the UNet over the rows in chunks of ``batch_size``; concatenate the captures."""
        members = settings.ensemble_size
        resolution = latents.shape[-1] * self.vae_scale_factor
        row_prompts = [prompt for prompt in prompts for _ in range(members)]
        capture = ActivationCapture(self.unet, names)
        pieces: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for start in range(0, len(latents), settings.batch_size):
            rows = latents[start : start + settings.batch_size]
            embeddings = [self.prompt_embedding(prompt) for prompt in row_prompts[start : start + len(rows)]]
            text = torch.cat([embedding.hidden_states for embedding in embeddings]).to(self.dtype)
            added = self.added_cond_kwargs_batch(embeddings, resolution)
            timesteps = torch.full((len(rows),), settings.timestep, dtype=torch.long, device=rows.device)
            captured = capture.run(functools.partial(
                self.unet, rows, timesteps, encoder_hidden_states=text, added_cond_kwargs=added, return_dict=False))
            for name in names:
                pieces[name].append(captured[name])
        return {name: torch.cat(values) for name, values in pieces.items()}

    def added_cond_kwargs_batch(self, embeddings: list[PromptEmbedding], resolution: int) -> dict | None:
        """:meth:`added_cond_kwargs` for rows with possibly different prompts."""
        per_row = [self.added_cond_kwargs(embedding, 1, resolution) for embedding in embeddings]
        first = per_row[0]
        if first is None:
            return None
        return {key: torch.cat([row[key] for row in per_row if row is not None]) for key in first}
