"""dfbench perf: the extraction recipes, throughput, matching and cache timed side by side."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dfbench.cli.common import (
    check_output_path,
)
from dfbench.errors import DfbenchInputError
from dfbench.settings import resolution_flag


def add_parser(commands: argparse._SubParsersAction) -> None:
    perf = commands.add_parser(
        "perf", help="time the extraction recipes side by side (full-size random-weight models)",
        description="recipes: on a full-size random-weight model, time the UNet truncated after up_blocks.1 vs "
        "the full UNet, the ensemble recipe (one VAE encode) vs DIFT-style (N VAE encodes), and one clean pass; "
        "report the ratios and the peak RSS. throughput: images/s of one clean pass per backbone, FLOPs per "
        "image, and the fraction of --peak-tflops (use on a GPU). matching: spair/dift-nn matching and scoring "
        "alone on synthetic features of SD2.1 up_blocks.1's shape (1280×48×48) for SPair-sized images. "
        "cache: cache-hit read throughput vs recomputation and bytes per image per activation. "
        "segmentation: seconds per training iteration of gdf-uper (ADE20K crop 512, Cityscapes crop 1024) and of "
        "the linear probe for tiny and full-size SD1.5 (random weights), peak RSS, and the linear protocol's "
        "speed-up from cached features (add --quick for tiny only). horse21: the label-scarce pixel-classifier "
        "training, dfbench's streamed features + stacked ensemble vs the release's all-in-RAM features and one "
        "member at a time (SD1.5 Ours shapes, 3,520 channels, 30 images at 256²): s per step, peak RSS, hours. "
        "depth: an epoch of each NYUv2 probe at full size (795 images, batch 8) from features in memory — "
        "cleandift-linear on SD2.1 up_blocks.1 maps, probe3d-dpt's DPT head on four up-block levels — plus the "
        "SD2.1 extraction probe3d-dpt runs at every step; peak RSS (--repeats: timed steps). sweep: 20 candidates × 3 "
        "timesteps on the SPair mini set with `dfbench sweep` vs 60 separate runs (UNet rows per image, seconds; "
        "--backbone tiny-sd15 for a quick check; --repeats N times N of the 60 runs and scales). backbone: seconds per "
        "image and peak RSS of any backbones with random weights, each in its own process (default dinov2-base "
        "and dinov2-giant at 840 px, blocks.11). fusion: a fusion preset (--preset, default tale-of-two) against "
        "its parts: each source alone, the fused extraction, the overhead, and the pair descriptor's cost "
        "(Tale's pair-fitted PCA) at real sizes with random weights.",
    )
    perf.add_argument("suite", nargs="?", choices=["recipes", "throughput", "matching", "cache",
                                                               "segmentation", "horse21", "depth", "sweep", "backbone",
                                                               "fusion"],
                      default="recipes")
    perf.add_argument("--backbone", nargs="+", default=None, help="recipes: one (default sd15); "
                      "throughput: several (default sd15 sd21 sdxl)")
    perf.add_argument("--resolution", type=resolution_flag, help="recipes: input size (default: the backbone's)")
    perf.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default float32 (recipes), "
                      "bfloat16 (throughput)")
    perf.add_argument("--repeats", type=int, default=1, help="timed runs per step; the median is reported")
    perf.add_argument("--ensemble", type=int, default=8, help="recipes: ensemble size (default 8, as DIFT)")
    perf.add_argument("--batch-size", type=int, default=8, help="throughput: images per batch")
    perf.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    perf.add_argument("--peak-tflops", type=float, help="throughput: the device's dense peak, for the fraction")
    perf.add_argument("--pairs", type=int, default=12234, help="matching: pairs (default: SPair test, 12,234)")
    perf.add_argument("--images", type=int, default=1800, help="matching: distinct images (default 1,800)")
    perf.add_argument("--quick", action="store_true", help="segmentation: tiny-sd15 only")
    perf.add_argument("--select", nargs="+", metavar="NAME", help="backbone: activations extracted (default blocks.11)")
    perf.add_argument("--preset", default="tale-of-two", help="fusion: the fusion preset (default tale-of-two)")
    perf.add_argument("--out", help="also write the results as JSON here")
    perf.set_defaults(handler=cmd_perf)


def cmd_perf(args: argparse.Namespace) -> int:
    from dfbench import perf

    for flag in ("repeats", "ensemble", "batch_size", "pairs", "images"):
        if getattr(args, flag) < 1:
            raise DfbenchInputError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be ≥ 1")
    if args.out:
        check_output_path(args.out, ".json")
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    results: dict[str, Any] | list[dict[str, Any]]
    if args.suite == "recipes":
        backbones = args.backbone or ["sd15"]
        if len(backbones) != 1:
            raise DfbenchInputError("perf recipes: give one --backbone")
        results = perf.run_recipes(backbones[0], args.resolution, args.dtype or "float32", args.repeats,
                                   args.ensemble, args.device or "cpu", log=log)
    elif args.suite == "segmentation":
        results = perf.run_segmentation(not args.quick, max(args.repeats, 2), log=log)
    elif args.suite == "horse21":
        from dfbench.perf_label_scarce import run_horse21

        results = run_horse21(steps=max(args.repeats, 20), log=log)
    elif args.suite == "backbone":
        from dfbench.perf_backbone import run_backbones

        results = run_backbones(args.backbone or ["dinov2-base", "dinov2-giant"], args.resolution,
                                args.select or ["blocks.11"], args.repeats, args.device or "cpu", log=log)
    elif args.suite == "fusion":
        from dfbench.perf_fusion import run_fusion

        backbones = args.backbone or [None]
        results = run_fusion(args.preset, backbones[0], args.device or "cpu", args.dtype or "float32", args.repeats,
                             log=log)
    elif args.suite == "sweep":
        from dfbench.perf_sweep import run_sweep_perf

        backbones = args.backbone or ["sd15"]
        results = run_sweep_perf(backbones[0], args.device, args.dtype or "float32",
                                 args.repeats if args.repeats > 1 else None, log=log)
    elif args.suite == "depth":
        from dfbench.perf_depth import run_depth

        results = run_depth(args.device, args.repeats, log=log)
    elif args.suite == "cache":
        results = perf.run_cache(log=log)
    elif args.suite == "matching":
        results = perf.run_matching(args.pairs, args.images, log=log)
    else:
        results = perf.run_throughput(args.backbone or ["sd15", "sd21", "sdxl"], args.dtype or "bfloat16",
                                      args.batch_size, max(args.repeats, 3), args.device, args.peak_tflops, log=log)
    report = perf.format_report(results)
    print(report)
    if args.out:
        from dfbench.atomic import atomic_write_text

        atomic_write_text(args.out, report + "\n")
    return 0
