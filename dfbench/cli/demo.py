"""dfbench demo: the offline demo suite (= python run_bench.py with no arguments)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dfbench.cli.common import (
    print_leaderboard,
)
from dfbench.errors import DfbenchInputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="the offline demo suite (configs/demo.yaml): tiny backbones × every "
                                 "task's mini set (SPair, ADE20K, Horse-21, NYUv2)")
    demo.add_argument("--results", default="results", help="results folder (default ./results)")
    demo.add_argument("--force", action="store_true", help="rerun pairings already recorded")
    demo.set_defaults(handler=cmd_demo)


def demo_suite_path() -> Path:
    """configs/demo.yaml of the checkout this package runs from."""
    path = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    if not path.is_file():
        raise DfbenchInputError(f"{path} not found: run the demo from a dfbench checkout (pip install -e .)")
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    from dfbench.suite import run_suite

    started = time.perf_counter()
    outcome = run_suite(demo_suite_path(), args.results, force=args.force, strict=True, progress=False,
                        log=lambda message: print(message, file=sys.stderr))
    print_leaderboard(args.results)
    print(f"demo finished in {time.perf_counter() - started:.0f} s. Tiny backbones have random weights: these "
          "numbers exercise the pipeline, they are not benchmark scores.")
    return 1 if outcome.failures else 0
