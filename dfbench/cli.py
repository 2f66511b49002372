"""The ``dfbench`` command line. Exit codes: 0 success, 1 a failed check, 2 bad input."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dfbench.errors import DfbenchInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

DESCRIPTION = """\
dfbench — benchmark diffusion features (Stable Diffusion activations used as dense descriptors).

Typical session:
  dfbench list backbones                       # what can be loaded
  dfbench activations sd15 --grep 'up_blocks.1\\.'   # addressable activations with shapes (no weights needed)
  dfbench extract tiny-sd15 --images a.png b.png --select up_blocks.1 --out feats.safetensors
  dfbench extract sd21 --images cat.jpg --preset dift --category cat --out cat.safetensors
  dfbench run --backbone sd21 --task spair --preset dift --data-root SPair-71k --cache-dir cache/
  dfbench leaderboard                          # results/leaderboard.md and .csv from every run
  python run_bench.py                          # the offline demo suite

Activation names are diffusers module paths (up_blocks.1, up_blocks.1.resnets.2.increment,
up_blocks.1.attentions.1.transformer_blocks.0.attn2.q, …) or aliases: GDF
(up-level1-repeat1-vit-block0-cross-q), DIFT (up_ft_index=1), CleanDIFT (mid, us1…us10).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dfbench`` console script (and ``python run_bench.py``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except DfbenchInputError as error:
        print(f"dfbench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dfbench: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfbench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    listing = commands.add_parser("list", help="list registered backbones, tasks (with protocols and options) or "
                                  "presets")
    listing.add_argument("what", nargs="?", default="all", choices=["all", "backbones", "tasks", "presets"])
    listing.add_argument("--pattern", default="*", help="glob filter on names, e.g. 'tiny-*'")
    listing.set_defaults(handler=cmd_list)

    activations = commands.add_parser(
        "activations", help="list every addressable activation of a backbone with its shape (no weights needed)",
        description="List every addressable activation name with channels, height and width at a resolution. "
        "Shapes come from a forward pass on PyTorch's meta device with the real architecture config: no weights "
        "are downloaded or loaded.",
    )
    activations.add_argument("backbone", help="backbone name, e.g. sd15, sd21, sdxl, tiny-sd15")
    activations.add_argument("--resolution", type=int, help="input size in pixels (default: the backbone's)")
    activations.add_argument("--grep", metavar="PATTERN", help="keep names matching this regular expression")
    activations.add_argument("--format", choices=["table", "json"], default="table")
    activations.set_defaults(handler=cmd_activations)

    extract = commands.add_parser(
        "extract", help="extract activations of images into a safetensors file",
        description="Extract the selected activations of each image and write one tensor per activation "
        "(N×C×h×w, float32, in --images order) to a safetensors file; the settings, backbone, selection "
        "and image paths go into the file's metadata.",
    )
    extract.add_argument("backbone", help="backbone name (see `dfbench list backbones`)")
    source = extract.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="PATH", help="image files, or folders (their images, sorted)")
    source.add_argument("--dataset", metavar="TASK", help="fill the feature cache with the images of a task's "
                        "split, e.g. spair (with --data-root, --split; under torchrun / accelerate launch each rank "
                        "takes disjoint batches)")
    choice = extract.add_mutually_exclusive_group(required=True)
    choice.add_argument("--select", nargs="+", metavar="NAME", help="activation names or aliases")
    choice.add_argument("--preset", help="a named recipe (see `dfbench list presets`): selection + settings")
    extract.add_argument("--out", help="with --images: output .safetensors file (written atomically)")
    extract.add_argument("--data-root", help="with --dataset: the dataset folder ('mini': the embedded mini set)")
    extract.add_argument("--split", default="test", help="with --dataset: the split (default test)")
    extract.add_argument("--cache-dir", help="with --dataset: feature cache root (default $DFBENCH_CACHE or "
                         "~/.cache/dfbench/features)")
    extract.add_argument("--storage-dtype", choices=["float16", "float32"], default="float16",
                         help="with --dataset: dtype of stored features (default float16)")
    add_settings_arguments(extract)
    extract.add_argument("--category", nargs="+", metavar="NAME",
                         help="category per image (or one for all) for a prompt containing {category}")
    extract.add_argument("--weights", metavar="DIR_OR_HUB_ID", help="load weights from here instead of the hub id")
    extract.add_argument("--unet-weights", metavar="FILE",
                         help="CleanDIFT backbones: the UNet state-dict .safetensors (default: from the hub)")
    extract.add_argument("--device", help="cpu, cuda, cuda:1, … (default: cuda if available)")
    extract.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    extract.set_defaults(handler=cmd_extract)

    perf = commands.add_parser(
        "perf", help="time the extraction recipes side by side (full-size random-weight models)",
        description="recipes: on a full-size random-weight model, time the UNet truncated after up_blocks.1 vs "
        "the full UNet, the ensemble recipe (one VAE encode) vs DIFT-style (N VAE encodes), and one clean pass; "
        "report the ratios and the peak RSS. throughput: images/s of one clean pass per backbone, FLOPs per "
        "image, and the fraction of --peak-tflops (use on a GPU). matching: spair/dift-nn matching and scoring "
        "alone on synthetic features of SD2.1 up_blocks.1's shape (1280×48×48) for SPair-sized images. "
        "cache: cache-hit read throughput vs recomputation and bytes per image per activation.",
    )
    perf.add_argument("suite", nargs="?", choices=["recipes", "throughput", "matching", "cache"], default="recipes")
    perf.add_argument("--backbone", nargs="+", default=None, help="recipes: one (default sd15); "
                      "throughput: several (default sd15 sd21 sdxl)")
    perf.add_argument("--resolution", type=int, help="recipes: input size (default: the backbone's)")
    perf.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default float32 (recipes), "
                      "bfloat16 (throughput)")
    perf.add_argument("--repeats", type=int, default=1, help="timed runs per step; the median is reported")
    perf.add_argument("--ensemble", type=int, default=8, help="recipes: ensemble size (default 8, as DIFT)")
    perf.add_argument("--batch-size", type=int, default=8, help="throughput: images per batch")
    perf.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    perf.add_argument("--peak-tflops", type=float, help="throughput: the device's dense peak, for the fraction")
    perf.add_argument("--pairs", type=int, default=12234, help="matching: pairs (default: SPair test, 12,234)")
    perf.add_argument("--images", type=int, default=1800, help="matching: distinct images (default 1,800)")
    perf.add_argument("--out", help="also write the results as JSON here")
    perf.set_defaults(handler=cmd_perf)

    cache = commands.add_parser(
        "cache", help="inspect, verify or prune the feature cache",
        description="ls: size per backbone / settings. verify: check every shard's sha256 (exit 1 if any is "
        "damaged; --repair deletes damaged and unrecorded shards so their features are recomputed). prune: delete "
        "the configurations of a backbone, one configuration, or all.",
    )
    cache.add_argument("action", choices=["ls", "verify", "prune"])
    cache.add_argument("--cache-dir", help="cache root (default $DFBENCH_CACHE or ~/.cache/dfbench/features)")
    cache.add_argument("--repair", action="store_true", help="verify: delete damaged and unrecorded shards")
    cache.add_argument("--backbone", help="prune: every configuration of this backbone")
    cache.add_argument("--config", help="prune: this configuration (hash shown by ls)")
    cache.add_argument("--all", action="store_true", help="prune: everything")
    cache.set_defaults(handler=cmd_cache)

    run = commands.add_parser(
        "run", help="run one backbone × task pairing and record it under results/",
        description="Evaluate a backbone with an activation selection on a task; write the run record "
        "(results/runs/*.json), its figures (results/figures/) and refresh the leaderboard.",
    )
    run.add_argument("--backbone", required=True, help="backbone name (see `dfbench list backbones`)")
    run.add_argument("--task", required=True, help="task or task/protocol, e.g. spair or spair/dift-nn")
    run_choice = run.add_mutually_exclusive_group(required=True)
    run_choice.add_argument("--select", nargs="+", metavar="NAME", help="activation names or aliases")
    run_choice.add_argument("--preset", help="a named recipe: selection + settings")
    run.add_argument("--data-root", help="dataset folder in its native layout ('mini': the embedded mini set)")
    run.add_argument("--split", default="test", help="dataset split (default test)")
    run.add_argument("--limit", "--limit-pairs", dest="limit", type=int, metavar="N",
                     help="evaluate N items of the split, a seeded random sample (SPair: pairs spread evenly over "
                     "the categories; the lists are grouped by category, so not the first N)")
    run.add_argument("--weights", metavar="DIR_OR_HUB_ID", help="load weights from here instead of the hub id")
    run.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="protocol option, repeatable (`dfbench list tasks` shows each protocol's options). "
                     "spair: per_category=N, pairs_file=F; spair/gdf-conv also max_steps, eval_every, "
                     "steps_per_epoch, lr, weight_decay, train_limit (seeded sample across categories), "
                     "val_pairs_file (pair ids, or GDF's spair_71k_val-360.json), report=select|gdf (gdf: GDF's "
                     "max over validations on its list, never test), noise_draws=K (noise realisations per "
                     "training image)")
    run.add_argument("--save-predictions", nargs="?", const=True, default=False, metavar="DIR",
                     help="save the predictions (into the run folder, or DIR) for `dfbench score`")
    run.add_argument("--results", default="results", help="results folder (default ./results)")
    run.add_argument("--cache-dir", help="read/write features in this cache (also: $DFBENCH_CACHE)")
    run.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_settings_arguments(run)
    run.set_defaults(handler=cmd_run)

    suite = commands.add_parser("suite", help="run every pairing listed in a YAML suite, then the leaderboard")
    suite.add_argument("file", help="suite YAML (see configs/demo.yaml)")
    suite.add_argument("--results", default="results", help="results folder (default ./results)")
    suite.add_argument("--force", action="store_true", help="rerun pairings already recorded")
    suite.add_argument("--strict", action="store_true", help="stop at the first failing run")
    suite.add_argument("--no-progress", action="store_true", help="hide progress bars")
    suite.set_defaults(handler=cmd_suite)

    leaderboard = commands.add_parser("leaderboard", help="render results/leaderboard.md and .csv from the runs")
    leaderboard.add_argument("--results", default="results", help="results folder (default ./results)")
    leaderboard.set_defaults(handler=cmd_leaderboard)

    compare = commands.add_parser(
        "compare", help="the regression gate: compare the latest runs with a baseline (exit 1 on a drop)",
        description="For every metric in the baseline, compare the latest run of the same protocol, backbone / "
        "selection and settings. Exit 1 if one is worse by more than the tolerance (in the metric's own units, "
        "e.g. PCK points; lower is better for RMSE/AbsRel/losses) or has no run; --update rewrites the baseline "
        "from the current runs.",
    )
    compare.add_argument("results", nargs="?", default="results", help="results folder (default ./results)")
    compare.add_argument("--baseline", required=True, help="baseline JSON, e.g. results/baselines/ci.json")
    compare.add_argument("--tolerance", type=float, help="allowed drop (default: the baseline's, else 0.5)")
    compare.add_argument("--update", action="store_true", help="write the current metrics as the new baseline")
    compare.set_defaults(handler=cmd_compare)

    score = commands.add_parser(
        "score", help="score saved predictions against a split's ground truth (no backbone loaded)",
        description="Score predictions saved by `dfbench run --save-predictions` (or written by any other method "
        "in the task's format, see the README) against the ground truth of a split, exactly as `run` scores "
        "them. Prints the metrics; with --results, also writes a run record whose leaderboard row is --name.",
    )
    score.add_argument("--task", required=True, help="task or task/protocol, e.g. spair")
    score.add_argument("--data-root", required=True, help="dataset folder ('mini': the embedded mini set)")
    score.add_argument("--split", default="test", help="dataset split (default test)")
    score.add_argument("--predictions", required=True, metavar="DIR", help="folder holding the predictions")
    score.add_argument("--limit", type=int, metavar="N", help="the same --limit as the run (with its --seed)")
    score.add_argument("--seed", type=int, default=0, help="the run's seed, for --limit's sample (default 0)")
    score.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="protocol options that choose the evaluated items (spair: per_category, pairs_file)")
    score.add_argument("--format", choices=["table", "json"], default="table")
    score.add_argument("--results", help="also write a run record into this results folder")
    score.add_argument("--name", help="with --results: the leaderboard row label (default: the folder's name)")
    score.set_defaults(handler=cmd_score)

    demo = commands.add_parser("demo", help="the offline demo suite (configs/demo.yaml): tiny backbones × mini SPair")
    demo.add_argument("--results", default="results", help="results folder (default ./results)")
    demo.add_argument("--force", action="store_true", help="rerun pairings already recorded")
    demo.set_defaults(handler=cmd_demo)
    return parser


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The ExtractSettings flags; unset flags keep the preset's or the default value."""
    group = parser.add_argument_group("extraction settings (override the preset)")
    group.add_argument("--resolution", type=int, help="square input size in pixels (default: backbone's)")
    group.add_argument("--resize-mode", choices=["squash", "pad"], help="squash (DIFT/GDF) or pad (keep aspect)")
    group.add_argument("--timestep", type=int, help="diffusion timestep t, 0…999 (default 261)")
    group.add_argument("--no-noise", dest="add_noise", action="store_const", const=False,
                       help="feed the clean latent (CleanDIFT)")
    group.add_argument("--ensemble", dest="ensemble_size", type=int, help="noise draws averaged (default 1)")
    group.add_argument("--seed", type=int, help="seed of every random draw (default 0)")
    group.add_argument("--prompt", help="prompt template; {category} is replaced per image (default '')")
    group.add_argument("--latent-mode", choices=["mode", "sample"], help="posterior mean or a seeded sample")
    group.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    group.add_argument("--batch-size", type=int, help="UNet rows per forward (default 8)")


