"""dfbench activations: every addressable activation of a backbone with its shape (no weights)."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from dfbench.backbones.protocol import ConfiguredBackbone
from dfbench.cli.common import add_settings_arguments, given_settings
from dfbench.errors import DfbenchInputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    activations = commands.add_parser(
        "activations", help="list every addressable activation of a backbone with its shape (no weights needed)",
        description="List every addressable activation name with channels, height and width at a resolution. "
        "Shapes come from a forward pass on PyTorch's meta device with the real architecture config: no weights "
        "are downloaded or loaded. With --stats --images, the weights load and each listed activation's "
        "'massive activation' channels are reported: those whose largest |x| is more than --threshold times the "
        "median channel's (how DiTF's discarded FLUX channels 154 and 1446 are found in a new model).",
    )
    activations.add_argument("backbone", help="backbone name, e.g. sd15, sd21, sdxl, tiny-sd15")
    activations.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                             help="backbone option (a fusion's input sizes: resolution.<source>=N)")
    activations.add_argument("--grep", metavar="PATTERN", help="keep names matching this regular expression")
    activations.add_argument("--format", choices=["table", "json"], default="table")
    stats = activations.add_argument_group("channel statistics (load the weights, run images)")
    stats.add_argument("--stats", action="store_true", help="report each activation's outlier channels on --images")
    stats.add_argument("--images", nargs="+", metavar="PATH", help="image files or folders for --stats")
    stats.add_argument("--threshold", type=float, default=10.0,
                       help="a channel is an outlier when its max |x| exceeds this × the median channel's (default 10)")
    stats.add_argument("--weights", metavar="DIR_OR_HUB_ID", help="--stats: load weights from here instead of the hub")
    stats.add_argument("--device", help="--stats: cpu, cuda, … (default: cuda if available)")
    add_settings_arguments(activations)
    activations.set_defaults(handler=cmd_activations)


def cmd_activations(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from dfbench.cli.common import parse_options
    from dfbench.resolve import build_backbone

    options = parse_options(args.backbone_option, "--backbone-option")
    if args.stats:
        return print_stats(args, options)
    if args.images:
        raise DfbenchInputError("--images is for --stats (the shapes need no images)")
    backbone = build_backbone(args.backbone, options=options, weightless=True)
    rows = backbone.catalog(args.resolution)
    if args.grep:
        try:
            pattern = re.compile(args.grep)
        except re.error as error:
            raise DfbenchInputError(f"--grep {args.grep!r}: not a regular expression ({error})") from None
        rows = [row for row in rows if pattern.search(row.name)]
    from dfbench.activations import aliases_of

    def aliases(name: str) -> list[str]:      # a fusion's <source>:<name> has the aliases of <name>
        return aliases_of(name.rpartition(":")[2])

    if args.format == "json":
        print(json.dumps([{**row.to_dict(), "aliases": aliases(row.name)} for row in rows], indent=1))
    else:
        resolution = args.resolution or backbone.default_resolution
        where = backbone.describe() if isinstance(backbone, ConfiguredBackbone) else f"at {resolution}px"
        print(f"{backbone.name} {where}: {len(rows)} activations")
        print(tabulate([[r.name, r.channels, r.height, r.width, ", ".join(aliases(r.name))] for r in rows],
                       headers=["name", "channels", "height", "width", "aliases (CleanDIFT, DIFT, GDF)"]))
    return 0


def print_stats(args: argparse.Namespace, options: dict) -> int:
    """``--stats``: extract the listed activations (``--grep``) of ``--images`` and print their outlier channels."""
    from tabulate import tabulate

    from dfbench.activation_stats import massive_channels
    from dfbench.cli.common import image_paths
    from dfbench.images import load_image
    from dfbench.resolve import resolve_features

    if not args.images:
        raise DfbenchInputError("--stats needs --images PATH… (the images whose activations are measured)")
    if not args.grep:
        raise DfbenchInputError("--stats needs --grep PATTERN to choose the activations (all of them would run the "
                                "whole model and hold every map)")
    pattern = re.compile(args.grep)
    images = [load_image(path) for path in image_paths(args.images)]
    # the names are matched on the weightless model first: a --grep that matches nothing fails before weights load
    weightless = resolve_features(args.backbone, settings=given_settings(args), backbone_options=options,
                                  weightless=True, require_selection=False)
    names = [name for name in weightless.backbone.activation_names() if pattern.search(name)]
    if not names:
        raise DfbenchInputError(f"--grep {args.grep!r}: no activation of {args.backbone} matches")
    features = resolve_features(args.backbone, selection=names, settings=given_settings(args), weights=args.weights,
                                device=args.device, backbone_options=options)
    values = features.backbone.extract(images, features.selection, features.settings)
    report: list[dict[str, Any]] = []
    for name, value in values.items():
        median, outliers = massive_channels(value, args.threshold)
        report.append({"name": name, "channels": int(value.shape[1]), "median_peak": median,
                       "outliers": [{"channel": o.channel, "peak": o.peak, "ratio": o.ratio} for o in outliers]})
    if args.format == "json":
        print(json.dumps(report, indent=1))
        return 0
    print(f"{features.backbone.name} on {len(images)} image(s), outliers: max |x| > {args.threshold:g} × the median")
    print(tabulate([[row["name"], row["channels"], f"{row['median_peak']:.3g}",
                     ", ".join(f"{o['channel']} (×{o['ratio']:.0f})" for o in row["outliers"][:8]) or "none"]
                    for row in report], headers=["name", "channels", "median max|x|", "outlier channels"]))
    return 0
