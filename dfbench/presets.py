"""Named extraction recipes from the papers: a selection plus settings, each with its source.

A preset fixes *what* to extract; the backbone it was published with is recorded as
``backbone`` (a default — any backbone with the same module names can use the recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dfbench.registry import PRESETS
from dfbench.settings import ExtractSettings


@dataclass(frozen=True)
class Preset:
    """A published activation selection and the settings it was used with."""

    name: str
    selection: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None
    source: str = ""
    description: str = ""

    def extract_settings(self, **overrides: Any) -> ExtractSettings:
        """The preset's settings with ``overrides`` applied on top."""
        return ExtractSettings.from_dict({**self.settings, **overrides})


def _register(preset: Preset) -> None:
    PRESETS.register(preset.name, preset, override=True)


DIFT_SETTINGS = {"resolution": 768, "resize_mode": "squash", "timestep": 261, "ensemble_size": 8,
                 "prompt": "a photo of a {category}", "latent_mode": "sample"}
_register(Preset(
    "dift", ("up_blocks.1",), DIFT_SETTINGS, "sd21",
    "Tang et al., NeurIPS 2023 (DIFT), SPair-71k: SD2.1, img_size 768, t=261, up_ft_index=1, ensemble 8",
    "DIFT's SPair recipe: up_blocks.1 of SD2.1 at 768 px, t=261, 8 noise draws averaged",
))
_register(Preset(
    "cleandift-dift", ("up_blocks.1",),
    {**DIFT_SETTINGS, "ensemble_size": 1, "add_noise": False, "latent_mode": "mode"}, "cleandift-sd21",
    "Stracke et al., CVPR 2025 (CleanDIFT): their DIFT-style eval passes t=261 on the clean latent",
    "DIFT's recipe on CleanDIFT SD2.1: one clean (noise-free) pass, t=261 given to the UNet",
))

GDF_SOURCE = "Meng et al., NeurIPS 2024 (Darkbblue/generic-diffusion-feature), t=50"
GDF_PRESETS = {
    "gdf-ours-sd15": ("sd15", 512, (
        "up-level1-repeat1-vit-block0-cross-q", "up-level1-repeat2-res-out",
        "up-level2-repeat1-vit-block0-cross-q", "up-level3-repeat0-vit-block0-self-k")),
    "gdf-legacy-sd15": ("sd15", 512, (
        "up-level0-upsampler-out", "up-level1-upsampler-out", "up-level2-upsampler-out",
        "up-level3-repeat2-vit-out")),
    "gdf-ours-sdxl": ("sdxl", 1024, (
        "up-level0-repeat0-vit-block7-out", "up-level0-repeat0-vit-block5-out",
        "up-level1-repeat0-vit-block0-cross-q", "up-level1-repeat0-vit-block0-out")),
    "gdf-legacy-sdxl": ("sdxl", 1024, (
        "up-level0-upsampler-out", "up-level1-upsampler-out", "up-level2-repeat2-res-out")),
}
for _name, (_backbone, _resolution, _selection) in GDF_PRESETS.items():
    _kind = "selected activations (Ours)" if "ours" in _name else "legacy block-output selection"
    _register(Preset(
        _name, _selection, {"resolution": _resolution, "timestep": 50}, _backbone, GDF_SOURCE,
        f"Meng et al. {_kind} on {_backbone}, {_resolution} px, t=50",
    ))

CLEANDIFT_FEATURES = ("mid", *(f"us{index}" for index in range(1, 11)))
for _feature in CLEANDIFT_FEATURES:
    _register(Preset(
        f"cleandift-{_feature}", (_feature,), {"timestep": 261, "add_noise": False}, "cleandift-sd21",
        "CleanDIFT min_sd15.py / min_sd21.py feature names",
        f"CleanDIFT feature {_feature!r}: one clean pass at t=261",
    ))
