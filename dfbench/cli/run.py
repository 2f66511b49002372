"""dfbench run / suite / leaderboard: run pairings, record them, render the leaderboard."""

from __future__ import annotations

import argparse
import sys

from dfbench.cli.common import (
    add_settings_arguments,
    format_metrics,
    given_settings,
    parse_options,
    print_leaderboard,
)
from dfbench.errors import DfbenchInputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run", help="run one backbone × task pairing and record it under results/",
        description="Evaluate a backbone with an activation selection on a task; make the run's folder "
        "results/runs/<run id>/ with its record (record.json), figures and (--save-predictions) predictions, and "
        "refresh the leaderboard. Protocol options: `dfbench list tasks`.",
    )
    run.add_argument("--backbone", required=True, help="backbone name (see `dfbench list backbones`)")
    run.add_argument("--task", required=True, help="task or task/protocol, e.g. spair or spair/dift-nn")
    run_choice = run.add_mutually_exclusive_group(required=True)
    run_choice.add_argument("--select", nargs="+", metavar="NAME", help="activation names or aliases")
    run_choice.add_argument("--preset", help="a named recipe: selection + settings")
    run.add_argument("--data-root", help="dataset folder in its native layout ('mini': the embedded mini set)")
    run.add_argument("--split", help="dataset split (default: the task's evaluation split: spair test, "
                     "ade20k / cityscapes val, horse21 test)")
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
                     "training image); ade20k / cityscapes linear: steps, lr, batch_size, pixels_per_image, "
                     "train_limit; gdf-uper: iters, crop_size, batch_size, lr, val_interval, checkpoint_interval, "
                     "workers, adapter, seg_pad_val, …; horse21 (ddpm, gdf-resplit): seeds, members, epochs, "
                     "resolution, upsample, min_pixels, train_limit")
    run.add_argument("--save-predictions", nargs="?", const=True, default=False, metavar="DIR",
                     help="save the predictions (into the run folder, or DIR) for `dfbench score`")
    run.add_argument("--results", default="results", help="results folder (default ./results)")
    run.add_argument("--device", help="cpu, cuda, cuda:1, … (default: cuda if available)")
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


def cmd_run(args: argparse.Namespace) -> int:
    from dfbench.distributed import process_group
    from dfbench.runner import RunSpec, run_one

    settings = given_settings(args)
    spec = RunSpec(
        backbone=args.backbone, task=args.task, selection=args.select or [], preset=args.preset, settings=settings,
        data_root=args.data_root, split=args.split, limit=args.limit, weights=args.weights,
        options=parse_options(args.option), cache_dir=args.cache_dir, save_predictions=args.save_predictions,
        device=args.device,
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
