"""``dfbench perf``: speed and memory suites, one module each, every figure measured side by side in one
process (or, for peak memory, in fresh child processes). Each suite module has ``from_args(args, log)``,
which the CLI calls; :data:`SUITES` lists them (``dfbench perf list``). Measured figures, with the machine,
are in docs/performance.md. The suites import the models and tasks they time inside their functions: a suite
often runs in a child process of its own (peak memory), and ``dfbench perf list`` loads none of them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Suite:
    """A ``dfbench perf`` suite: its name, module (under ``dfbench.perf``) and what it measures."""

    name: str
    module: str
    summary: str

    def run(self, args: Any, log: Callable[[str], None]) -> dict[str, Any] | list[dict[str, Any]]:
        """The suite's ``from_args(args, log)``: its results, for :func:`dfbench.perf.common.format_report`."""
        return importlib.import_module(f"dfbench.perf.{self.module}").from_args(args, log)


SUITES = {suite.name: suite for suite in (
    Suite("recipes", "recipes", "on a full-size random-weight model: the UNet truncated after up_blocks.1 vs the "
          "full UNet, the ensemble recipe (one VAE encode) vs DIFT-style (N VAE encodes), one clean pass; ratios "
          "and the recipe's peak RSS in a fresh process"),
    Suite("throughput", "throughput", "images/s of one clean pass per backbone, FLOPs per image and the fraction "
          "of --peak-tflops (use on a GPU)"),
    Suite("matching", "matching", "spair/dift-nn matching and scoring alone, on synthetic features of SD2.1 "
          "up_blocks.1's shape (1280×48×48) for SPair-sized images"),
    Suite("cache", "cache", "cache-hit read throughput vs recomputation, and bytes per image per activation"),
    Suite("segmentation", "segmentation", "seconds per training iteration of gdf-uper (ADE20K crop 512, "
          "Cityscapes crop 1024) and of the linear probe, tiny and full-size SD1.5, peak RSS, and the linear "
          "protocol from cached features (--quick: tiny only)"),
    Suite("horse21", "horse21", "the label-scarce pixel-classifier training: streamed features and a stacked "
          "ensemble vs the release's all-in-RAM features and one member at a time (s per step, peak RSS, hours)"),
    Suite("depth", "depth", "an epoch of each NYUv2 probe at full size from features in memory, plus the SD2.1 "
          "extraction probe3d-dpt runs at every step; peak RSS"),
    Suite("sweep", "sweep", "20 candidates × 3 timesteps on the SPair mini set with `dfbench sweep` vs the 60 "
          "separate runs it replaces (UNet rows per image, seconds)"),
    Suite("backbone", "backbone", "seconds per image and peak RSS of any backbones with random weights, each in "
          "its own process (default dinov2-base and dinov2-giant at 840 px, blocks.11)"),
    Suite("truncation", "truncation", "a DiT loaded truncated (--truncate) from a full-size random-weight folder "
          "written shard by shard (default flux-dev to single_transformer_blocks.9, 512 px, bfloat16, no text "
          "encoders): load time, peak RSS, seconds per image"),
    Suite("pipeline", "pipeline", "`extract --dataset` against the pure forward time of the same images: "
          "sequential (decode, extract, write) and overlapped (decode ahead, write behind), tiny-sd15 at 64 and "
          "SD1.5 at 512 with random weights (--quick: tiny only)"),
    Suite("fusion", "fusion", "a fusion preset (--preset, default tale-of-two) against its parts: each source "
          "alone, the fused extraction, the overhead, and the pair descriptor's cost"),
)}
