"""``python run_bench.py …`` is ``dfbench …``; with no command (none, or only options such as
``--results X``) it runs the offline demo."""

import sys

from dfbench.cli import main

if __name__ == "__main__":
    arguments = sys.argv[1:]
    if not arguments or (arguments[0].startswith("-") and arguments[0] not in ("-h", "--help")):
        arguments = ["demo", *arguments]  # `python run_bench.py --results X`: the demo's options
    raise SystemExit(main(arguments))
