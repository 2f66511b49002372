"""DINOv2 (Oquab et al., 2023) and DINOv2 with registers (Darcet et al., 2024) through transformers'
``Dinov2Model`` / ``Dinov2WithRegistersModel``: the reference rows of every diffusion-feature table.

Activations (square input, a multiple of the 14-pixel patch; default 840 px = a 60×60 grid;
ImageNet mean/std; position embeddings interpolated by transformers):

* ``embeddings`` — the patch embeddings + position embeddings (``hidden_states[0]``);
* ``blocks.{i}`` — the output of ``encoder.layer.{i}`` before the final norm (``hidden_states[i + 1]``;
  Tale of Two Features' "layer 11 token" is ``blocks.11``); a negative i counts from the end;
* ``blocks.{i}.attn.{q,k,v}`` — the query / key / value Linear outputs of block i;
* ``norm`` — the final LayerNorm's output (``last_hidden_state``).

Every map is N×C×h×w over the patch grid: the CLS token and the register tokens are dropped; they
are available as ``<name>.cls`` (N×C×1×1) and, with registers, ``<name>.registers`` (N×C×4×1).
Random weights come from the bundled configs (``backbones/configs/dinov2/``, the hub configs'
architecture fields); pretrained weights from the hub ids ``facebook/dinov2-*`` and
``facebook/dinov2-with-registers-*`` or a local folder (``weights=DIR``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dfbench.activations import ActivationInfo
from dfbench.backbones.parts import TORCH_DTYPES, default_device
from dfbench.cache import weight_fingerprint
from dfbench.capture import ActivationCapture
from dfbench.errors import DfbenchInputError, UnknownNameError
from dfbench.hub import hub_source
from dfbench.images import to_model_input
from dfbench.settings import ExtractSettings

PATCH_SIZE = 14
DEFAULT_RESOLUTION = 840
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONFIG_FOLDER = Path(__file__).parent / "configs" / "dinov2"
SIZES = ("small", "base", "large", "giant")
TOKEN_PARTS = ("cls", "registers")


def bundled_config(size: str, registers: bool) -> dict[str, Any]:
    """The architecture of ``facebook/dinov2[-with-registers]-<size>`` (image_size 518, patch 14)."""
    config = json.loads((CONFIG_FOLDER / f"{size}.json").read_text())
    if registers:
        config["num_register_tokens"] = 4
    return config


class Dinov2Backbone:
    """A DINOv2 ViT as a dfbench backbone (see the module docstring)."""

    default_resolution = DEFAULT_RESOLUTION
    #: pixels per patch side
    patch_size = PATCH_SIZE
    default_settings: dict[str, Any] = {}
    #: the extraction recipe's version (one recipe so far)
    recipe_version = 1
    setting_names = ("resolution", "resize_mode", "dtype", "batch_size", "pad_color", "resample")

    def __init__(self, name: str, model: torch.nn.Module, source: str, default_resolution: int = DEFAULT_RESOLUTION):
        self.name, self.source = name, source
        self.model: Any = model.eval()      # a transformers model: its config is read dynamically
        self.default_resolution = default_resolution
        config: Any = model.config
        self.layers: int = config.num_hidden_layers
        self.registers: int = getattr(config, "num_register_tokens", 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def check_resolution(self, resolution: int) -> None:
        patch = self.patch_size
        if resolution % patch or resolution < patch:
            raise DfbenchInputError(f"resolution {resolution}: {self.name} needs a multiple of its {patch}-pixel "
                                    f"patch (e.g. {max(1, round(resolution / patch)) * patch})")

    def map_names(self) -> list[str]:
        blocks = [name for index in range(self.layers)
                  for name in (f"blocks.{index}", *(f"blocks.{index}.attn.{part}" for part in "qkv"))]
        return ["embeddings", *blocks, "norm"]

    def activation_names(self) -> list[str]:
        token_maps = ["embeddings", *(f"blocks.{index}" for index in range(self.layers)), "norm"]
        tokens = [f"{name}.{part}" for name in token_maps for part in TOKEN_PARTS[: 2 if self.registers else 1]]
        return [*self.map_names(), *tokens]

    def canonical_selection(self, selection: Sequence[str]) -> list[str]:
        """Names with negative block indices resolved (``blocks.-1`` → the last block); unknown → one line."""
        valid, chosen = set(self.activation_names()), []
        for raw in selection:
            name = re.sub(r"^blocks\.(-\d+)", lambda match: f"blocks.{self.layers + int(match.group(1))}", raw.strip())
            if name not in valid:
                last = self.layers - 1
                raise UnknownNameError(f"{raw!r} is not an activation of {self.name} (blocks.0…blocks.{last},"
                                       " blocks.{i}.attn.{q,k,v}, embeddings, norm, <name>.cls"
                                       + (", <name>.registers" if self.registers else "") + ")")
            if name not in chosen:
                chosen.append(name)
        return chosen

    def weight_fingerprint(self) -> str:

        return weight_fingerprint([self.model])

    def catalog(self, resolution: int | None = None) -> list[ActivationInfo]:
        """Every activation with its channels and grid at ``resolution`` (no forward needed)."""
        resolution = resolution or self.default_resolution
        self.check_resolution(resolution)
        grid, hidden = resolution // self.patch_size, self.model.config.hidden_size
        rows = [ActivationInfo(name, hidden, grid, grid) for name in self.map_names()]
        for name in self.activation_names()[len(rows):]:
            rows.append(ActivationInfo(name, hidden, self.registers if name.endswith(".registers") else 1, 1))
        return rows

    def pixel_values(self, images: Sequence[Any] | torch.Tensor, settings: Any) -> torch.Tensor:
        """ImageNet-normalised N×3×R×R from PIL images (resized per settings) or a [-1, 1] tensor."""

        resolution = settings.resolution or self.default_resolution
        self.check_resolution(resolution)
        unit = (to_model_input(images, resolution, settings.resize_mode, settings.pad_color, settings.resample) + 1) / 2
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (unit - mean) / std

    def extract(self, images: Sequence[Any] | torch.Tensor, selection: Sequence[str], settings: Any = None,
                categories: Sequence[str] | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
        """Features of ``images``: {name: float32 N×C×h×w} (tokens: N×C×k×1), read by the one activation capture
        the diffusion backbones use; the forward stops after the last module asked for (later blocks never run)."""
        settings = settings or ExtractSettings(resolution=self.default_resolution)
        names = self.canonical_selection(selection)
        pixels = self.pixel_values(images, settings)
        grid = pixels.shape[-1] // self.patch_size
        capture = ActivationCapture(self.model, names, token_grid=(grid, grid), readers=self.readers(names))
        collected: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        step = max(1, settings.batch_size)
        with torch.inference_mode():
            for start in range(0, len(pixels), step):
                batch = pixels[start : start + step].to(self.device, self.dtype)
                features = capture.run(functools.partial(self.model, pixel_values=batch))
                for name in names:
                    collected[name].append(features[name].float().cpu())
        return {name: torch.cat(values) for name, values in collected.items()}

    def readers(self, names: list[str]) -> dict[str, tuple[str, Callable[[Any], torch.Tensor]]]:
        """Where each name is read and how: a module's token sequence (its patch tokens follow the CLS and
        register tokens, so the capture's trailing grid are they), or its CLS / register tokens as N×C×k×1."""
        paths = {id(module): path for path, module in self.model.named_modules()}
        registers = self.registers

        def part_reader(part: str) -> Callable[[Any], torch.Tensor]:
            def read(output: Any) -> torch.Tensor:
                sequence = output[0] if isinstance(output, (tuple, list)) else output
                if part == "cls":
                    return sequence[:, :1].transpose(1, 2)[..., None]
                if part == "registers":
                    return sequence[:, 1 : 1 + registers].transpose(1, 2)[..., None]
                return sequence
            return read

        readers = {}
        for name in names:
            base, part = name.rsplit(".", 1) if name.endswith(TOKEN_PARTS) else (name, "patches")
            readers[name] = (paths[id(self.hooked_module(base))], part_reader(part))
        return readers

    def hooked_module(self, name: str) -> torch.nn.Module:
        """The module whose output is the activation ``name`` (``embeddings``, ``blocks.i``, ``blocks.i.attn.q``,
        ``norm``: the final LayerNorm, whose output is ``last_hidden_state``)."""
        if name == "embeddings":
            return self.model.embeddings
        if name == "norm":
            return self.final_norm()
        block = re.fullmatch(r"blocks\.(\d+)(?:\.attn\.([qkv]))?", name)
        if block is None:
            raise UnknownNameError(f"{name!r}: not an activation of {self.name} (see `dfbench activations "
                                   f"{self.name}`)")
        layer = self.blocks()[int(block.group(1))]
        return qkv_linear(layer.attention, block.group(2)) if block.group(2) else layer

    def blocks(self) -> Any:
        """The ViT's blocks, in order (``encoder.layer``)."""
        return self.model.encoder.layer

    def final_norm(self) -> torch.nn.Module:
        """The LayerNorm whose output is ``last_hidden_state``."""
        return self.model.layernorm

    def to(self, device: str | torch.device, torch_dtype: str | None = None) -> Dinov2Backbone:

        self.model.to(device)
        if torch_dtype:
            self.model.to(TORCH_DTYPES[torch_dtype])
        return self


