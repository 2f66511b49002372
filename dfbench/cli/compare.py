"""dfbench compare: the regression gate against a baseline."""

from __future__ import annotations

import argparse

from dfbench.errors import DfbenchInputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare", help="the regression gate: compare the latest runs with a baseline (exit 1 on a drop)",
        description="For every metric in the baseline, compare the latest run of the same protocol, backbone / "
        "selection and settings. Exit 1 if one is worse by more than its tolerance (in the metric's own units, "
        "e.g. PCK points; the direction comes from each metric's spec: lower is better for RMSE, AbsRel, AEPE) or "
        "has no run; with --two-sided also if one is better by more than its tolerance (a deterministic CI "
        "baseline: the numbers changed, update it deliberately). Each change is printed beside the run's "
        "bootstrap standard error; when a metric moves, the line after the table names what differs between the "
        "baseline's environment (package versions, CPU, thread setup, recorded by --update) and the runs'. "
        "--update rewrites the baseline from the current runs, keeping its tolerances.",
    )
    compare.add_argument("results", nargs="?", default="results", help="results folder (default ./results)")
    compare.add_argument("--baseline", required=True, help="baseline JSON, e.g. results/baselines/ci.json")
    compare.add_argument("--tolerance", type=float, help="allowed drop (default: the baseline's, else 0.5)")
    compare.add_argument("--metric-tolerance", action="append", default=[], metavar="METRIC=X",
                         help="a tolerance for one metric (repeatable; stored in the baseline by --update)")
    compare.add_argument("--two-sided", action="store_true",
                         help="also fail when a metric is better than the baseline by more than its tolerance")
    compare.add_argument("--update", action="store_true", help="write the current metrics as the new baseline")
    compare.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from dfbench.gate import baseline_environment_note, check_tolerance, compare_to_baseline, write_baseline
    from dfbench.results import load_results

    metric_tolerances = {}
    for item in args.metric_tolerance:
        metric, _, value = item.partition("=")
        try:
            metric_tolerances[metric.strip()] = float(value)
        except ValueError:
            raise DfbenchInputError(f"--metric-tolerance {item!r}: expected METRIC=NUMBER, e.g. aepe=0.1") from None
        check_tolerance(f"--metric-tolerance {metric.strip()}=", metric_tolerances[metric.strip()])
    if args.tolerance is not None:
        check_tolerance("--tolerance", args.tolerance)
    records = load_results(args.results)
    if args.update:
        path = write_baseline(records, args.baseline, args.tolerance, metric_tolerances)
        print(f"baseline written to {path}")
        return 0
    rows, passed = compare_to_baseline(records, args.baseline, args.tolerance, metric_tolerances, args.two_sided)
    print(tabulate(rows, headers=["protocol", "backbone / selection", "data", "settings", "metric", "baseline",
                                  "current", "change", "±stderr", "tolerance", "status"], floatfmt=".3f"))
    failed = sum(row[-1] not in ("ok", "improved") for row in rows)
    print("no regression" if passed else f"{failed} metric(s) regressed, changed or missing")
    if not passed:
        print(baseline_environment_note(records, args.baseline))
    return 0 if passed else 1
