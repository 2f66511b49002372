"""dfbench perf: the extraction recipes, throughput, matching and cache timed side by side."""

from __future__ import annotations

import argparse
import sys

from dfbench.cli.common import (
    check_output_path,
)
from dfbench.errors import DfbenchInputError
from dfbench.settings import resolution_flag


def add_parser(commands: argparse._SubParsersAction) -> None:
    from dfbench.perf import SUITES

    perf = commands.add_parser(
        "perf", help="speed and memory suites, measured side by side (`dfbench perf list`)",
        description="Each suite times its steps side by side in one process (full-size random-weight models "
        "unless said otherwise) and prints a JSON report; --out also writes it. `dfbench perf list` prints the "
        "suites. " + " ".join(f"{suite.name}: {suite.summary}." for suite in SUITES.values()),
    )
    perf.add_argument("suite", nargs="?", choices=["list", *SUITES], default="recipes",
                      help="the suite to run (default recipes), or list")
    perf.add_argument("--backbone", nargs="+", default=None, help="recipes: one (default sd15); "
                      "throughput: several (default sd15 sd21 sdxl)")
    perf.add_argument("--resolution", type=resolution_flag, help="recipes: input size (default: the backbone's)")
    perf.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default float32 (recipes), "
                      "bfloat16 (throughput)")
    perf.add_argument("--repeats", type=int, default=1, help="timed runs per step; the median is reported")
    perf.add_argument("--ensemble", type=int, default=8, help="recipes: ensemble size (default 8, as DIFT)")
    perf.add_argument("--batch-size", type=int, default=8, help="throughput: images per batch")
    perf.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    perf.add_argument("--peak-tflops", type=float, help="throughput: the device's dense peak, for the fraction")
    perf.add_argument("--compile", action="store_true", help="throughput: also time each backbone compiled "
                      "(torch.compile of the blocks the pass runs through), side by side with eager")
    perf.add_argument("--pairs", type=int, default=12234, help="matching: pairs (default: SPair test, 12,234)")
    perf.add_argument("--images", type=int, default=1800, help="matching: distinct images (default 1,800)")
    perf.add_argument("--quick", action="store_true", help="segmentation, pipeline: tiny-sd15 only")
    perf.add_argument("--select", nargs="+", metavar="NAME", help="backbone: activations extracted (default blocks.11)")
    perf.add_argument("--text-encoders", choices=["all", "clip", "none"],
                      help="backbone: text encoders built with weights (a DiT's T5 left out with clip / none)")
    perf.add_argument("--preset", default="tale-of-two", help="fusion: the fusion preset (default tale-of-two)")
    perf.add_argument("--weights-dir", help="truncation: where the random full-size folder is written (default "
                      "$DFBENCH_HOME/perf/<backbone>-random-<dtype>; reused once complete)")
    perf.add_argument("--out", help="also write the results as JSON here")
    perf.set_defaults(handler=cmd_perf)


def cmd_perf(args: argparse.Namespace) -> int:
    from dfbench.perf import SUITES
    from dfbench.perf.common import format_report

    if args.suite == "list":
        for suite in SUITES.values():
            print(f"{suite.name:<13} {suite.summary}")
        return 0
    for flag in ("repeats", "ensemble", "batch_size", "pairs", "images"):
        if getattr(args, flag) < 1:
            raise DfbenchInputError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be ≥ 1")
    if args.out:
        check_output_path(args.out, ".json")
    report = format_report(SUITES[args.suite].run(args, lambda message: print(message, file=sys.stderr)))
    print(report)
    if args.out:
        from dfbench.atomic import atomic_write_text

        atomic_write_text(args.out, report + "\n")
    return 0
