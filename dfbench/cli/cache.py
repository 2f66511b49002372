"""dfbench cache: inspect, verify or prune the feature cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfbench.errors import DfbenchInputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    cache = commands.add_parser(
        "cache", help="inspect, verify or prune the feature cache",
        description="ls: size per backbone / settings. verify: check every shard's sha256 (exit 1 if any is "
        "damaged; --repair deletes damaged and unrecorded shards so their features are recomputed). prune: delete "
        "the configurations of a backbone, one configuration, or all.",
    )
    cache.add_argument("action", choices=["ls", "verify", "prune"])
    cache.add_argument("--cache-dir", help="cache root (default $DFBENCH_CACHE or ~/.cache/dfbench/features)")
    cache.add_argument("--repair", action="store_true", help="verify: delete damaged and unrecorded shards")
    cache.add_argument("--backbone", help="prune: every configuration of this backbone")
    cache.add_argument("--config", help="prune: this configuration (hash shown by ls)")
    cache.add_argument("--all", action="store_true", help="prune: everything")
    cache.set_defaults(handler=cmd_cache)


def cmd_cache(args: argparse.Namespace) -> int:
    import shutil

    from tabulate import tabulate

    from dfbench.cache import FeatureCache, default_cache_root

    if args.action == "ls":
        root = Path(args.cache_dir) if args.cache_dir else default_cache_root()
        if not root.is_dir():        # a new machine: nothing extracted yet is not an error
            print(f"feature cache {root}: empty (the folder does not exist yet; `run --cache-dir` and "
                  "`extract --dataset` fill it)")
            return 0
    cache = FeatureCache(args.cache_dir, create=False)
    stores = cache.stores()
    if args.action == "ls":
        rows = []
        for store in stores:
            settings, summary = store.config["settings"], store.summary()
            rows.append([store.config["backbone"], store.folder.name, settings["resolution"], settings["timestep"],
                         "yes" if settings["add_noise"] else "no", settings["ensemble_size"], settings["seed"],
                         settings["prompt"] or "''", store.config["storage_dtype"], summary["images"],
                         summary["entries"], f"{summary['bytes'] / 2**20:.1f}"])
        print(f"feature cache {cache.root}")
        print(tabulate(rows, headers=["backbone", "config", "res", "t", "noise", "ens", "seed", "prompt", "stored",
                                      "images", "entries", "MiB"]))
        return 0
    if args.action == "verify":
        bad = removed = 0
        for store in stores:
            recorded = set(store.recorded_shards())
            on_disk = {path.name for path in (store.folder / "shards").glob("*.safetensors")}
            damaged = sorted(shard for shard in recorded if not store.verify_shard(shard))
            unrecorded = sorted(on_disk - recorded)
            for shard in damaged:
                print(f"damaged: {store.folder / 'shards' / shard} (sha256 differs from its journal)")
            for shard in unrecorded:
                print(f"unrecorded: {store.folder / 'shards' / shard} (no journal line; ignored)")
            if args.repair:
                for shard in [*damaged, *unrecorded]:
                    (store.folder / "shards" / shard).unlink(missing_ok=True)
                    print(f"removed: {store.folder / 'shards' / shard}")
                store.merge_manifest()
                removed += len(damaged) + len(unrecorded)
            bad += len(damaged)
            print(f"{store.config['backbone']}/{store.folder.name}: {len(recorded) - len(damaged)} shards ok, "
                  f"{len(damaged)} damaged, {len(unrecorded)} unrecorded")
        if bad and not args.repair:
            print(f"{bad} damaged shard(s): their features are recomputed on next use; `--repair` deletes them")
            return 1
        if args.repair:
            print(f"--repair removed {removed} shard(s)" + (": their features are recomputed on next use"
                                                              if removed else ""))
        return 0
    chosen = [store for store in stores if args.all or store.config["backbone"] == args.backbone
              or store.folder.name == args.config]
    if not (args.all or args.backbone or args.config):
        raise DfbenchInputError("cache prune: say what to delete: --backbone NAME, --config HASH or --all")
    for store in chosen:
        size = store.summary()["bytes"]
        shutil.rmtree(store.folder)
        print(f"deleted {store.folder} ({size / 2**20:.1f} MiB)")
    if not chosen:
        print("nothing matched; see `dfbench cache ls`")
    return 0