def qkv_linear(attention: torch.nn.Module, part: str) -> torch.nn.Module:
    """The query / key / value Linear of a block's attention: ``q_proj`` … in transformers ≥ 5,
    ``attention.query`` … before."""
    if hasattr(attention, f"{part}_proj"):
        return getattr(attention, f"{part}_proj")
    return getattr(attention.attention, {"q": "query", "k": "key", "v": "value"}[part])


def _model_classes(registers: bool) -> tuple[Any, Any]:
    import transformers

    if registers:
        if not hasattr(transformers, "Dinov2WithRegistersModel"):
            raise DfbenchInputError(f"DINOv2 with registers needs transformers ≥ 4.48 (installed: "
                                    f"{transformers.__version__}); pip install -U transformers")
        return transformers.Dinov2WithRegistersConfig, transformers.Dinov2WithRegistersModel
    return transformers.Dinov2Config, transformers.Dinov2Model


def create_dinov2(name: str, config: dict[str, Any], hub_id: str, weights: str | None = None, *,
                  init: str = "pretrained", torch_dtype: str = "float32", device: str | None = None,
                  local_files_only: bool | None = None, seed: int = 0,
                  default_resolution: int = DEFAULT_RESOLUTION, classes: tuple[Any, Any] | None = None,
                  backbone_class: type[Dinov2Backbone] = Dinov2Backbone) -> Dinov2Backbone:
    """A DINOv2 backbone (or, with its transformers ``classes`` and ``backbone_class``, another ViT of the same
    shape): pretrained (hub id or ``weights`` folder), ``random`` (seeded, from the bundled config) or ``meta``
    (shapes only)."""

    config_class, model_class = classes or _model_classes("num_register_tokens" in config)
    if weights is not None or init == "pretrained":

        source = weights or hub_id
        local_files_only = hub_source(name, source, local_files_only)
        extra = {"local_files_only": local_files_only} if local_files_only is not None else {}
        try:
            model = model_class.from_pretrained(source, dtype=TORCH_DTYPES[torch_dtype], **extra)
        except (OSError, ValueError) as error:
            first = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise DfbenchInputError(f"cannot load backbone {name} from {source!r} ({first}); "
                                    f"download it with `hf download {hub_id}` on a machine with internet, or pass "
                                    "--weights DIR") from None
    elif init in ("random", "meta"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.device("meta") if init == "meta" else torch.device("cpu"):
                model = model_class(config_class(**config))
        # weightless: it stands for the weights it would load (a run's identity names them)
        source = (weights or hub_id) if init == "meta" else f"{init} init"
    else:
        raise DfbenchInputError(f"init={init!r}: choose 'pretrained', 'random' or 'meta'")
    backbone = backbone_class(name, model, source, default_resolution)
    if init == "meta" and weights is None:
        return backbone
    return backbone.to(device or default_device(), torch_dtype)


def _factory(size: str, registers: bool):
    name = f"dinov2-{'reg-' if registers else ''}{size}"
    hub_id = f"facebook/dinov2-{'with-registers-' if registers else ''}{size}"

    def factory(weights: str | None = None, **kwargs: Any) -> Dinov2Backbone:
        return create_dinov2(name, bundled_config(size, registers), hub_id, weights, **kwargs)

    factory.__doc__ = f"{name}: {hub_id} (random weights from the bundled config with init='random')."
    return factory


dinov2_small, dinov2_base, dinov2_large, dinov2_giant = (_factory(size, False) for size in SIZES)
dinov2_reg_small, dinov2_reg_base, dinov2_reg_large, dinov2_reg_giant = (_factory(size, True) for size in SIZES)

#: a tiny DINOv2 for tests and the demo: 12 blocks as the base model, 32 channels, 2 heads
TINY_CONFIG = {"hidden_size": 32, "num_hidden_layers": 12, "num_attention_heads": 2, "mlp_ratio": 2,
               "image_size": 56, "patch_size": PATCH_SIZE, "layerscale_value": 1.0, "use_swiglu_ffn": False}


def tiny_dinov2(weights: str | None = None, *, init: str = "random", seed: int = 0, **kwargs: Any) -> Dinov2Backbone:
    """Tiny DINOv2 (random weights, the real module names), 56 px (a 4×4 grid) — tests and the demo."""
    init = "random" if init == "pretrained" else init
    backbone = create_dinov2("tiny-dinov2", dict(TINY_CONFIG), "facebook/dinov2-base", weights, init=init, seed=seed,
                             default_resolution=56, **kwargs)
    if init == "meta" and weights is None:     # weightless: it stands for its seeded random weights
        backbone.source = "random init"
    return backbone
