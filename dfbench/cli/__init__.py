"""The ``dfbench`` command line, one module per subcommand (as lm-eval's ``_cli/``).

Exit codes: 0 success, 1 a failed check, 2 bad input (one line on stderr, no traceback).

The subcommand modules import the layers they call (the runner, the resolver, the cache, the tasks: torch,
diffusers and mmseg behind them) inside their handlers, so ``dfbench --help`` and a mistyped flag answer in a
fraction of a second; everything else in the package imports at module top.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence

from dfbench.cli import activations, cache, compare, data, demo, extract, listing, perf, run, score, sweep
from dfbench.errors import DfbenchInputError

DESCRIPTION = """\
dfbench — benchmark diffusion features (Stable Diffusion activations used as dense descriptors).

Typical session:
  dfbench list backbones                       # what can be loaded
  dfbench activations sd15 --grep 'up_blocks.1\\.'   # addressable activations with shapes (no weights needed)
  dfbench extract tiny-sd15 --images a.png b.png --select up_blocks.1 --out feats.safetensors
  dfbench extract sd21 --images cat.jpg --preset dift --category cat --out cat.safetensors
  dfbench run --backbone sd21 --task spair --preset dift --data-root SPair-71k --cache-dir cache/
  dfbench run --backbone sd15 --task horse21 --preset gdf-ours-sd15-horse21 --data-root datasets/horse_21
  dfbench leaderboard                          # results/leaderboard.md and .csv from every run
  python run_bench.py                          # the offline demo: tiny backbones × every task's mini set

Activation names are diffusers module paths (up_blocks.1, up_blocks.1.resnets.2.increment,
up_blocks.1.attentions.1.transformer_blocks.0.attn2.q, …) or aliases: GDF
(up-level1-repeat1-vit-block0-cross-q), DIFT (up_ft_index=1), CleanDIFT (mid, us1…us10).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dfbench`` console script (and ``python run_bench.py``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except DfbenchInputError as error:
        print(f"dfbench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dfbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:        # the reader went away (`dfbench list tasks | head`): stop quietly
        sys.stderr.close()
        return 0


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors are one line (what is wrong, and where the help is), exit 2 — no usage block.
    ``help_appendix``: a function whose text ends ``--help``, built only when help is shown (it may import
    every task, which the other commands need not pay for)."""

    def __init__(self, *args: typing.Any, help_appendix: typing.Callable[[], str] | None = None,
                 **kwargs: typing.Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_appendix = help_appendix

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def format_help(self) -> str:
        text = super().format_help()
        return text + "\n" + self.help_appendix() if self.help_appendix else text


def build_parser() -> argparse.ArgumentParser:
    """The parser: every subcommand module adds its own subparser."""
    parser = OneLineErrorParser(
        prog="dfbench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    for module in (listing, activations, extract, perf, cache, data, run, compare, score, demo, sweep):
        module.add_parser(commands)
    return parser
