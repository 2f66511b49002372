"""A diffusion model as a feature extractor: a pipeline of parts that each family chooses.

A backbone turns an image batch, a selection of activation names and :class:`ExtractSettings`
into :data:`~dfbench.capture.Features`. The recipe (docs/recipes.md):

1. resize each image to res×res (``squash`` or ``pad``) and scale it to [-1, 1];
2. the **image encoder** (:mod:`dfbench.backbones.image_encoders`) encodes it **once** to its posterior and
   takes N latents from it — the mean (``mode``) or N seeded draws (``sample``) — shifted and scaled;
3. the **noise schedule** (:mod:`dfbench.backbones.noise`) noises each to timestep t (N seeded noises), unless
   ``add_noise`` is off (CleanDIFT);
4. the **denoiser call** (a family's :meth:`DiffusionBackbone.denoiser_call`) runs the UNet or DiT with the
   **text conditioner**'s embedding of the prompt (:mod:`dfbench.backbones.text`); the requested activations
   are captured by the family's **naming table** (:meth:`~DiffusionBackbone.activation_names`, token grid) and
   the forward stops right after the last one;
5. the N members' activations are averaged.

Random draws are **per image**, as in DIFT (``src/models/dift_sd.py``: a fresh ``latent_dist.sample()`` and
``torch.randn_like`` for every image and member), from a generator seeded by the settings' seed and the image's
content (:func:`~dfbench.backbones.parts.per_image_draws`): two images get independent noise (a shared field would
bias matches toward equal positions), and an image's features do not depend on its batch, the cache or the rank
that extracted it; the same seed gives bit-identical features on CPU.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import diffusers
import torch
from PIL import Image
from tqdm.auto import tqdm
from typing_extensions import Self

from dfbench.activations import ActivationInfo, addressable_names, validate_selection
from dfbench.backbones.compiled import compile_blocks
from dfbench.backbones.image_encoders import VaeEncoder
from dfbench.backbones.img2img import last_step_latents
from dfbench.backbones.noise import DiscreteNoise, FlowMatchingNoise
from dfbench.backbones.parts import (
    SD_SCHEDULER_CONFIG,
    TORCH_DTYPES,
    PromptEmbedding,
    byte_level_clip_tokenizer,
    default_device,
    encoder_from_config,
    fill_prompts,
    is_meta,
    load_error,
    out_of_memory_as_input_error,
    per_image_draws,
)
from dfbench.backbones.text import ClipText, TextConditioner
from dfbench.backbones.tiling import extract_tiled
from dfbench.backbones.truncation import load_denoiser
from dfbench.cache import weight_fingerprint
from dfbench.capture import ActivationCapture, Features
from dfbench.errors import DfbenchInputError
from dfbench.hub import hub_source
from dfbench.images import to_model_input
from dfbench.settings import ExtractSettings

#: Version of the extraction recipe: part of every feature-cache key and run record, so features
#: made by an earlier recipe are never reused or compared unknowingly. 1: one noise field per call,
#: shared by every image; 2: independent draws per image (:func:`~dfbench.backbones.parts.image_generator_seed`).
RECIPE_VERSION = 2


class DiffusionBackbone:
    """A latent-diffusion denoiser (plus VAE, text encoders, scheduler) used as a feature extractor.

    A family subclass names its parts — the denoiser's folder and diffusers class (:attr:`DENOISER`), its text
    conditioner (:attr:`TEXT`) — and implements the denoiser call (:meth:`denoiser_call`, :meth:`meta_call`);
    the UNet families read their names off the UNet (:meth:`activation_names`), the DiT families add a token grid.
    """

    #: a diffusion backbone uses every ExtractSettings field; other backbones declare fewer (a ViT: no timestep)
    setting_names: ClassVar[tuple[str, ...]] = tuple(field.name for field in dataclasses.fields(ExtractSettings))
    #: the denoiser's folder in a diffusers model folder and its diffusers class
    DENOISER: ClassVar[tuple[str, str]] = ("unet", "UNet2DConditionModel")
    #: how a prompt becomes conditioning (its COMPONENTS: the encoders' folders and transformers classes)
    TEXT: ClassVar[type[TextConditioner]] = ClipText
    #: the T5 tokens of the family's pipeline (``max_sequence_length``); 0: the conditioner's own
    MAX_SEQUENCE_LENGTH: ClassVar[int] = 0
    #: the stacks of numbered blocks whose names take negative indices (``transformer_blocks.-1``: the last)
    BLOCK_STACKS: ClassVar[tuple[str, ...]] = ()
    #: the scheduler class its folder is loaded with, and how a latent is noised to t
    SCHEDULER: ClassVar[str] = "DDPMScheduler"
    NOISE: ClassVar[type[DiscreteNoise] | type[FlowMatchingNoise]] = DiscreteNoise

    def __init__(self, name: str, denoiser: torch.nn.Module, vae: torch.nn.Module, scheduler: Any,
                 text: TextConditioner, default_resolution: int, source: str = "") -> None:
        self.name = name
        # diffusers models: their configs and call signatures are read dynamically, so typed as Any
        self.denoiser: Any = denoiser.eval().requires_grad_(False)
        self.image_encoder = VaeEncoder(vae.eval().requires_grad_(False))
        self.noise = self.NOISE(scheduler)
        self.text = text
        self.default_resolution = default_resolution
        self.source = source
        #: settings this model is meant to be used with (CleanDIFT: no noise): ``extract(settings=None)``'s, the CLI's
        self.default_settings: dict[str, Any] = {}
        #: the extraction recipe's version (:data:`RECIPE_VERSION`), recorded with cached features and runs
        self.recipe_version = RECIPE_VERSION
        #: denoising steps of GDF's img2img recipe (backbone option ``recipe=gdf-img2img``); 0: one denoiser call
        self.img2img_steps = 0
        #: the deepest denoiser block loaded, when the load was truncated (``--truncate``); ``None``: all of it
        self.truncated_after: str | None = None
        self._names: list[str] | None = None

    @property
    def vae(self) -> Any:
        return self.image_encoder.vae

    @property
    def scheduler(self) -> Any:
        return self.noise.scheduler

    @property
    def text_encoders(self) -> list[Any]:
        return self.text.encoders

    @property
    def tokenizers(self) -> list[Any]:
        return self.text.tokenizers

    @property
    def loaded_encoders(self) -> list[Any]:
        """The text encoders with weights (``--text-encoders clip|none`` leaves some out)."""
        return [encoder for encoder in self.text_encoders if not is_meta(encoder)]

    @classmethod
    def text_conditioner(cls, encoders: Sequence[Any], tokenizers: Sequence[Any]) -> TextConditioner:
        """The family's text conditioner over loaded encoders, with the family's T5 length where it has one."""
        return cls.TEXT(encoders, tokenizers, cls.MAX_SEQUENCE_LENGTH or None)

    @classmethod
    def from_pretrained(cls, name: str, model_id: str | Path, default_resolution: int, torch_dtype: str = "float32",
                        device: str | None = None, local_files_only: bool | None = None,
                        text_encoders: str = "all", load_only: Sequence[str] | None = None) -> Self:
        """Load every component with diffusers/transformers ``from_pretrained`` from a hub id or a
        local diffusers folder (the denoiser's folder, ``vae/ scheduler/`` and the text encoders' folders); the
        encoders ``text_encoders`` leaves out are built from their config only (:meth:`TextConditioner.skipped`).
        ``load_only``: canonical activation names — the denoiser's blocks past the deepest of them are never loaded
        (:mod:`dfbench.backbones.truncation`; families with numbered block stacks)."""
        dtype = TORCH_DTYPES[torch_dtype]
        model_id = str(model_id)
        local_files_only = hub_source(name, model_id, local_files_only)
        common = {"local_files_only": local_files_only} if local_files_only is not None else {}
        folder, class_name = cls.DENOISER
        try:
            denoiser, truncated_after = load_denoiser(getattr(diffusers, class_name), model_id, folder, dtype,
                                                      load_only if cls.BLOCK_STACKS else None, cls.BLOCK_STACKS,
                                                      local_files_only)
            vae = diffusers.AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=dtype, **common)
            scheduler = getattr(diffusers, cls.SCHEDULER).from_pretrained(model_id, subfolder="scheduler", **common)
            encoders, tokenizers = cls.TEXT.load(model_id, cls.TEXT.skipped(text_encoders), dtype,
                                                 local_files_only)
        except (OSError, ValueError) as error:
            folders = (folder, "vae", "scheduler", *(part for entry in cls.TEXT.COMPONENTS for part in entry[:2]))
            raise load_error(name, model_id, folders, error) from None
        backbone = cls(name, denoiser, vae, scheduler, cls.text_conditioner(encoders, tokenizers),
                       default_resolution, source=model_id)
        backbone.truncated_after = truncated_after
        return backbone.to(device or default_device(), torch_dtype)

    @classmethod
    def from_configs(cls, name: str, configs: dict[str, dict[str, Any]], default_resolution: int,
                     init: str = "random", seed: int = 0, device: str | None = None,
                     torch_dtype: str = "float32", text_encoders: str = "all") -> Self:
        """Build from architecture configs with seeded random weights (``init="random"``) or with no
        weights at all on the meta device (``init="meta"``: shapes only). Random-weight models get an offline
        byte-level tokenizer (real checkpoints bring their own)."""
        if init not in ("random", "meta"):
            raise DfbenchInputError(f"init={init!r}: choose 'pretrained', 'random' or 'meta'")
        folder, class_name = cls.DENOISER
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.device("meta") if init == "meta" else nullcontext():
                denoiser = getattr(diffusers, class_name).from_config(configs[folder])
                vae = diffusers.AutoencoderKL.from_config(configs["vae"])
                skipped = cls.TEXT.skipped(text_encoders)
                encoders = []
                for index, (model_folder, _, encoder_class) in enumerate(cls.TEXT.COMPONENTS):
                    with torch.device("meta") if index in skipped else nullcontext():
                        encoders.append(encoder_from_config(encoder_class, configs[model_folder]))
        tokenizers = [byte_level_clip_tokenizer() for _ in cls.TEXT.COMPONENTS]
        # the training noise schedule: the bundled scheduler's betas (any sampler's config), else Stable Diffusion's
        scheduler = (getattr(diffusers, cls.SCHEDULER).from_config(configs["scheduler"]) if "scheduler" in configs
                     else diffusers.DDPMScheduler(**SD_SCHEDULER_CONFIG))
        backbone = cls(name, denoiser, vae, scheduler, cls.text_conditioner(encoders, tokenizers),
                       default_resolution, source=f"{init} init")
        if init == "meta":
            return backbone
        return backbone.to(device or default_device(), torch_dtype)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write every component in the diffusers folder layout (loadable by :meth:`from_pretrained`)."""
        directory = Path(directory)
        self.denoiser.save_pretrained(directory / self.DENOISER[0])
        self.vae.save_pretrained(directory / "vae")
        self.scheduler.save_pretrained(directory / "scheduler")
        for (model_folder, tokenizer_folder, _), encoder, tokenizer in zip(
            self.TEXT.COMPONENTS, self.text_encoders, self.tokenizers, strict=True
        ):
            if not is_meta(encoder):          # an encoder --text-encoders left out has no weights to write
                encoder.save_pretrained(directory / model_folder)
            tokenizer.save_pretrained(directory / tokenizer_folder)

    def to(self, device: str | torch.device, torch_dtype: str | None = None) -> Self:
        """Move every model to ``device`` (and cast to ``torch_dtype``); returns ``self``."""
        dtype = TORCH_DTYPES[torch_dtype] if torch_dtype else None
        for module in (self.denoiser, self.vae, *self.loaded_encoders):
            module.to(device)
            if dtype is not None and next(module.parameters()).dtype != dtype:
                module.to(dtype)
        if torch_dtype and torch_dtype == "float16" and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)  # the SDXL VAE overflows in float16
        if torch_dtype == "bfloat16" and torch.device(device).type == "cpu":
            self.vae.to(torch.float32)  # a CPU's bfloat16 convolutions take a slow path (178× float32's here)
        self.text.clear()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        return self.image_encoder.scale_factor

    def prompt_embedding(self, prompt: str, text_encoders: str = "all") -> PromptEmbedding:
        """The text conditioner's embedding of ``prompt`` by ``text_encoders`` (once per distinct prompt and mode)."""
        return self.text.embedding(prompt, self.device, text_encoders)

    @property
    def patch_size(self) -> int:
        """Latent cells per token side: 1 for a UNet, a DiT's patch (2 for PixArt, SD3 and FLUX's packing)."""
        return 1

    def check_resolution(self, resolution: int) -> None:
        """The input size rule: a multiple of the image encoder's factor (8) times the patch size."""
        factor = self.vae_scale_factor * self.patch_size
        if resolution < factor or resolution % factor:
            raise DfbenchInputError(f"settings.resolution={resolution}: {self.name} needs a positive multiple "
                                    f"of {factor} (e.g. {self.default_resolution})")

    def weight_fingerprint(self) -> str:
        """A fingerprint of the weights actually loaded (denoiser, VAE, text encoders; see the cache), and of the
        backbone options that change the activations (:meth:`activation_options`), when there are any."""
        return weight_fingerprint([self.denoiser, self.vae, *self.loaded_encoders], self.activation_options())

    def activation_options(self) -> dict[str, Any]:
        """Backbone options that change the activations (a FLUX σ rule, a recipe): part of the cache key."""
        return {}

    def configure(self, options: dict[str, Any]) -> None:
        """Apply backbone options (``--backbone-option``); a family without options refuses any in one line."""
        raise DfbenchInputError(f"backbone {self.name} takes no backbone options (given: {', '.join(options)})")

    def denoiser_call(self, rows: torch.Tensor, timesteps: torch.Tensor, embeddings: list[PromptEmbedding],
                      resolution: int) -> Callable[[], Any]:
        """The forward over ``rows`` (latents at ``timesteps``, one prompt embedding per row), for the capture."""
        raise NotImplementedError

    def prediction(self, output: Any, latents: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction from a call's ``output``, shaped as ``latents`` (for a scheduler's step)."""
        return output[0]

    def meta_call(self, denoiser: Any, resolution: int) -> Callable[[], Any]:
        """A shape-only forward of ``denoiser`` (built on the meta device) for one image at ``resolution``."""
        raise NotImplementedError

    def capture(self, denoiser: Any, names: list[str], resolution: int, stop_early: bool = True) -> ActivationCapture:
        """The hooks that record ``names`` on ``denoiser`` at ``resolution`` (a family with several streams per
        block says which one is the image's)."""
        return ActivationCapture(denoiser, names, stop_early=stop_early, token_grid=self.token_grid(resolution))

    def token_grid(self, resolution: int) -> tuple[int, int] | None:
        """The patch grid (rows, columns) that the denoiser's token sequences form at ``resolution``; ``None`` for
        a UNet, whose tokens take the grid of their enclosing ``Transformer2DModel``."""
        if self.patch_size == 1:
            return None
        side = resolution // self.vae_scale_factor // self.patch_size
        return side, side

    def canonical_selection(self, selection: Sequence[str]) -> list[str]:
        """``selection`` with aliases resolved to canonical names and negative block indices counted from the end of
        their stack (:attr:`BLOCK_STACKS`); an unknown name is one clear error."""
        sizes = {stack: len(getattr(self.denoiser, stack)) for stack in self.BLOCK_STACKS}
        resolved = [re.sub(r"^(\w+)\.(-\d+)(?=\.|$)",
                           lambda match: f"{match[1]}.{sizes[match[1]] + int(match[2])}" if match[1] in sizes
                           else match[0], name.strip()) for name in selection]
        return validate_selection(resolved, self.activation_names(), self.name)

    def activation_names(self) -> list[str]:
        """Every canonical activation name this backbone offers."""
        if self._names is None:
            self._names = addressable_names(self.denoiser)
        return self._names

    def catalog(self, resolution: int | None = None) -> list[ActivationInfo]:
        """Every addressable activation with its channels and spatial size at ``resolution``,
        in execution order — from a forward on the meta device (no weights, no compute)."""
        resolution = resolution or self.default_resolution
        self.check_resolution(resolution)
        with torch.device("meta"):
            denoiser = type(self.denoiser).from_config(self.denoiser.config)
            capture = self.capture(denoiser, self.activation_names(), resolution, stop_early=False)
            capture.run(self.meta_call(denoiser, resolution))
        # capture.features is filled in execution order
        return [ActivationInfo(name, *value.shape[1:4]) for name, value in capture.features.items()]

    def extract(self, images: Sequence[Image.Image] | torch.Tensor, selection: Sequence[str],
                settings: ExtractSettings | None = None, categories: Sequence[str] | None = None,
                progress: bool = False) -> Features:
        """Features of ``images`` for the activations in ``selection``: name → float32 N×C×h×w.

        ``images`` are PIL images (any size; resized per ``settings``) or a float tensor N×3×R×R
        already in [-1, 1]. ``categories`` (one per image) fill ``{category}`` in the prompt.
        """
        settings = settings or ExtractSettings.from_dict(self.default_settings)
        names = self.canonical_selection(selection)
        resolution = settings.resolution or self.default_resolution
        self.check_resolution(resolution)
        if isinstance(images, torch.Tensor):
            pixels = images.float()
            if pixels.dim() != 4 or pixels.shape[1] != 3:
                raise DfbenchInputError(f"image tensor of shape {tuple(pixels.shape)}: expected N×3×H×W")
        else:
            pixels = to_model_input(images, resolution, settings.resize_mode, settings.pad_color, settings.resample)
        if settings.tile:               # ODISE's sliding window: each square through this method, then stitched
            return extract_tiled(self, pixels, names, settings, categories, progress)
        if settings.compile:
            compile_blocks(self, names)
        prompts = fill_prompts(settings.prompt, categories, len(pixels))
        self.noise.check(settings.timestep)
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
                posterior_eps, noise = per_image_draws(chunk, settings, self.vae.config.latent_channels,
                                                       self.vae_scale_factor)
                latents = self.image_encoder.encode(chunk, posterior_eps, members, self.device)
                img2img_noise = noise if self.img2img_steps else None      # GDF's img2img recipe noises per step
                if noise is not None and img2img_noise is None:
                    latents = self.noise.add(latents, noise, settings.timestep)
                features = self._denoiser_features(latents.to(self.dtype), prompts[start : start + len(chunk)],
                                                   names, settings, img2img_noise)
                for name, value in features.items():
                    value = value.float().reshape(len(chunk), members, *value.shape[1:]).mean(dim=1)
                    collected[name].append(value)
        return {name: torch.cat(values) for name, values in collected.items()}

    def _denoiser_features(self, latents: torch.Tensor, prompts: list[str], names: list[str],
                           settings: ExtractSettings, img2img_noise: torch.Tensor | None = None) -> Features:
        """Run the denoiser over the rows in chunks of ``batch_size``; concatenate the captures. With
        ``img2img_noise`` the latents are clean and each chunk is first denoised to the recipe's last step
        (:mod:`dfbench.backbones.img2img`)."""
        members = settings.ensemble_size
        resolution = latents.shape[-1] * self.vae_scale_factor   # the input's own size (a tensor input may differ)
        row_prompts = [prompt for prompt in prompts for _ in range(members)]
        capture = self.capture(self.denoiser, names, resolution)
        pieces: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for start in range(0, len(latents), settings.batch_size):
            rows = latents[start : start + settings.batch_size]
            embeddings = [self.prompt_embedding(prompt, settings.text_encoders)
                          for prompt in row_prompts[start : start + len(rows)]]
            if img2img_noise is not None:
                rows, timesteps = last_step_latents(self, rows, img2img_noise[start : start + len(rows)], embeddings,
                                                    resolution, settings.timestep, self.img2img_steps)
            else:
                timesteps = self.noise.model_timesteps(settings.timestep, rows)
            captured = capture.run(self.denoiser_call(rows, timesteps, embeddings, resolution))
            for name in names:
                pieces[name].append(captured[name])
        return {name: torch.cat(values) for name, values in pieces.items()}
