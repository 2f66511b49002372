"""Pieces shared by the subcommands: the settings flags, --option parsing, output paths, reports."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dfbench.errors import DfbenchInputError
from dfbench.settings import resolution_flag

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedFeatures

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The ExtractSettings flags; unset flags keep the preset's or the default value."""
    group = parser.add_argument_group("extraction settings (override the preset)")
    group.add_argument("--resolution", type=resolution_flag, help="square input size in pixels (default: backbone's)")
    group.add_argument("--resize-mode", choices=["squash", "pad"], help="squash (DIFT/GDF) or pad (keep aspect)")
    group.add_argument("--timestep", type=int, help="diffusion timestep t, 0…999 (default 261)")
    group.add_argument("--no-noise", dest="add_noise", action="store_const", const=False,
                       help="feed the clean latent (CleanDIFT)")
    group.add_argument("--ensemble", dest="ensemble_size", type=int, help="noise draws averaged (default 1)")
    group.add_argument("--seed", type=int, help="seed of every random draw (default 0)")
    group.add_argument("--prompt", help="prompt template; {category} is replaced per image (default '')")
    group.add_argument("--latent-mode", choices=["mode", "sample"], help="posterior mean or a seeded sample")
    group.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    group.add_argument("--batch-size", type=batch_size_flag,
                       help="denoiser rows per forward (default 8), or auto: the largest that fits the device, from "
                       "one probe cached in $DFBENCH_HOME/batch_sizes.json")
    group.add_argument("--pad-color", choices=["grey", "black"], help="the fill of --resize-mode pad (default grey)")
    group.add_argument("--text-encoders", choices=["all", "clip", "none"],
                       help="text encoders that condition the denoiser: all (default), clip (a T5 replaced by zeros: "
                       "SD3 / FLUX without the 9.5 GB T5) or none (zero embeddings of the right shapes)")
    group.add_argument("--resample", choices=["bicubic", "lanczos", "bilinear"],
                       help="the filter that resizes images (default bicubic; Tale of Two Features: lanczos)")
    group.add_argument("--tile", type=int, help="ODISE's sliding window: run the model on TILE-px squares of the input "
                       "and stitch the maps, overlaps averaged (Tale of Two Features / GeoAware-SC: 512 of 960)")
    group.add_argument("--tile-stride", type=int, help="the tiles' step in px (default: the tile size, ODISE's)")
    group.add_argument("--compile", action="store_const", const=True,
                       help="torch.compile the denoiser blocks the pass runs through and the VAE encoder (same "
                       "features within 1e-4, not part of the cache key; the first batch pays the compilation)")


def batch_size_flag(text: str) -> int | str:
    """argparse type of ``--batch-size``: a positive integer, or ``auto``."""
    import argparse

    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows or 'auto'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be ≥ 1 (or auto)")
    return value


TRUNCATE_HELP = ("load a DiT's denoiser only as deep as the selected activations reach: the later blocks are never "
                 "read from the weight files (same features, far less memory: FLUX.1-dev to "
                 "single_transformer_blocks.9 loads 7.9 of its 11.9 B values)")


SETTINGS_FLAGS = ("resolution", "resize_mode", "timestep", "add_noise", "ensemble_size", "seed", "prompt",
                  "latent_mode", "dtype", "batch_size", "pad_color", "resample", "text_encoders", "tile",
                  "tile_stride", "compile")


def given_settings(args: argparse.Namespace) -> dict:
    """The settings flags that were given on the command line."""
    return {flag: getattr(args, flag) for flag in SETTINGS_FLAGS if getattr(args, flag, None) is not None}



def parse_options(items: Sequence[str], flag: str = "--option") -> dict[str, str]:
    """``["a=1", "b=x"]`` → ``{"a": "1", "b": "x"}``; a malformed item is a one-line error."""
    options = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise DfbenchInputError(f"{flag} {item!r}: expected KEY=VALUE")
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
    limit = os.pathconf(folder, "PC_NAME_MAX")
    if len(path.name.encode()) > limit:
        raise DfbenchInputError(f"--out {path.name[:40]}…: the file name has {len(path.name.encode())} bytes, more "
                                f"than this file system allows ({limit}); choose a shorter name")
    return path


def write_safetensors_atomic(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temp file in the same folder and an atomic rename."""
    from safetensors.torch import save_file

    from dfbench.atomic import atomic_write

    contiguous = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    atomic_write(path, lambda temp: save_file(contiguous, str(temp), metadata))



def features_from_args(args: argparse.Namespace, device: str | None = None,
                       require_selection: bool = True) -> ResolvedFeatures:
    """The feature side of a command, resolved once (:func:`dfbench.resolve.resolve_features`) from its flags:
    the backbone (``--weights``, ``--device``, ``--unet-weights`` where the command has it, the preset's backbone
    options under ``--backbone-option``), the canonical selection (``--select`` or the preset's) and the settings
    (backbone defaults < preset < flags)."""
    from dfbench.resolve import resolve_features

    return resolve_features(args.backbone, selection=getattr(args, "select", None) or [],
                            preset=getattr(args, "preset", None), settings=given_settings(args),
                            weights=args.weights, device=device or args.device,
                            backbone_options=parse_options(getattr(args, "backbone_option", None) or [],
                                                           "--backbone-option"),
                            unet_weights=getattr(args, "unet_weights", None), require_selection=require_selection,
                            truncate=bool(getattr(args, "truncate", False)))
