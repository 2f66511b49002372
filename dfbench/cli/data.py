"""dfbench data: list, fetch and verify the datasets the tasks read."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dfbench.errors import DfbenchInputError

DESCRIPTION = """\
ls: every known dataset — where it lives ($DFBENCH_DATA/<folder>, default ./data: the paths the paper suites
use), missing / present / verified, size on disk, how its files are checked, the tasks and suites that need it.
get NAME…: download (resumable: run the same command again after a dropped connection or Ctrl-C), check the
size and checksum (published, else recorded on the first download in $DFBENCH_HOME/data.lock.json and checked
ever after), unpack into a staging folder beside the destination, check the layout with the task's own
loader, and only then move it into place. --suite FILE: what a suite needs. --mirror URL (or
$DFBENCH_DATA_MIRROR): the same file names from another server, with the same checks. cityscapes needs an
account: credentials from $CITYSCAPES_USERNAME / $CITYSCAPES_PASSWORD or cityscapesScripts' prompt, or the two
zips already downloaded (--from DIR).
verify [NAME…]: check the installed datasets again (archives kept in $DFBENCH_DATA/.downloads, files in place,
layouts); exit 1 if one is damaged.

  dfbench data ls
  dfbench data get spair nyuv2 --dry-run
  dfbench data get --suite configs/paper/meng2024.yaml
  dfbench data get cityscapes --from ~/Downloads
  dfbench data verify spair
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="list, fetch and verify the datasets (SPair-71k, ADE20K, NYUv2, …)",
                               description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    data.add_argument("action", choices=["ls", "get", "verify"])
    data.add_argument("names", nargs="*", metavar="NAME", help="datasets (see `dfbench data ls`)")
    data.add_argument("--suite", help="get: the datasets a suite's rows need")
    data.add_argument("--dry-run", action="store_true", help="get: print URLs, sizes and destinations only")
    data.add_argument("--mirror", help="get: fetch the same file names from this URL (default $DFBENCH_DATA_MIRROR)")
    data.add_argument("--from", dest="source", help="get: a folder of archives downloaded by hand (a dataset behind "
                      "a login)")
    data.add_argument("--format", choices=["table", "json"], default="table", help="ls: output format")
    data.add_argument("--no-progress", action="store_true", help="no progress bars")
    data.set_defaults(handler=cmd_data)


def cmd_data(args: argparse.Namespace) -> int:
    from dfbench.data.manifest import find, load_manifest

    manifest = load_manifest()
    if args.action == "ls":
        return show_listing(manifest, args.format)
    names = list(args.names)
    if args.suite:
        names += [name for name in suite_datasets(manifest, args.suite) if name not in names]
    if args.action == "get" and not names:
        raise DfbenchInputError("dfbench data get: name the datasets (`dfbench data ls`) or pass --suite FILE")
    if args.action == "verify":
        return verify_all(manifest, names)
    datasets = find(manifest, names)
    if args.dry_run:
        return dry_run(datasets, args.mirror)
    from dfbench.data.install import get

    source = Path(args.source) if args.source else None
    if source is not None and not source.is_dir():
        raise DfbenchInputError(f"--from {source}: no such folder")
    try:
        for dataset in datasets:
            get(dataset, args.mirror, source, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("dfbench: interrupted; run the same command again to resume the download", file=sys.stderr)
        return 130
    return 0


def show_listing(manifest: dict, output_format: str) -> int:
    from tabulate import tabulate

    from dfbench.data.install import listing
    from dfbench.data.manifest import data_root

    rows = listing(manifest)
    if output_format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        row["size"] = f"{row['size'] / 1e6:,.1f} MB" if row["size"] else "-"
    print(f"data root: {data_root()} ($DFBENCH_DATA)")
    print(tabulate(rows, headers="keys"))
    print("checksums: 'trust on first use' files are checked against the sha256 recorded at their first download")
    return 0


def dry_run(datasets: list, mirror: str | None) -> int:
    from dfbench.data.manifest import data_mirror, data_root

    for dataset in datasets:
        for item in dataset.files:
            url = item.source_url(data_mirror(mirror))
            size = f"{item.size:,} bytes" if item.size else "size not published"
            print(f"{dataset.name}: {url} ({size}) → {dataset.location(data_root())}")
    return 0


def verify_all(manifest: dict, names: list[str]) -> int:
    from dfbench.data.install import installed, verify
    from dfbench.data.manifest import data_root, find

    datasets = find(manifest, names) if names else [d for d in manifest.values() if installed(d, data_root())]
    if not datasets:
        print(f"no dataset installed under {data_root()} (`dfbench data ls`)")
        return 0
    failed = False
    for dataset in datasets:
        try:
            print(verify(dataset))
        except DfbenchInputError as error:
            print(f"{dataset.name}: FAILED — {error}")
            failed = True
    return 1 if failed else 0


def suite_datasets(manifest: dict, suite_file: str) -> list[str]:
    """The datasets a suite's rows read: their data roots, and files their options name."""
    from dfbench.data.manifest import dataset_for_path
    from dfbench.suite import expand_data_root, load_suite

    names = []
    for spec in load_suite(suite_file):
        paths = [spec.data_root or "", *(str(value) for value in spec.options.values() if isinstance(value, str))]
        for path in paths:
            dataset = dataset_for_path(manifest, expand_data_root(path))
            if dataset is not None and dataset.name not in names:
                names.append(dataset.name)
    return names
