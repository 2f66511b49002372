"""CleanDIFT (Stracke et al., CVPR 2025): SD1.5 / SD2.1 with a UNet fine-tuned for noise-free input.

The weights are a full diffusers-key UNet state dict (``CompVis/cleandift`` files
``cleandift_sd15_unet.safetensors`` / ``cleandift_sd21_unet.safetensors``) loaded with
``load_state_dict(strict=True)`` into the base model's UNet, as the CleanDIFT README does.
Features come from one pass on the clean latent: no noise, timestep 261 by default (their
evaluation passes t=261); both stay configurable.

Backbone option ``full=FILE|hub``: CleanDIFT's *full* checkpoint (``cleandift_sd21_full.safetensors``, the
``state_dict()`` of their ``StableFeatureAligner``, ``src/sd_feature_extraction.py`` 230-326, as ``train.py``
95 saves it). Its feature extractor was trained with ``learn_timestep: True``
(``configs/sd21_feature_extractor.yaml`` 23): the timestep is the parameter ``timestep`` (``t_init`` 261,
line 324), and ``get_features`` tells the UNet that parameter on the clean latent (lines 474-478). dfbench reads
``timestep`` and, when the file holds them, the fine-tuned UNet's tensors (``unet_feature_extractor_cleandift.*``,
diffusers' key names), and tells the UNet the learned value *in the weights' dtype*: CleanDIFT's depth notebook
casts the whole model with ``.bfloat16()`` (``notebooks/depth.ipynb``), and bfloat16 keeps 8 significant bits, so
between 256 and 512 only even values exist — 261 itself becomes 260 (a tie, rounded to even). The value told
replaces ``settings.timestep`` for the denoiser (the recorded setting still names what the settings asked).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfbench.backbones.noise import DiscreteNoise
from dfbench.backbones.stable_diffusion import MODEL_CARDS, StableDiffusionBackbone, card_factory
from dfbench.errors import DfbenchInputError
from dfbench.hub import hub_file
from dfbench.options import parse_options

CLEANDIFT_REPO = "CompVis/cleandift"
CLEANDIFT_FILES = {"sd15": "cleandift_sd15_unet.safetensors", "sd21": "cleandift_sd21_unet.safetensors"}
#: CleanDIFT's full checkpoints on the hub (their depth notebook loads the SD2.1 one)
CLEANDIFT_FULL_FILES = {"sd21": "cleandift_sd21_full.safetensors"}
CLEANDIFT_SETTINGS = {"timestep": 261, "add_noise": False}
#: the key prefix of the fine-tuned UNet in the full checkpoint (``self.unet_feature_extractor_cleandift``)
FULL_UNET_PREFIX = "unet_feature_extractor_cleandift."
#: the learned timestep's key in the full checkpoint (``self.timestep = nn.Parameter(...)``)
FULL_TIMESTEP_KEY = "timestep"


def cleandift_unet_file(family: str, local_files_only: bool | None = None) -> Path:
    """The CleanDIFT UNet file for ``family`` from the hub cache (downloading it when online)."""
    return hub_file(CLEANDIFT_REPO, CLEANDIFT_FILES[family], local_files_only, "pass unet_weights=FILE")


def hub_unet_label(family: str) -> str:
    """How the hub's CleanDIFT UNet of ``family`` is named in a run's weights: ``CompVis/cleandift/<file>``."""
    return f"{CLEANDIFT_REPO}/{CLEANDIFT_FILES[family]}"


def check_unet_file(unet_weights: str | None) -> None:
    """A given ``--unet-weights`` file must exist: one line naming it, before anything is loaded."""
    if unet_weights is not None and not Path(unet_weights).is_file():
        raise DfbenchInputError(f"--unet-weights {unet_weights}: no such file (the fine-tuned UNet state dict, "
                                f"e.g. cleandift_sd15_unet.safetensors from {CLEANDIFT_REPO})")


def load_unet_weights(unet: torch.nn.Module, path: str | Path) -> None:
    """Load a full diffusers-key UNet state dict from a safetensors file, strictly.

    A missing file, a file that is not safetensors, missing or unexpected keys, or a wrong tensor
    shape each fail with one line that names the file and what is wrong.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DfbenchInputError(f"UNet weights {path}: no such file")
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError for damaged files
        raise DfbenchInputError(f"UNet weights {path}: not a readable safetensors file ({error})") from None
    load_unet_state(unet, state, f"UNet weights {path}")


