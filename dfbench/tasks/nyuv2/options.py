"""The options of the NYUv2 depth protocols (``--option key=value``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from dfbench.errors import DfbenchInputError
from dfbench.options import require_at_least_one
from dfbench.tasks.nyuv2.dataset import DEPTH_FOLDERS
from dfbench.tasks.nyuv2.probes import NORMALISATIONS, PROBE_DTYPES


@dataclass(frozen=True)
class DepthProbeOptions:
    """What both depth protocols share (``--option key=value``)."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    min_depth: float = 0.1
    max_depth: float = 10.0
    bins: int = 256
    normalisation: str = "linear"
    train_limit: int | None = None
    #: the ground truth: ``raw`` (the sensor's depths with holes, as probe3d) or ``filled`` (NYU's in-painted ones)
    depth: str = "raw"

    #: options added after runs were recorded: in the identity only off their default (the earlier behaviour)
    ADDED_OPTIONS: ClassVar[tuple[str, ...]] = ("depth",)

    def validate(self, where: str) -> None:
        require_at_least_one(self, ("epochs", "batch_size", "bins", "train_limit"), where)
        if self.depth not in DEPTH_FOLDERS:
            raise DfbenchInputError(f"{where} option depth={self.depth!r}: choose raw or filled")
        if self.lr <= 0 or self.weight_decay < 0:
            raise DfbenchInputError(f"{where} options lr={self.lr}, weight_decay={self.weight_decay}: lr must be > 0 "
                                    "and weight_decay ≥ 0")
        if not 0 < self.min_depth < self.max_depth:
            raise DfbenchInputError(f"{where} options min_depth={self.min_depth}, max_depth={self.max_depth}: need "
                                    "0 < min_depth < max_depth")
        if self.normalisation not in NORMALISATIONS:
            raise DfbenchInputError(f"{where} option normalisation={self.normalisation!r}: choose "
                                    f"{', '.join(NORMALISATIONS)}")


@dataclass(frozen=True)
class LinearBinsOptions(DepthProbeOptions):
    """Options of ``cleandift-linear``: CleanDIFT's bins (256 in [0.1, 10] m); optimiser settings dfbench's.
    ``probe``: a trained probe scored as it is, no training — ``hub`` (CleanDIFT's published
    ``cleandift_sd21_depth_probe.safetensors``) or a file with the same keys; ``probe_dtype``: the dtype it runs
    in (CleanDIFT's notebook casts its model with ``.bfloat16()``)."""

    probe: str | None = None
    probe_dtype: str = "bfloat16"

    ADDED_OPTIONS: ClassVar[tuple[str, ...]] = ("depth", "probe", "probe_dtype")

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.probe not in (None, "hub") and not Path(str(self.probe)).is_file():
            raise DfbenchInputError(f"{where} option probe={self.probe}: no such file (a conv_depth state dict with "
                                    "keys weight and bias, or probe=hub for CleanDIFT's published probe)")
        if self.probe_dtype not in PROBE_DTYPES:
            raise DfbenchInputError(f"{where} option probe_dtype={self.probe_dtype!r}: choose "
                                    f"{', '.join(PROBE_DTYPES)}")


@dataclass(frozen=True)
class DptOptions(DepthProbeOptions):
    """Options of ``probe3d-dpt``; the defaults are probe3d's."""

    lr: float = 5e-4
    min_depth: float = 0.001
    warmup_epochs: float = 1.5
    hidden: int = 512
    kernel_size: int = 3
    crop: int | None = None
    augment: bool = True
    #: probe3d's training set: a folder of the GeoNet NYU release (none: the labelled set's 795 training images)
    train_data: str | None = None

    ADDED_OPTIONS: ClassVar[tuple[str, ...]] = ("depth", "train_data")

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.hidden < 1 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise DfbenchInputError(f"{where} options hidden={self.hidden}, kernel_size={self.kernel_size}: hidden "
                                    "≥ 1 and an odd kernel_size")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise DfbenchInputError(f"{where} option warmup_epochs={self.warmup_epochs}: must be in [0, epochs)")
        if self.train_data is not None and not Path(self.train_data).is_dir():
            raise DfbenchInputError(f"{where} option train_data={self.train_data}: no such folder (the GeoNet NYU "
                                    "release probe3d trains on: its .mat files in one folder)")
        if self.crop is not None and self.crop < 1:
            raise DfbenchInputError(f"{where} option crop={self.crop}: must be ≥ 1 (none: the shorter side)")
