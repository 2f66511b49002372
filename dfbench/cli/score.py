"""dfbench score: saved predictions scored against a split, no backbone loaded."""

from __future__ import annotations

import argparse
import json
import sys

from dfbench.cli.common import (
    format_metrics,
    parse_options,
)
from dfbench.cli.listing import tasks_help


def add_parser(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser(
        "score", help="score saved predictions against a split's ground truth (no backbone loaded)",
        description="Score predictions saved by `dfbench run --save-predictions` (or written by any other method "
        "in the task's format, see the README) against the ground truth of a split, exactly as `run` scores "
        "them. Prints the metrics; with --results, also writes a run record whose leaderboard row is --name.",
        help_appendix=tasks_help,
    )
    score.add_argument("--task", required=True, help="task, or task/protocol (listed at the end of this help)")
    score.add_argument("--data-root", required=True, help="dataset folder ('mini': the embedded mini set)")
    score.add_argument("--split", help="dataset split (default: the task's evaluation split, listed at the end of "
                       "this help)")
    score.add_argument("--predictions", required=True, metavar="DIR", help="folder holding the predictions")
    score.add_argument("--limit", type=int, metavar="N", help="the same --limit as the run (with its --seed)")
    score.add_argument("--seed", type=int, default=0, help="the run's seed, for --limit's sample (default 0)")
    score.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="the run's protocol options that choose the evaluated items (each protocol's options are "
                       "listed at the end of this help)")
    score.add_argument("--format", choices=["table", "json"], default="table")
    score.add_argument("--results", help="also write a run record into this results folder")
    score.add_argument("--name", help="with --results: the leaderboard row label (default: the folder's name)")
    score.set_defaults(handler=cmd_score)


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