def load_unet_state(unet: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` (diffusers' UNet keys) into ``unet`` strictly: one line (``where`` first) on missing or
    unexpected keys or a wrong shape."""
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
        raise DfbenchInputError(
            f"{where}: keys do not match this UNet: {'; '.join(details)} — expected a full "
            "diffusers UNet2DConditionModel state dict for the same base model"
        )
    wrong = [key for key in expected if tuple(expected[key].shape) != tuple(state[key].shape)]
    if wrong:
        key = wrong[0]
        raise DfbenchInputError(
            f"{where}: {len(wrong)} tensors have the wrong shape (e.g. {key}: "
            f"{tuple(state[key].shape)} vs {tuple(expected[key].shape)}) — weights for another base model?"
        )
    dtype = next(unet.parameters()).dtype
    unet.load_state_dict({key: value.to(dtype) for key, value in state.items()}, strict=True)


@dataclass(frozen=True)
class FullCheckpoint:
    """What dfbench reads from CleanDIFT's full checkpoint: the learned timestep and, when there, the UNet."""

    timestep: float
    unet: dict[str, torch.Tensor]


def read_full_checkpoint(path: str | Path) -> FullCheckpoint:
    """The learned ``timestep`` and the ``unet_feature_extractor_cleandift.*`` tensors (prefix removed) of a full
    CleanDIFT checkpoint, read lazily (the base UNet, VAE and adapters it also holds are not loaded). One line
    when the file is missing, unreadable, or has no ``timestep``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DfbenchInputError(f"CleanDIFT full checkpoint {path}: no such file (full=FILE or full=hub)")
    try:
        with safe_open(str(path), "pt") as handle:
            keys = list(handle.keys())
            if FULL_TIMESTEP_KEY not in keys:
                raise DfbenchInputError(
                    f"CleanDIFT full checkpoint {path}: no {FULL_TIMESTEP_KEY!r} tensor (the learned timestep); "
                    f"expected the state dict of CleanDIFT's StableFeatureAligner ({CLEANDIFT_FULL_FILES['sd21']})")
            timestep = handle.get_tensor(FULL_TIMESTEP_KEY)
            unet = {key.removeprefix(FULL_UNET_PREFIX): handle.get_tensor(key)
                    for key in keys if key.startswith(FULL_UNET_PREFIX)}
    except DfbenchInputError:
        raise
    except Exception as error:  # safetensors raises its own SafetensorError for damaged files
        raise DfbenchInputError(f"CleanDIFT full checkpoint {path}: not a readable safetensors file ({error})"
                                ) from None
    if timestep.numel() != 1:
        raise DfbenchInputError(f"CleanDIFT full checkpoint {path}: {FULL_TIMESTEP_KEY!r} has shape "
                                f"{tuple(timestep.shape)}; expected one value")
    return FullCheckpoint(float(timestep.float().reshape(())), unet)


def timestep_in_dtype(value: float, dtype: torch.dtype) -> float:
    """``value`` as a parameter of ``dtype`` holds it (CleanDIFT casts its model, learned timestep included):
    bfloat16 rounds 261 to 260."""
    return float(torch.tensor(value, dtype=torch.float32).to(dtype).float())


class LearnedTimestepNoise(DiscreteNoise):
    """DDPM noising as usual, but the denoiser is told CleanDIFT's learned timestep (a float), whatever t."""

    def __init__(self, scheduler: Any, told: float) -> None:
        super().__init__(scheduler)
        self.told = told

    def model_timesteps(self, timestep: int, rows: torch.Tensor) -> torch.Tensor:
        return torch.full((len(rows),), self.told, dtype=torch.float32, device=rows.device)


@dataclass(frozen=True)
class CleanDiftOptions:
    """Backbone options of CleanDIFT (``--backbone-option KEY=VALUE``). full: CleanDIFT's full checkpoint — a file,
    or ``hub`` for ``CompVis/cleandift``'s (SD2.1) — whose learned timestep the UNet is told (and whose UNet, when
    it holds one, is loaded)."""

    full: str | None = None

    def validate(self, where: str) -> None:
        if self.full not in (None, "hub") and not Path(str(self.full)).is_file():
            raise DfbenchInputError(f"{where} option full={self.full}: no such file (CleanDIFT's full checkpoint, "
                                    f"e.g. {CLEANDIFT_FULL_FILES['sd21']}, or full=hub)")


class CleanDiftBackbone(StableDiffusionBackbone):
    """SD1.5 / SD2.1 with CleanDIFT's UNet (see the module docstring)."""

    #: the options in force (the defaults until :meth:`configure`)
    cleandift_options: CleanDiftOptions = CleanDiftOptions()
    #: the full checkpoint's learned timestep as stored (float32), when one is loaded
    learned_timestep: float | None = None

    @property
    def options(self) -> dict[str, Any]:
        """The options off their defaults (none: a plain CleanDIFT run, whose identity has no options)."""
        return {key: value for key, value in dataclasses.asdict(self.cleandift_options).items() if value is not None}

    @property
    def told_timestep(self) -> float | None:
        """The learned timestep as the UNet is told it (in the weights' dtype), when a full checkpoint is loaded."""
        noise = self.noise
        return noise.told if isinstance(noise, LearnedTimestepNoise) else None

    def describe(self) -> str:
        """The options in one line, for the leaderboard."""
        if self.learned_timestep is None:
            return f"full checkpoint {self.cleandift_options.full}" if self.cleandift_options.full else ""
        dtype = str(self.dtype).removeprefix("torch.")
        return f"learned t = {self.learned_timestep:.4g} (told {self.told_timestep:g} in {dtype})"

    def activation_options(self) -> dict[str, Any]:
        """The learned timestep told, when a full checkpoint is loaded (it changes the activations)."""
        return {"told_timestep": self.told_timestep} if self.told_timestep is not None else {}

    def full_checkpoint(self, family: str, local_files_only: bool | None) -> FullCheckpoint | None:
        """The full checkpoint named by option ``full``, read (None without one)."""
        full = self.cleandift_options.full
        if full is None:
            return None
        path = (hub_file(CLEANDIFT_REPO, CLEANDIFT_FULL_FILES[family], local_files_only, "pass full=FILE")
                if full == "hub" else Path(full))
        return read_full_checkpoint(path)

    def use_learned_timestep(self, value: float) -> None:
        """Tell the UNet ``value`` (the full checkpoint's timestep) as the model's dtype holds it."""
        self.learned_timestep = value
        self.noise = LearnedTimestepNoise(self.noise.scheduler, timestep_in_dtype(value, self.dtype))


def _create(family: str, base: CleanDiftBackbone, unet_weights: str | None, init: str,
            local_files_only: bool | None, options: CleanDiftOptions) -> CleanDiftBackbone:
    """CleanDIFT's UNet into the base model: from the full checkpoint when it holds one (option ``full``), else
    ``unet_weights`` or the hub file. The source names the UNet file and the full checkpoint alike, whichever the
    UNet came from, so a weightless backbone (which reads neither) has the same identity."""
    base.cleandift_options = options
    full = options.full
    if full == "hub" and family not in CLEANDIFT_FULL_FILES:
        raise DfbenchInputError(f"backbone cleandift-{family} option full=hub: {CLEANDIFT_REPO} publishes a full "
                                "checkpoint for SD2.1 only; pass full=FILE")
    # the hub files by their names, not by this machine's cache path: the same weights are the same run anywhere
    label = f"{base.source} + {unet_weights or hub_unet_label(family)}"
    if full is not None:
        label += f" (full: {f'{CLEANDIFT_REPO}/{CLEANDIFT_FULL_FILES[family]}' if full == 'hub' else full})"
    if init != "meta":
        checkpoint = base.full_checkpoint(family, local_files_only)
        if checkpoint is not None and checkpoint.unet:
            load_unet_state(base.denoiser, checkpoint.unet, f"CleanDIFT full checkpoint {full} (its UNet)")
        elif unet_weights is not None or init == "pretrained":
            load_unet_weights(base.denoiser, unet_weights or cleandift_unet_file(family, local_files_only))
        if checkpoint is not None:
            base.use_learned_timestep(checkpoint.timestep)
    if init == "meta" or unet_weights is not None or init == "pretrained":
        base.source = label
    base.name = f"cleandift-{family}"
    base.default_settings = dict(CLEANDIFT_SETTINGS)
    return base


def cleandift_factory(family: str) -> Callable[..., CleanDiftBackbone]:
    """The registry factory of CleanDIFT on ``family``: the base model (``weights``, ``init`` as its factory takes
    them) with the fine-tuned UNet (``unet_weights``, else the hub file); clean pass, t=261; backbone option
    ``full`` (:class:`CleanDiftOptions`)."""
    base_factory = card_factory(MODEL_CARDS[family], CleanDiftBackbone)

    def factory(weights: str | None = None, *, unet_weights: str | None = None, init: str = "pretrained",
                options: dict[str, Any] | None = None, torch_dtype: str = "float32", device: str | None = None,
                local_files_only: bool | None = None, seed: int = 0) -> CleanDiftBackbone:
        check_unet_file(unet_weights)  # before the (long) base model load
        parsed = parse_options(CleanDiftOptions, options, f"backbone cleandift-{family}")   # checked before it, too
        base = base_factory(weights, init=init, torch_dtype=torch_dtype, device=device,
                            local_files_only=local_files_only, seed=seed)
        return _create(family, base, unet_weights, init, local_files_only, parsed)

    factory.__doc__ = f"CleanDIFT {family}: {family} + {CLEANDIFT_REPO} {CLEANDIFT_FILES[family]}; clean pass, t=261."
    return factory


cleandift_sd15 = cleandift_factory("sd15")
cleandift_sd21 = cleandift_factory("sd21")
