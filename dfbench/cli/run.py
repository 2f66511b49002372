"""dfbench run / suite / leaderboard: run pairings, record them, render the leaderboard."""

from __future__ import annotations

import argparse
import sys

from dfbench.cli.common import (
    TRUNCATE_HELP,
    add_settings_arguments,
    format_metrics,
    given_settings,
    parse_options,
    print_leaderboard,
)
from dfbench.cli.listing import tasks_help
from dfbench.errors import DfbenchInputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run", help="run one backbone × task pairing and record it under results/",
        description="Evaluate a backbone with an activation selection on a task; make the run's folder "
        "results/runs/<run id>/ with its record (record.json), figures and (--save-predictions) predictions, and "
        "refresh the leaderboard. Every task, its default split, protocols and options are listed at the end.",
        help_appendix=tasks_help,
    )
    run.add_argument("--backbone", required=True, help="backbone name (see `dfbench list backbones`)")
    run.add_argument("--task", required=True,
                     help="task, or task/protocol (every task and protocol is listed at the end of this help)")
    run_choice = run.add_mutually_exclusive_group(required=True)
    run_choice.add_argument("--select", nargs="+", metavar="NAME", help="activation names or aliases")
    run_choice.add_argument("--preset", help="a named recipe: selection + settings")
    run.add_argument("--data-root", help="dataset folder in its native layout ('mini': the embedded mini set)")
    run.add_argument("--split", help="dataset split (default: the task's evaluation split, listed at the end of "
                     "this help)")
    run.add_argument("--limit", "--limit-pairs", dest="limit", type=int, metavar="N",
                     help="evaluate N items of the split, a seeded random sample (SPair: pairs spread evenly over "
                     "the categories; the lists are grouped by category, so not the first N)")
    run.add_argument("--weights", metavar="DIR_OR_HUB_ID", help="load weights from here instead of the hub id")
    run.add_argument("--truncate", action="store_true", help=TRUNCATE_HELP)
    run.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="protocol option, repeatable: every protocol's options, with their types and defaults, "
                     "are listed at the end of this help (and by `dfbench list tasks`)")
    run.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                     help="backbone option, repeatable, over the preset's. A fusion (--backbone A+B, e.g. "
                     "sd15+dinov2-base; activations named A:<name>): resolution.<source>=N, weight.<source>=W, "
                     "pca.<source>=D (pair-fitted PCA, Tale of Two Features), renormalize=true, "
                     "upsample=direct|progressive")
    run.add_argument("--save-predictions", nargs="?", const=True, default=False, metavar="DIR",
                     help="save the predictions (into the run folder, or DIR) for `dfbench score`")
    run.add_argument("--results", default="results", help="results folder (default ./results)")
    run.add_argument("--device", help="cpu, cuda, cuda:1, … (default: cuda if available)")
    run.add_argument("--cache-dir", help="read/write features in this cache (also: $DFBENCH_CACHE)")
    run.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_settings_arguments(run)
    run.set_defaults(handler=cmd_run)

    suite = commands.add_parser(
        "suite", help="run every pairing listed in a YAML suite, then the leaderboard",
        description="Run the pairings of a suite YAML (configs/demo.yaml, configs/ci.yaml, configs/paper/*.yaml). "
        "A row whose dataset or weights are missing is skipped with one line saying what is missing and how to get "
        "it; the exit status is 1 only if nothing ran or a run failed on bad input (--strict: any skip fails). "
        "Rows may carry `published: {metric: value}` and `source:` (a paper and table): the leaderboard then shows "
        "measured, published and their difference, and --check-published exits 1 when a measured value misses "
        "its published one by more than --tolerance.")
    suite.add_argument("file", help="suite YAML (see configs/demo.yaml)")
    suite.add_argument("--results", default="results", help="results folder (default ./results)")
    suite.add_argument("--force", action="store_true", help="rerun pairings already recorded")
    suite.add_argument("--strict", action="store_true", help="fail (exit 1) at the first skipped or failing run")
    suite.add_argument("--check-published", action="store_true",
                       help="compare each measured metric with the row's published value (exit 1 beyond --tolerance)")
    suite.add_argument("--tolerance", type=float, default=1.0,
                       help="--check-published: allowed |measured − published|, in the metric's units (default 1.0)")
    suite.add_argument("--no-progress", action="store_true", help="hide progress bars")
    suite.add_argument("--get-data", action="store_true",
                       help="first fetch the datasets the suite needs (`dfbench data get --suite FILE`)")
    suite.set_defaults(handler=cmd_suite)

    leaderboard = commands.add_parser("leaderboard", help="render results/leaderboard.md and .csv from the runs")
    leaderboard.add_argument("--results", default="results", help="results folder (default ./results)")
    leaderboard.set_defaults(handler=cmd_leaderboard)


