"""dfbench compare: the regression gate against a baseline."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
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
