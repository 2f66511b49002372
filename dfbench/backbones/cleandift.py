"""CleanDIFT (Stracke et al., CVPR 2025): SD1.5 / SD2.1 with a UNet fine-tuned for noise-free input.

The weights are a full diffusers-key UNet state dict (``CompVis/cleandift`` files
``cleandift_sd15_unet.safetensors`` / ``cleandift_sd21_unet.safetensors``) loaded with
``load_state_dict(strict=True)`` into the base model's UNet, as the CleanDIFT README does.
Features come from one pass on the clean latent: no noise, timestep 261 by default (their
evaluation passes t=261); both stay configurable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from dfbench.backbones.base import DiffusionBackbone
from dfbench.backbones.stable_diffusion import sd15, sd21
from dfbench.errors import DfbenchInputError
from dfbench.hub import cached_file_when_offline

CLEANDIFT_REPO = "CompVis/cleandift"
CLEANDIFT_FILES = {"sd15": "cleandift_sd15_unet.safetensors", "sd21": "cleandift_sd21_unet.safetensors"}
CLEANDIFT_SETTINGS = {"timestep": 261, "add_noise": False}


def cleandift_unet_file(family: str, local_files_only: bool | None = None) -> Path:
    """The CleanDIFT UNet file for ``family`` from the hub cache (downloading it when online)."""
    from huggingface_hub import hf_hub_download


    filename = CLEANDIFT_FILES[family]
    cached = cached_file_when_offline(CLEANDIFT_REPO, filename, local_files_only, "pass unet_weights=FILE")
    if cached is not None:
        return cached
    try:
        return Path(hf_hub_download(CLEANDIFT_REPO, filename, local_files_only=bool(local_files_only)))
    except Exception as error:  # huggingface_hub raises several unrelated types offline / on 404
        raise DfbenchInputError(
            f"cannot get {CLEANDIFT_REPO}/{filename} ({type(error).__name__}); download it with "
            f"`hf download {CLEANDIFT_REPO} {filename}` on a machine with internet, or pass unet_weights=FILE"
        ) from None


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
            f"UNet weights {path}: keys do not match this UNet: {'; '.join(details)} — expected a full "
            "diffusers UNet2DConditionModel state dict for the same base model"
        )
    wrong = [key for key in expected if tuple(expected[key].shape) != tuple(state[key].shape)]
    if wrong:
        key = wrong[0]
        raise DfbenchInputError(
            f"UNet weights {path}: {len(wrong)} tensors have the wrong shape (e.g. {key}: "
            f"{tuple(state[key].shape)} vs {tuple(expected[key].shape)}) — weights for another base model?"
        )
    dtype = next(unet.parameters()).dtype
    unet.load_state_dict({key: value.to(dtype) for key, value in state.items()}, strict=True)


def _create(family: str, base: DiffusionBackbone, unet_weights: str | None, init: str,
            local_files_only: bool | None) -> DiffusionBackbone:
    if init == "meta":          # weightless: it stands for the weights it would load (a run's identity names them)
        base.source = f"{base.source} + {unet_weights or hub_unet_label(family)}"
    elif unet_weights is not None or init == "pretrained":
        load_unet_weights(base.denoiser, unet_weights or cleandift_unet_file(family, local_files_only))
        # the hub file by its name, not by this machine's cache path: the same weights are the same run anywhere
        base.source = f"{base.source} + {unet_weights or hub_unet_label(family)}"
    base.name = f"cleandift-{family}"
    base.default_settings = dict(CLEANDIFT_SETTINGS)
    return base


def cleandift_factory(family: str, base_factory: Callable[..., DiffusionBackbone]) -> Callable[..., DiffusionBackbone]:
    """The registry factory of CleanDIFT on ``family``: the base model (``weights``, ``init`` as its factory takes
    them) with the fine-tuned UNet (``unet_weights``, else the hub file); clean pass, t=261."""

    def factory(weights: str | None = None, *, unet_weights: str | None = None, init: str = "pretrained",
                torch_dtype: str = "float32", device: str | None = None, local_files_only: bool | None = None,
                seed: int = 0) -> DiffusionBackbone:
        check_unet_file(unet_weights)  # before the (long) base model load
        base = base_factory(weights, init=init, torch_dtype=torch_dtype, device=device,
                            local_files_only=local_files_only, seed=seed)
        return _create(family, base, unet_weights, init, local_files_only)

    factory.__doc__ = f"CleanDIFT {family}: {family} + {CLEANDIFT_REPO} {CLEANDIFT_FILES[family]}; clean pass, t=261."
    return factory


cleandift_sd15 = cleandift_factory("sd15", sd15)
cleandift_sd21 = cleandift_factory("sd21", sd21)
