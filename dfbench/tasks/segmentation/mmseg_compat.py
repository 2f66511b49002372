"""mmsegmentation on mmcv-lite (no compiled ``mmcv._ext``): a minimal stand-in ``mmcv.ops``.

``mmseg/utils/mask_classification.py`` imports ``mmcv.ops.point_sample`` unconditionally, so with
mmcv-lite every ``import mmseg.models`` / ``mmseg.datasets`` fails on ``mmcv._ext``.
When — and only when — the compiled ops are missing, :func:`ensure_mmcv_ops` registers a module
``mmcv.ops`` holding a pure-PyTorch ``point_sample`` and a ``sigmoid_focal_loss`` that raises when
called (mmseg imports it unconditionally but calls it only on CUDA, where full mmcv is expected);
importing any other op raises ``ModuleNotFoundError``, which mmseg's optional imports catch. With
full mmcv installed nothing changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch
import torch.nn.functional as F


def point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False,  # noqa: A002
                 **kwargs) -> torch.Tensor:
    """Bilinear samples of ``input`` N×C×H×W at ``points`` N×P×2 (or N×P×Q×2) given as (x, y) in [0, 1]."""
    flat = points.dim() == 3
    grid = (points.unsqueeze(2) if flat else points) * 2.0 - 1.0
    sampled = F.grid_sample(input, grid, align_corners=align_corners, **kwargs)
    return sampled.squeeze(3) if flat else sampled


def sigmoid_focal_loss(*args, **kwargs) -> torch.Tensor:
    """mmcv's CUDA focal loss: not available on mmcv-lite (mmseg's CPU path does not call it)."""
    raise ModuleNotFoundError("mmcv.ops.sigmoid_focal_loss needs mmcv's compiled CUDA ops; install full mmcv 2.1")


def _missing_op(name: str) -> types.ModuleType:
    if name.startswith("__"):  # module machinery (``__file__``, ``__path__``, …) asks; it is simply absent
        raise AttributeError(name)
    raise ModuleNotFoundError(f"mmcv.ops.{name} needs mmcv's compiled ops (install full mmcv); dfbench runs "
                              "on mmcv-lite with a stand-in mmcv.ops that has point_sample only")


def ensure_mmcv_ops() -> None:
    """Register the stand-in ``mmcv.ops`` if mmcv's compiled extension is absent (idempotent)."""
    if "mmcv.ops" in sys.modules or importlib.util.find_spec("mmcv") is None:
        return
    if importlib.util.find_spec("mmcv._ext") is not None:
        return  # full mmcv: its own ops
    standin = types.ModuleType("mmcv.ops", "dfbench's stand-in for mmcv.ops on mmcv-lite (point_sample only)")
    vars(standin).update(point_sample=point_sample, sigmoid_focal_loss=sigmoid_focal_loss, __getattr__=_missing_op)
    sys.modules["mmcv.ops"] = standin
    importlib.import_module("mmcv").ops = standin  # type: ignore[attr-defined]
