"""dfbench's pieces in mmsegmentation's registries, for the ``gdf-uper`` protocol.

- ``FrozenFeatureBackbone``: any registered dfbench backbone + activation selection + settings as an
  mmseg backbone. Each input crop (N×3×H×W in [-1, 1], from ``SegDataPreProcessor``) is resized
  bilinearly to the backbone's resolution, the selected activations are extracted under
  ``torch.no_grad`` (nothing is stored for backward; the backbone's weights are not a submodule, so
  they are neither trained nor written into checkpoints) and concatenated per *level*: the
  activations that share a spatial size, levels ordered from the smallest map to the largest, as
  GDF's ``feature_layers`` are (``segmentation/configs/ade_sd15.py:59-63``: SD1.5 "Ours" gives
  [2560, 640, 320] channels at 16², 32², 64²).
- ``GdfResidualAdapter``: GDF's trainable adapter (``segmentation/models/diffusion_segmentor.py``
  ``ResBlock`` 23-41, used at 128-133 and 233-246): a residual block on each activation's channels,
  then one on each level's concatenation. Every conv and BatchNorm weight and bias starts at zero, as
  GDF initialises them, so each block starts as the identity.

- ``GdfAmalgamatedAdapter``: the same for an amalgamation of several models (``<source>:<name>`` activations),
  as GDF's multi-model segmentor.

- ``ValidationRecordHook`` (``HOOKS``): every validation's mIoU and the weights at the best one (``report=best``).
- ``SignCheckpointsHook`` (``HOOKS``): signs each checkpoint mmengine saves (:mod:`dfbench.signing`), so a
  resume loads only checkpoints this machine's dfbench wrote.

mmseg's own ``EncoderDecoder``, decode heads, losses and slide inference do everything else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfbench.backbones.protocol import Backbone
from dfbench.settings import ExtractSettings
from dfbench.tasks.segmentation.mmseg_compat import ensure_mmcv_ops

ensure_mmcv_ops()

from mmengine.hooks import Hook  # noqa: E402  (after the mmcv.ops stand-in)
from mmengine.model import BaseModule  # noqa: E402
from mmseg.registry import HOOKS, MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

from dfbench.atomic import atomic_write, atomic_write_text  # noqa: E402
from dfbench.signing import sign  # noqa: E402

register_all_modules(init_default_scope=False)   # mmseg's models, datasets, transforms, metrics, hooks


def feature_levels(shapes: dict[str, tuple[int, int, int]]) -> list[list[str]]:
    """Activation names grouped by spatial size (``shapes``: name → (C, h, w)), levels from the
    smallest map to the largest; within a level, in the order given."""
    sizes = sorted({shape[1:] for shape in shapes.values()}, key=lambda size: (size[0] * size[1], size))
    return [[name for name, shape in shapes.items() if shape[1:] == size] for size in sizes]


@MODELS.register_module()
class FrozenFeatureBackbone(BaseModule):
    """A frozen dfbench backbone returning one tensor per level (see the module docstring)."""

    def __init__(self, backbone: Backbone, selection: Sequence[str], settings: ExtractSettings,
                 levels: Sequence[Sequence[str]], init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        # not a submodule (a backbone may be an nn.Module): frozen, outside state_dict and the optimizer
        object.__setattr__(self, "feature_backbone", backbone)
        self.selection = list(selection)
        self.settings = settings
        self.levels = [list(level) for level in levels]
        self.resolution = settings.resolution or backbone.default_resolution

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            pixels = inputs.float()
            if pixels.shape[-2:] != (self.resolution, self.resolution):
                pixels = F.interpolate(pixels, size=(self.resolution, self.resolution), mode="bilinear",
                                       align_corners=False)
            features = self.feature_backbone.extract(pixels, self.selection, self.settings)
        # clone(): extraction may run under inference_mode, whose tensors cannot enter autograd
        return [torch.cat([features[name] for name in level], dim=1).to(inputs.device, torch.float32).clone()
                for level in self.levels]


class ZeroInitResidualBlock(nn.Module):
    """``x + BN(conv3×3(relu(BN(conv3×3(x)))))`` with every weight and bias zero: GDF's ``ResBlock``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels))
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels))
        for layer in (*self.conv1, *self.conv2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


@MODELS.register_module()
class GdfResidualAdapter(BaseModule):
    """GDF's adapter neck: ``channels[level]`` lists the channel count of each activation in that level."""

    def __init__(self, channels: Sequence[Sequence[int]], init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        self.channels = [list(level) for level in channels]
        self.per_activation = nn.ModuleList(
            nn.ModuleList(ZeroInitResidualBlock(count) for count in level) for level in self.channels)
        self.per_level = nn.ModuleList(ZeroInitResidualBlock(sum(level)) for level in self.channels)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        levels = zip(inputs, self.channels, self.per_activation, self.per_level, strict=True)
        for level, counts, blocks, block in levels:
            parts = torch.split(level, counts, dim=1)
            outputs.append(block(torch.cat([each(part) for each, part in zip(blocks.children(), parts, strict=True)],
                                           dim=1)))
        return outputs


class RepeatedBlock(nn.Module):
    """One :class:`ZeroInitResidualBlock` applied ``times`` times in a row: GDF's ``MultiRes`` (its
    ``nn.ModuleList([ResBlock(dim)] * n)`` holds one block n times, so the weights are shared)."""

    def __init__(self, channels: int, times: int) -> None:
        super().__init__()
        self.block = ZeroInitResidualBlock(channels)
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            x = self.block(x)
        return x


@MODELS.register_module()
class GdfAmalgamatedAdapter(BaseModule):
    """GDF's adapter for several models (``diffusion_segmentor.py`` 155-182, 248-297): on each activation a shared
    residual block ×4, on each model's part of a level a shared block ×2, then one block on the level's
    concatenation over the models ("amalgemated"). ``channels[level]`` and ``sources[level]`` give each activation's
    channel count and model, in order."""

    def __init__(self, channels: Sequence[Sequence[int]], sources: Sequence[Sequence[str]],
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        self.channels = [list(level) for level in channels]
        self.sources = [list(level) for level in sources]
        self.per_activation = nn.ModuleList(
            nn.ModuleList(RepeatedBlock(count, 4) for count in level) for level in self.channels)
        self.per_source = nn.ModuleList(
            nn.ModuleList(RepeatedBlock(sum(count for count, source in zip(counts, names, strict=True)
                                            if source == model), 2) for model in dict.fromkeys(names))
            for counts, names in zip(self.channels, self.sources, strict=True))
        self.per_level = nn.ModuleList(ZeroInitResidualBlock(sum(level)) for level in self.channels)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, counts, names, blocks, models, block in zip(inputs, self.channels, self.sources,
                                                               self.per_activation, self.per_source,
                                                               self.per_level, strict=True):
            parts = [each(part) for each, part in zip(blocks.children(), torch.split(level, counts, dim=1),
                                                     strict=True)]
            joined = [summed(torch.cat([part for part, source in zip(parts, names, strict=True) if source == model],
                                       dim=1))
                      for summed, model in zip(models.children(), dict.fromkeys(names), strict=True)]
            outputs.append(block(torch.cat(joined, dim=1)))
        return outputs


def read_validation_record(folder: Path) -> tuple[list[list[float]], dict[str, float] | None]:
    """What :class:`ValidationRecordHook` kept in ``folder``: the validations [[iteration, mIoU], …] and the best one
    (``{"iteration", "mIoU"}``, or ``None`` before any validation)."""
    validations, best = folder / "validations.json", folder / "best.json"
    return (json.loads(validations.read_text()) if validations.is_file() else [],
            json.loads(best.read_text()) if best.is_file() else None)


@HOOKS.register_module()
class ValidationRecordHook(Hook):
    """Keeps every validation's mIoU (``validations.json``: [[iteration, mIoU], …]) and the network's weights at the
    best one (``best.safetensors`` and ``best.json``; safetensors, never a pickle), in the run's folder, each written
    to a temp file and renamed: a resumed run continues both."""

    priority = "LOW"

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        from mmengine.dist import is_main_process
        from mmengine.model import is_model_wrapper
        from safetensors.torch import save_file

        if not is_main_process() or not metrics or "mIoU" not in metrics:
            return
        validations, _ = read_validation_record(self.folder)
        best = max((value for _, value in validations), default=float("-inf"))
        validations.append([runner.iter, float(metrics["mIoU"])])
        self.folder.mkdir(parents=True, exist_ok=True)
        if metrics["mIoU"] > best:          # the first of equal validations stays the best
            network = runner.model.module if is_model_wrapper(runner.model) else runner.model
            state = {name: value.detach().cpu().contiguous() for name, value in network.state_dict().items()}
            atomic_write(self.folder / "best.safetensors", lambda temp: save_file(state, str(temp)))
            atomic_write_text(self.folder / "best.json",
                              json.dumps({"iteration": runner.iter, "mIoU": float(metrics["mIoU"])}))
        atomic_write_text(self.folder / "validations.json", json.dumps(validations))


@HOOKS.register_module()
class SignCheckpointsHook(Hook):
    """After mmengine's ``CheckpointHook`` (this hook runs last), sign the newest checkpoint of the work
    folder once (main process only: only it saves checkpoints)."""

    priority = "LOWEST"

    def __init__(self) -> None:
        self.signed: str | None = None

    def _sign_latest(self, runner: Any) -> None:
        from mmengine.dist import is_main_process
        from mmengine.runner import find_latest_checkpoint


        latest = find_latest_checkpoint(runner.work_dir) if is_main_process() else None
        if latest and latest != self.signed:
            sign(Path(latest))
            self.signed = latest
            for signature in Path(runner.work_dir).glob("*.hmac"):       # of checkpoints mmengine deleted
                if not signature.with_suffix("").exists():
                    signature.unlink()

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self._sign_latest(runner)

    def after_train(self, runner: Any) -> None:
        self._sign_latest(runner)