SETTINGS_FLAGS = ("resolution", "resize_mode", "timestep", "add_noise", "ensemble_size", "seed", "prompt",
                  "latent_mode", "dtype", "batch_size")


def given_settings(args: argparse.Namespace) -> dict:
    """The settings flags that were given on the command line."""
    return {flag: getattr(args, flag) for flag in SETTINGS_FLAGS if getattr(args, flag, None) is not None}


def settings_from_args(args: argparse.Namespace, base: dict | None = None):
    """ExtractSettings from a preset's settings (``base``) overridden by the flags that were given."""
    from dfbench.settings import ExtractSettings

    return ExtractSettings.from_dict({**(base or {}), **given_settings(args)})


# ---------------------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    from dfbench import registry

    sections = {"backbones": registry.BACKBONES, "tasks": registry.TASKS, "presets": registry.PRESETS}
    chosen = sections if args.what == "all" else {args.what: sections[args.what]}
    for title, reg in chosen.items():
        names = reg.names(args.pattern)
        print(f"{title}:")
        if not names:
            print("  (none registered)")
        for name in names:
            print(f"  {name:<22} {describe(reg.get(name))}")
            if title == "tasks":
                print_protocols(reg.get(name)())
    return 0


def print_protocols(task) -> None:
    """Each protocol of a task with its version and options (name, type, default)."""
    import dataclasses
    import typing

    from dfbench.benchmarks.base import type_name

    for protocol in task.protocols.values():
        hints = typing.get_type_hints(protocol.options)
        fields = ", ".join(f"{f.name}: {type_name(hints[f.name])} = {f.default!r}"
                           for f in dataclasses.fields(protocol.options))
        print(f"    {task.name}/{protocol.name} v{protocol.version}: {protocol.description}")
        print(f"      options: {fields or 'none'}")


