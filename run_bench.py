"""``python run_bench.py …`` is ``dfbench …``; with no arguments it runs the offline demo."""

import sys

from dfbench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or ["demo"]))
