"""dfbench sweep: rank activations (and timesteps, prompts) for a task with its cheapest protocol."""

from __future__ import annotations

import argparse
import sys

from dfbench.cli.common import add_settings_arguments, given_settings, parse_options
from dfbench.cli.listing import tasks_help
from dfbench.errors import DfbenchInputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep", help="rank candidate activations × timesteps for a task (one forward per image per timestep)",
        description="Expand --candidates glob patterns over the backbone's activation catalog (`dfbench activations "
        "B`), extract all of them in one forward per image per timestep into the feature cache, "
        "evaluate each alone with the task's cheapest protocol (its 'sweep:' protocol, listed at the end of "
        "this help), optionally combine the best K greedily, and write a "
        "ranked table (metric ± bootstrap stderr, ≈ = within noise of the one above) and an activation × "
        "timestep heatmap into RESULTS/sweeps/<id>/. Every evaluation is a normal run record; a re-run or a "
        "killed sweep computes only what is missing. Under torchrun each rank extracts its share of the images.",
        help_appendix=tasks_help,
    )
    sweep.add_argument("--backbone", required=True, help="backbone name (see `dfbench list backbones`)")
    sweep.add_argument("--task", required=True, help="task, or task/protocol to override the cheapest one")
    sweep.add_argument("--candidates", nargs="+", required=True, metavar="PATTERN",
                       help="activation names or glob patterns, e.g. 'up_blocks.1.*' 'up_blocks.2.attentions.*'")
    sweep.add_argument("--timesteps", help="comma-separated timesteps, e.g. 0,50,261 (default: --timestep or 261)")
    sweep.add_argument("--prompts", nargs="+", help="prompt templates to sweep (default: --prompt or '')")
    sweep.add_argument("--combine-top", type=int, default=0, metavar="K",
                       help="greedily combine the best K activations at the best timestep (default: off)")
    sweep.add_argument("--data-root", default="mini", help="dataset folder ('mini': the embedded mini set)")
    sweep.add_argument("--split", help="evaluated split (default: the task's)")
    sweep.add_argument("--limit", type=int, metavar="N", help="evaluate a seeded sample of N items")
    sweep.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="protocol option")
    sweep.add_argument("--weights", metavar="DIR_OR_HUB_ID", help="load weights from here instead of the hub id")
    sweep.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                       help="backbone option (a fusion's resolution.<source>, weight.<source>, …)")
    sweep.add_argument("--device", help="cpu, cuda, … (default: cuda if available)")
    sweep.add_argument("--cache-dir", help="feature cache (default $DFBENCH_CACHE or ~/.cache/dfbench/features)")
    sweep.add_argument("--results", default="results", help="results folder (default ./results)")
    sweep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_settings_arguments(sweep)
    sweep.set_defaults(handler=cmd_sweep)


def parse_timesteps(text: str | None) -> list[int] | None:
    """``"0,50,261"`` → ``[0, 50, 261]``; a malformed list is one line."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DfbenchInputError(f"--timesteps {text!r}: expected comma-separated integers, e.g. 0,50,261") from None
    if not values or any(not 0 <= value <= 999 for value in values):
        raise DfbenchInputError(f"--timesteps {text!r}: give timesteps in 0…999")
    return list(dict.fromkeys(values))


def cmd_sweep(args: argparse.Namespace) -> int:
    from dfbench.resolve import DEFAULT_DTYPE, build_backbone
    from dfbench.sweep import ranked, run_sweep

    timesteps = parse_timesteps(args.timesteps)
    if args.combine_top < 0 or (args.limit is not None and args.limit < 1):
        raise DfbenchInputError("--combine-top must be ≥ 0 and --limit ≥ 1")
    settings = given_settings(args)
    backbone = build_backbone(args.backbone, dtype=settings.get("dtype", DEFAULT_DTYPE), weights=args.weights,
                              device=args.device,
                              options=parse_options(args.backbone_option or [], "--backbone-option"))
    result = run_sweep(backbone, args.task, args.candidates, timesteps, args.prompts, args.combine_top,
                       args.data_root, args.split, args.limit, settings, parse_options(args.option), args.results,
                       args.cache_dir, progress=not args.no_progress,
                       log=lambda message: print(message, file=sys.stderr))
    if result.folder is None:       # a torchrun rank other than 0: it extracted its share
        return 0
    print((result.folder / "sweep.md").read_text())
    best = ranked(result.singles + result.combinations, result.higher_is_better)[0]
    print(f"best: {best.label} at t={best.timestep}: {result.metric} = {best.value:.2f} ± {best.stderr:.2f}")
    print(f"{result.forwards} forwards for {result.images} images ({result.forwards / max(result.images, 1):.2f} "
          f"per image over all timesteps and prompts); wrote {result.folder}")
    return 0