def describe(entry: object) -> str:
    """One line about a registry entry: a preset's description, else the first docstring line."""
    description = getattr(entry, "description", None)
    if isinstance(description, str) and description:
        backbone = getattr(entry, "backbone", None)
        return description + (f" [default backbone: {backbone}]" if backbone else "")
    doc = (getattr(entry, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


# ---------------------------------------------------------------------------------------- activations
def cmd_activations(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from dfbench.registry import create_backbone

    backbone = create_backbone(args.backbone, init="meta")
    rows = backbone.catalog(args.resolution)
    if args.grep:
        try:
            pattern = re.compile(args.grep)
        except re.error as error:
            raise DfbenchInputError(f"--grep {args.grep!r}: not a regular expression ({error})") from None
        rows = [row for row in rows if pattern.search(row.name)]
    if args.format == "json":
        print(json.dumps([row.to_dict() for row in rows], indent=1))
    else:
        resolution = args.resolution or backbone.default_resolution
        print(f"{backbone.name} at {resolution}px: {len(rows)} activations")
        print(tabulate([[r.name, r.channels, r.height, r.width] for r in rows],
                       headers=["name", "channels", "height", "width"]))
    return 0


# ---------------------------------------------------------------------------------------- extract
def image_paths(entries: Sequence[str]) -> list[Path]:
    """Expand folders into their image files (sorted); every path must exist."""
    paths: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise DfbenchInputError(f"--images {path}: folder holds no image files ({suffixes})")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise DfbenchInputError(f"--images {path}: no such file or folder")
    return paths


def check_output_path(out: str, suffix: str = ".safetensors") -> Path:
    """The output file path; its folder must exist and be writable."""
    path = Path(out)
    if path.suffix != suffix:
        raise DfbenchInputError(f"--out {path}: the file name must end in {suffix}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise DfbenchInputError(f"--out {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise DfbenchInputError(f"--out {path}: folder {folder} is not writable")
    return path


def write_safetensors_atomic(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temp file in the same folder and an atomic rename."""
    from safetensors.torch import save_file

    from dfbench.atomic import atomic_write

    contiguous = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    atomic_write(path, lambda temp: save_file(contiguous, str(temp), metadata))


def cmd_extract(args: argparse.Namespace) -> int:
    from dfbench import __version__
    from dfbench.images import load_image
    from dfbench.registry import get_preset

    preset = get_preset(args.preset) if args.preset else None
    selection = list(preset.selection) if preset else args.select
    preset_settings = preset.settings if preset else {}
    settings_from_args(args, preset_settings)  # validate the flags before loading any weights
    if args.dataset:
        return extract_dataset(args, selection, preset_settings)
    if not args.out:
        raise DfbenchInputError("--out FILE.safetensors is required with --images")
    out = check_output_path(args.out)
    paths = image_paths(args.images)
    categories = args.category
    if categories is not None and len(categories) == 1:
        categories = categories * len(paths)
    if categories is not None and len(categories) != len(paths):
        raise DfbenchInputError(f"--category: give one name, or one per image ({len(paths)}), not {len(categories)}")
    images = [load_image(path) for path in paths]

    backbone, settings = backbone_for(args, preset_settings)
    features = backbone.extract(images, selection, settings, categories=categories, progress=not args.no_progress)
    metadata = {
        "dfbench_version": __version__,
        "backbone": backbone.name,
        "weights": str(backbone.source),
        "selection": json.dumps(list(features)),
        "settings": settings.to_json(),
        "images": json.dumps([str(path) for path in paths]),
    }
    write_safetensors_atomic(features, out, metadata)
    shapes = ", ".join(f"{name} {tuple(value.shape)}" for name, value in features.items())
    print(f"wrote {out}: {shapes}")
    return 0


def backbone_for(args: argparse.Namespace, preset_settings: dict, device: str | None = None):
    """The backbone named on the command line and the settings (backbone defaults < preset < flags)."""
    from dfbench.registry import create_backbone
    from dfbench.settings import resolve_settings

    overrides = {"weights": args.weights} if args.weights else {}
    if device or args.device:
        overrides["device"] = device or args.device
    if args.unet_weights:
        overrides["unet_weights"] = args.unet_weights
    dtype = args.dtype or preset_settings.get("dtype", "float32")
    backbone = create_backbone(args.backbone, torch_dtype=dtype, **overrides)
    return backbone, resolve_settings(backbone, preset_settings, given_settings(args))


def extract_dataset(args: argparse.Namespace, selection: list[str], preset_settings: dict) -> int:
    """``extract --dataset``: fill the cache; under torchrun each rank takes every world_size-th batch."""
    import torch

    from dfbench.cache import CacheItem, FeatureCache, cached_extract, image_key
    from dfbench.registry import TASKS
    from dfbench.runner import resolve_data_root

    if args.out:
        raise DfbenchInputError("--out is for --images; --dataset writes into the feature cache (--cache-dir)")
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = None
    if world_size > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        cache = FeatureCache(args.cache_dir, args.storage_dtype)
        task = TASKS.get(args.dataset)()
        images = task.split_images(resolve_data_root(task, args.data_root), args.split)
        backbone, settings = backbone_for(args, preset_settings, device)
        store = cache.open(backbone, settings)
        items = [CacheItem(image_key(path), path, category) for path, category in images]
        counts = cached_extract(backbone, items, selection, settings, store, rank, world_size,
                                progress=not args.no_progress)
        if world_size > 1:
            dist.barrier()
        if rank == 0:
            store.merge_manifest()
            store.reload()
            summary = store.summary()
            print(f"cache {store.folder}: {summary['images']} images, {summary['entries']} entries, "
                  f"{summary['bytes'] / 2**20:.1f} MiB")
        print(f"rank {rank}/{world_size}: {counts['computed']} images extracted, {counts['hit']} already cached")
    finally:
        if world_size > 1:
            dist.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------------------- run / suite
def cmd_run(args: argparse.Namespace) -> int:
    from dfbench.runner import RunSpec, run_one

    settings = given_settings(args)
    spec = RunSpec(
        backbone=args.backbone, task=args.task, selection=args.select or [], preset=args.preset, settings=settings,
        data_root=args.data_root, split=args.split, limit=args.limit, weights=args.weights,
        options=parse_options(args.option), cache_dir=args.cache_dir, save_predictions=args.save_predictions,
    )
    if args.data_root is None:
        raise DfbenchInputError("--data-root DIR is required (or --data-root mini for the embedded mini set)")
    result, path = run_one(spec, args.results, progress=not args.no_progress, figures=not args.no_figures)
    print(f"wrote {path}")
    print(format_metrics(result))
    return print_leaderboard(args.results)


def cmd_score(args: argparse.Namespace) -> int:
    from dfbench.runner import score_predictions_folder

    result, path = score_predictions_folder(args.task, args.data_root, args.split, args.predictions,
                                            parse_options(args.option), args.limit, args.seed, args.results,
                                            args.name)
    if args.format == "json":
        print(json.dumps(result.metrics, indent=1, sort_keys=True))
    else:
        print(format_metrics(result))
    if path:
        from dfbench.results import write_leaderboard

        md_path, _, _ = write_leaderboard(args.results)
        print(f"wrote {path}; leaderboard {md_path}", file=sys.stderr)
    return 0


def parse_options(items: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` → ``{"a": "1", "b": "x"}``; a malformed item is a one-line error."""
    options = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise DfbenchInputError(f"--option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def format_metrics(result) -> str:
    """The headline metrics of a result as a small table."""
    from tabulate import tabulate

    keys = result.details.get("leaderboard_metrics") or list(result.metrics)
    rows = [[key, f"{result.metrics[key]:.2f}"] for key in keys if key in result.metrics]
    return tabulate(rows, headers=[result.protocol, result.row_label])


def print_leaderboard(results_dir: str) -> int:
    from dfbench.results import write_leaderboard

    md_path, csv_path, markdown = write_leaderboard(results_dir)
    print()
    print(markdown)
    print(f"leaderboard written to {md_path} and {csv_path}")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    from dfbench.runner import run_suite

    _, failures = run_suite(args.file, args.results, force=args.force, strict=args.strict,
                            progress=not args.no_progress, log=lambda message: print(message, file=sys.stderr))
    print_leaderboard(args.results)
    if failures:
        print(f"{len(failures)} run(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    return print_leaderboard(args.results)


def demo_suite_path() -> Path:
    """configs/demo.yaml of the checkout this package runs from."""
    path = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    if not path.is_file():
        raise DfbenchInputError(f"{path} not found: run the demo from a dfbench checkout (pip install -e .)")
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    from dfbench.runner import run_suite

    started = time.perf_counter()
    _, failures = run_suite(demo_suite_path(), args.results, force=args.force, strict=True, progress=False,
                            log=lambda message: print(message, file=sys.stderr))
    print_leaderboard(args.results)
    print(f"demo finished in {time.perf_counter() - started:.0f} s. Tiny backbones have random weights: these "
          "numbers exercise the pipeline, they are not benchmark scores.")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------- perf
def cmd_perf(args: argparse.Namespace) -> int:
    from dfbench import perf

    if args.out:
        check_output_path(args.out, ".json")
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    if args.suite == "recipes":
        backbones = args.backbone or ["sd15"]
        if len(backbones) != 1:
            raise DfbenchInputError("perf recipes: give one --backbone")
        results = perf.run_recipes(backbones[0], args.resolution, args.dtype or "float32", args.repeats,
                                   args.ensemble, args.device or "cpu", log=log)
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


# ---------------------------------------------------------------------------------------- cache
def cmd_cache(args: argparse.Namespace) -> int:
    import shutil

    from tabulate import tabulate

    from dfbench.cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    stores = cache.stores()
    if args.action == "ls":
        rows = []
        for store in stores:
            settings, summary = store.config["settings"], store.summary()
            rows.append([store.config["backbone"], store.folder.name, settings["resolution"], settings["timestep"],
                         "yes" if settings["add_noise"] else "no", settings["ensemble_size"], settings["seed"],
                         settings["prompt"] or "''", store.config["storage_dtype"], summary["images"],
                         summary["entries"], f"{summary['bytes'] / 2**20:.1f}"])
        print(f"feature cache {cache.root}")
        print(tabulate(rows, headers=["backbone", "config", "res", "t", "noise", "ens", "seed", "prompt", "stored",
                                      "images", "entries", "MiB"]))
        return 0
    if args.action == "verify":
        bad = 0
        for store in stores:
            recorded = set(store.recorded_shards())
            on_disk = {path.name for path in (store.folder / "shards").glob("*.safetensors")}
            damaged = sorted(shard for shard in recorded if not store.verify_shard(shard))
            unrecorded = sorted(on_disk - recorded)
            for shard in damaged:
                print(f"damaged: {store.folder / 'shards' / shard} (sha256 differs from its journal)")
            for shard in unrecorded:
                print(f"unrecorded: {store.folder / 'shards' / shard} (no journal line; ignored)")
            if args.repair:
                for shard in [*damaged, *unrecorded]:
                    (store.folder / "shards" / shard).unlink(missing_ok=True)
                store.merge_manifest()
            bad += len(damaged)
            print(f"{store.config['backbone']}/{store.folder.name}: {len(recorded) - len(damaged)} shards ok, "
                  f"{len(damaged)} damaged, {len(unrecorded)} unrecorded")
        if bad and not args.repair:
            print(f"{bad} damaged shard(s): their features are recomputed on next use; `--repair` deletes them")
            return 1
        return 0
    chosen = [store for store in stores if args.all or store.config["backbone"] == args.backbone
              or store.folder.name == args.config]
    if not (args.all or args.backbone or args.config):
        raise DfbenchInputError("cache prune: say what to delete: --backbone NAME, --config HASH or --all")
    for store in chosen:
        size = store.summary()["bytes"]
        shutil.rmtree(store.folder)
        print(f"deleted {store.folder} ({size / 2**20:.1f} MiB)")
    if not chosen:
        print("nothing matched; see `dfbench cache ls`")
    return 0


# ---------------------------------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from dfbench.results import compare_to_baseline, load_results, write_baseline

    records = load_results(args.results)
    if args.update:
        path = write_baseline(records, args.baseline, 0.5 if args.tolerance is None else args.tolerance)
        print(f"baseline written to {path}")
        return 0
    rows, passed = compare_to_baseline(records, args.baseline, args.tolerance)
    print(tabulate(rows, headers=["protocol", "backbone / selection", "settings", "metric", "baseline", "current",
                                  "change", "status"], floatfmt=".2f"))
    failed = sum(row[-1] != "ok" for row in rows)
    print("no regression" if passed else f"{failed} metric(s) regressed or missing")
    return 0 if passed else 1
