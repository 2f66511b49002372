"""dfbench activations: every addressable activation of a backbone with its shape (no weights)."""

from __future__ import annotations

import argparse
import json
import re

from dfbench.backbones.protocol import ConfiguredBackbone
from dfbench.errors import DfbenchInputError
from dfbench.settings import resolution_flag


def add_parser(commands: argparse._SubParsersAction) -> None:
    activations = commands.add_parser(
        "activations", help="list every addressable activation of a backbone with its shape (no weights needed)",
        description="List every addressable activation name with channels, height and width at a resolution. "
        "Shapes come from a forward pass on PyTorch's meta device with the real architecture config: no weights "
        "are downloaded or loaded.",
    )
    activations.add_argument("backbone", help="backbone name, e.g. sd15, sd21, sdxl, tiny-sd15")
    activations.add_argument("--resolution", type=resolution_flag,
                             help="input size in pixels, 1…8192 (default: the backbone's)")
    activations.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                             help="backbone option (a fusion's input sizes: resolution.<source>=N)")
    activations.add_argument("--grep", metavar="PATTERN", help="keep names matching this regular expression")
    activations.add_argument("--format", choices=["table", "json"], default="table")
    activations.set_defaults(handler=cmd_activations)


def cmd_activations(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from dfbench.cli.common import parse_options
    from dfbench.resolve import build_backbone

    options = parse_options(args.backbone_option, "--backbone-option")
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
