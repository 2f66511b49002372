"""dfbench extract: activations of images into a safetensors file, or a task split into the cache."""

from __future__ import annotations

import argparse
import json

from dfbench.cli.common import (
    TRUNCATE_HELP,
    add_settings_arguments,
    check_output_path,
    features_from_args,
    image_paths,
    write_safetensors_atomic,
)
from dfbench.errors import DfbenchInputError


def add_parser(commands: argparse._SubParsersAction) -> None:
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
                        "split (a task of `dfbench list tasks`, with --data-root, --split; under torchrun / "
                        "accelerate launch each rank takes disjoint batches)")
    choice = extract.add_mutually_exclusive_group(required=True)
    choice.add_argument("--select", nargs="+", metavar="NAME", help="activation names or aliases")
    choice.add_argument("--preset", help="a named recipe (see `dfbench list presets`): selection + settings")
    extract.add_argument("--out", help="with --images: output .safetensors file (written atomically)")
    extract.add_argument("--data-root", help="with --dataset: the dataset folder ('mini': the embedded mini set)")
    extract.add_argument("--split", help="with --dataset: the split (default: the task's evaluation split)")
    extract.add_argument("--cache-dir", help="with --dataset: feature cache root (default $DFBENCH_CACHE or "
                         "~/.cache/dfbench/features)")
    extract.add_argument("--storage-dtype", choices=["float16", "float32"], default="float16",
                         help="with --dataset: dtype of stored features (default float16)")
    add_settings_arguments(extract)
    extract.add_argument("--category", nargs="+", metavar="NAME",
                         help="category per image (or one for all) for a prompt containing {category}")
    extract.add_argument("--weights", metavar="DIR_OR_HUB_ID", help="load weights from here instead of the hub id")
    extract.add_argument("--truncate", action="store_true", help=TRUNCATE_HELP)
    extract.add_argument("--unet-weights", metavar="FILE",
                         help="CleanDIFT backbones: the UNet state-dict .safetensors (default: from the hub)")
    extract.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                         help="backbone option, repeatable, over the preset's (a fusion's resolution.<source>, "
                         "weight.<source>, pca.<source>, …: see `dfbench run --help`)")
    extract.add_argument("--device", help="cpu, cuda, cuda:1, … (default: cuda if available)")
    extract.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    extract.set_defaults(handler=cmd_extract)


def cmd_extract(args: argparse.Namespace) -> int:
    from dfbench import __version__
    from dfbench.images import load_image

    if args.dataset:
        return extract_dataset(args)
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

    resolved = features_from_args(args)
    backbone, settings = resolved.backbone, resolved.settings
    features = backbone.extract(images, resolved.selection, settings, categories=categories,
                                progress=not args.no_progress)
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


def extract_dataset(args: argparse.Namespace) -> int:
    """``extract --dataset``: fill the cache; under torchrun each rank takes every world_size-th batch."""
    from dfbench.cache import CacheItem, FeatureCache, cached_extract, image_key
    from dfbench.distributed import process_group
    from dfbench.registry import TASKS
    from dfbench.resolve import resolve_data_root

    if args.out:
        raise DfbenchInputError("--out is for --images; --dataset writes into the feature cache (--cache-dir)")
    with process_group() as ranks:
        cache = FeatureCache(args.cache_dir, args.storage_dtype)
        task = TASKS.get(args.dataset)()
        images = task.split_images(resolve_data_root(task, args.data_root), args.split or task.default_split)
        resolved = features_from_args(args, ranks.device)
        backbone, settings = resolved.backbone, resolved.settings
        store = cache.open(backbone, settings)
        items = [CacheItem(image_key(path), path, category) for path, category in images]
        counts = cached_extract(backbone, items, resolved.selection, settings, store, ranks.rank, ranks.world_size,
                                progress=not args.no_progress)
        ranks.barrier()
        if ranks.rank == 0:
            store.merge_manifest()
            store.reload()
            summary = store.summary()
            print(f"cache {store.folder}: {summary['images']} images, {summary['entries']} entries, "
                  f"{summary['bytes'] / 2**20:.1f} MiB")
        print(f"rank {ranks.rank}/{ranks.world_size}: {counts['computed']} images extracted, "
              f"{counts['hit']} already cached")
    return 0