def cmd_run(args: argparse.Namespace) -> int:
    from dfbench.distributed import process_group
    from dfbench.runner import RunSpec, run_one

    settings = given_settings(args)
    spec = RunSpec(
        backbone=args.backbone, task=args.task, selection=args.select or [], preset=args.preset, settings=settings,
        data_root=args.data_root, split=args.split, limit=args.limit, weights=args.weights,
        options=parse_options(args.option), cache_dir=args.cache_dir, save_predictions=args.save_predictions,
        device=args.device, backbone_options=parse_options(args.backbone_option, "--backbone-option"),
        truncate=args.truncate,
    )
    if args.data_root is None:
        raise DfbenchInputError("--data-root DIR is required (or --data-root mini for the embedded mini set)")
    with process_group() as ranks:   # under torchrun: one process per GPU (protocols that train: gdf-uper)
        result, path = run_one(spec, args.results, progress=not args.no_progress and ranks.rank == 0,
                               figures=not args.no_figures, ranks=ranks)
        ranks.barrier()
    if ranks.rank != 0:
        return 0
    print(f"wrote {path}")
    print(format_metrics(result))
    return print_leaderboard(args.results)


def cmd_suite(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from dfbench.suite import published_check, run_suite

    if args.tolerance < 0:
        raise DfbenchInputError(f"--tolerance {args.tolerance}: must be ≥ 0")
    if args.get_data:
        from dfbench.cli.data import suite_datasets
        from dfbench.data.install import get
        from dfbench.data.manifest import find, load_manifest

        manifest = load_manifest()
        for dataset in find(manifest, suite_datasets(manifest, args.file)):
            get(dataset, progress=not args.no_progress, log=lambda message: print(message, file=sys.stderr))
    outcome = run_suite(args.file, args.results, force=args.force, strict=args.strict,
                        progress=not args.no_progress, log=lambda message: print(message, file=sys.stderr))
    ran = any(record is not None for _, record in outcome.recorded)
    if ran:
        print_leaderboard(args.results)
    if outcome.skipped:
        print(f"{len(outcome.skipped)} run(s) skipped:", *outcome.skipped, sep="\n  ", file=sys.stderr)
    if outcome.failures:
        print(f"{len(outcome.failures)} run(s) failed:", *outcome.failures, sep="\n  ", file=sys.stderr)
    status = 0 if ran and not outcome.failures else 1
    if not ran:
        print("nothing ran: every run of the suite was skipped or failed", file=sys.stderr)
    if args.check_published:
        rows, passed = published_check(outcome, args.tolerance)
        if rows:
            print(tabulate(rows, headers=["run", "metric", "published", "measured", "difference", "status"],
                           floatfmt=".3f"))
        measured = sum(row[3] is not None for row in rows)
        if not measured:
            print("no published value was measured (no row with published values ran)")
        elif passed:
            print(f"all {measured} measured values within ±{args.tolerance:g} of their published values")
        else:
            print(f"{sum(row[-1] == 'MISSES' for row in rows)} of {measured} measured values miss their published "
                  f"values by more than ±{args.tolerance:g}")
        status = status or (0 if passed else 1)
    return status


def cmd_leaderboard(args: argparse.Namespace) -> int:
    return print_leaderboard(args.results)
