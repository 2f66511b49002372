"""DINOv3 (Siméoni et al., 2025) through transformers' ``DINOv3ViTModel``: today's reference row beside DINOv2.

The same backbone as DINOv2 (:class:`~dfbench.backbones.dinov2.Dinov2Backbone`: the activations ``embeddings``,
``blocks.{i}``, ``blocks.{i}.attn.{q,k,v}``, ``norm``, and ``<name>.cls`` / ``<name>.registers``; ImageNet mean/std;
the patch grid's tokens follow the CLS and the 4 register tokens) on a 16-pixel patch with RoPE positions (no
position embeddings to interpolate). Default 960 px: the 60×60 grid DINOv2 gets at 840 px. Needs transformers ≥ 4.56.
Random weights come from the bundled configs (``configs/dinov3/``, with their sources).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dfbench.backbones.dinov2 import Dinov2Backbone, create_dinov2
from dfbench.errors import DfbenchInputError

DEFAULT_RESOLUTION = 960
CONFIG_FOLDER = Path(__file__).parent / "configs" / "dinov3"
HUB_IDS = {"small": "facebook/dinov3-vits16-pretrain-lvd1689m", "base": "facebook/dinov3-vitb16-pretrain-lvd1689m",
           "large": "facebook/dinov3-vitl16-pretrain-lvd1689m"}


class Dinov3Backbone(Dinov2Backbone):
    """A DINOv3 ViT (see the module docstring): blocks at ``model.layer``, the final norm at ``norm``."""

    patch_size = 16

    def blocks(self) -> Any:
        return self.model.model.layer

    def final_norm(self) -> torch.nn.Module:
        return self.model.norm


def model_classes() -> tuple[Any, Any]:
    """transformers' DINOv3 config and model classes, or one line naming the version needed."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version("4.56"):
        raise DfbenchInputError(f"DINOv3 needs transformers ≥ 4.56 (installed: {transformers.__version__}); "
                                "pip install -U transformers")
    return transformers.DINOv3ViTConfig, transformers.DINOv3ViTModel


def bundled_config(size: str) -> dict[str, Any]:
    """The architecture of ``facebook/dinov3-vit{s,b,l}16-pretrain-lvd1689m`` (SOURCES.json)."""
    return json.loads((CONFIG_FOLDER / f"{size}.json").read_text())


def create_dinov3(name: str, config: dict[str, Any], hub_id: str, weights: str | None = None,
                  **kwargs: Any) -> Dinov3Backbone:
    """A DINOv3 backbone: pretrained (hub id or ``weights``), ``random`` (seeded) or ``meta`` (shapes only)."""
    kwargs.setdefault("default_resolution", DEFAULT_RESOLUTION)
    backbone = create_dinov2(name, config, hub_id, weights, classes=model_classes(), backbone_class=Dinov3Backbone,
                             **kwargs)
    assert isinstance(backbone, Dinov3Backbone)
    return backbone


def _factory(size: str):
    name, hub_id = f"dinov3-{size}", HUB_IDS[size]

    def factory(weights: str | None = None, **kwargs: Any) -> Dinov3Backbone:
        return create_dinov3(name, bundled_config(size), hub_id, weights, **kwargs)

    factory.__doc__ = f"{name}: {hub_id} (random weights from the bundled config with init='random')."
    return factory


dinov3_small, dinov3_base, dinov3_large = (_factory(size) for size in HUB_IDS)

#: a tiny DINOv3 for tests and the demo: 12 blocks as the base model, 32 channels, 2 heads of 16, 4 registers
TINY_CONFIG = {**bundled_config("base"), "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_dinov3(weights: str | None = None, *, init: str = "random", seed: int = 0, **kwargs: Any) -> Dinov3Backbone:
    """Tiny DINOv3 (random weights, the real module names), 64 px (a 4×4 grid) — tests and the demo."""
    init = "random" if init == "pretrained" else init
    backbone = create_dinov3("tiny-dinov3", dict(TINY_CONFIG), HUB_IDS["base"], weights, init=init, seed=seed,
                             default_resolution=64, **kwargs)
    if init == "meta" and weights is None:     # weightless: it stands for its seeded random weights
        backbone.source = "random init"
    return backbone
