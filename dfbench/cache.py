"""The on-disk feature store: extract once, evaluate many times (docs/cache.md).

Layout under the cache root (``--cache-dir``, ``$DFBENCH_CACHE``, default ``~/.cache/dfbench/features``)::

    <root>/<backbone>/<config>/config.json          # what the features depend on (+ format version)
    <root>/<backbone>/<config>/shards/*.safetensors # tensors "<image key>/<activation>"
    <root>/<backbone>/<config>/journal-<writer>.jsonl   # one line per shard: entries + sha256
    <root>/<backbone>/<config>/manifest.json        # journals merged (rank 0 / single process)

``config`` hashes the backbone name, a fingerprint of the weights actually loaded, the extraction
recipe's version, every :class:`ExtractSettings` field that changes a value (all but
``batch_size``) and the storage dtype, so a changed checkpoint, seed, timestep or prompt, or
features of an older recipe (e.g. one noise field shared by all images), are never reused. The image key hashes
the image's bytes. Each shard is written to a temp file and renamed, then recorded by one appended
journal line; a writer (process / rank) only ever writes its own shard names and its own journal,
so ranks never write the same file, and a line cut short by a kill is ignored. A shard whose
sha256 does not match its journal line is reported and its entries are recomputed, never used.

Images are processed in fixed batches of the full image list (batch i = images
[i·b, (i+1)·b)); a resumed or distributed run recomputes whole batches, so every image's features
come from the same batch as in an uninterrupted single-process run: bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfbench.atomic import atomic_write, atomic_write_text
from dfbench.backbones.protocol import Backbone
from dfbench.errors import DfbenchInputError
from dfbench.home import dfbench_home
from dfbench.images import load_image as default_loader
from dfbench.settings import SPEED_FIELDS, ExtractSettings

CACHE_FORMAT = 1
STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def default_cache_root() -> Path:
    """``$DFBENCH_CACHE``, else ``$DFBENCH_HOME/features`` (``~/.cache/dfbench/features``)."""
    if os.environ.get("DFBENCH_CACHE"):
        return Path(os.environ["DFBENCH_CACHE"])
    home = dfbench_home()
    return home / "features"


def weight_fingerprint(modules: Sequence[torch.nn.Module], options: dict[str, Any] | None = None) -> str:
    """A fingerprint of the weights actually loaded: every tensor's name, shape, dtype and 4,096
    evenly spaced values (a fine-tune or another seed changes them). Meta tensors give ``meta``. ``options``:
    backbone options that change the activations, hashed after a ``+`` when there are any."""
    fingerprint = _tensors_fingerprint(modules)
    if not options or fingerprint == "meta":
        return fingerprint
    return f"{fingerprint}+{hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]}"


def _tensors_fingerprint(modules: Sequence[torch.nn.Module]) -> str:
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        for name, tensor in module.state_dict().items():
            if tensor.device.type == "meta":
                return "meta"
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].to("cpu", torch.float32).contiguous()
            digest.update(f"{index}:{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def image_key(path: str | Path) -> str:
    """The cache key of an image file: a hash of its bytes (renaming keeps it, editing changes it)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:24]


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheItem:
    """One image to extract: its cache key, how to load it, and its category (for the prompt)."""

    key: str
    path: Path
    category: str = ""


class ConfigStore:
    """The features of one (backbone weights, settings, storage dtype) configuration."""

    def __init__(self, folder: Path, config: dict[str, Any], writer: str) -> None:
        self.folder = folder
        self.config = config
        self.writer = writer
        self.storage_dtype = STORAGE_DTYPES[config["storage_dtype"]]
        self._entries: dict[tuple[str, str], tuple[str, str]] = {}   # (image, activation) → (shard, tensor)
        self._shard_sums: dict[str, str] = {}
        self._verified: set[str] = set()
        self.damaged: set[str] = set()
        self._sequence = 0
        self.reload()

    # -------------------------------------------------------------- reading
    def reload(self) -> None:
        """Read manifest.json and every journal (lines cut short by a crash are skipped)."""
        self._entries.clear()
        self._shard_sums.clear()
        records, _ = self._records()
        for record in records:
            shard = record["shard"]
            if shard in self.damaged or not (self.folder / "shards" / shard).is_file():
                continue
            self._shard_sums[shard] = record["sha256"]
            for image, activations in record["entries"].items():
                for activation in activations:
                    self._entries.setdefault((image, activation), (shard, f"{image}/{activation}"))

    def _records(self) -> tuple[list[dict[str, Any]], dict[Path, int]]:
        """Shard records of manifest.json then of every journal, and the size of each journal read."""
        records: list[dict[str, Any]] = []
        manifest = self.folder / "manifest.json"
        if manifest.is_file():
            records += json.loads(manifest.read_text()).get("shards", [])
        sizes: dict[Path, int] = {}
        for journal in sorted(self.folder.glob("journal-*.jsonl")):
            text = journal.read_bytes()
            sizes[journal] = len(text)
            for line in text.decode().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: its shard is simply not recorded
        return records, sizes

    def recorded_shards(self) -> list[str]:
        """Shards named by the manifest or a journal (and present on disk)."""
        return sorted(self._shard_sums)

    def has(self, image: str, activations: Sequence[str]) -> bool:
        """Whether every activation of ``image`` is stored (in shards not known to be damaged)."""
        return all((image, name) in self._entries for name in activations)

    def verify_shard(self, shard: str) -> bool:
        """Check a shard's sha256 against its journal line (once per process)."""
        if shard in self._verified:
            return True
        path = self.folder / "shards" / shard
        ok = path.is_file() and file_sha256(path) == self._shard_sums.get(shard)
        if ok:
            self._verified.add(shard)
        else:
            self.damaged.add(shard)
        return ok

    def load(self, image: str, activations: Sequence[str]) -> dict[str, torch.Tensor] | None:
        """The stored activations (float32) of ``image``, or ``None`` if any is missing or damaged."""
        from safetensors import safe_open

        if not self.has(image, activations):
            return None
        values = {}
        for name in activations:
            shard, tensor = self._entries[(image, name)]
            if not self.verify_shard(shard):
                self._drop_shard(shard)
                return None
            with safe_open(str(self.folder / "shards" / shard), "pt") as handle:
                # a copy: get_tensor may return a view of the memory-mapped file
                values[name] = handle.get_tensor(tensor).to(torch.float32, copy=True)
        return values

    def _drop_shard(self, shard: str) -> None:
        self.damaged.add(shard)
        self._entries = {key: value for key, value in self._entries.items() if value[0] != shard}

    # -------------------------------------------------------------- writing
    def write(self, features: dict[str, dict[str, torch.Tensor]]) -> str:
        """Store {image: {activation: C×h×w}} as one shard + one journal line; returns the shard name."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        self._sequence += 1
        shard = f"{self.writer}-{self._sequence:06d}.safetensors"
        folder = self.folder / "shards"
        tensors = {f"{image}/{name}": value.detach().to("cpu", self.storage_dtype).contiguous()
                   for image, values in features.items() for name, value in values.items()}
        try:
            atomic_write(folder / shard, lambda temp: save_file(tensors, str(temp)))
        except (OSError, SafetensorError) as error:   # safetensors reports a full disk as its own error
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise DfbenchInputError(
                f"feature cache {self.folder}: writing a shard failed ({reason}); "
                "nothing was recorded — free some space or use another --cache-dir"
            ) from None
        checksum = file_sha256(folder / shard)
        record = {"shard": shard, "sha256": checksum,
                  "entries": {image: sorted(values) for image, values in features.items()}}
        line = json.dumps(record, sort_keys=True) + "\n"
        try:
            with open(self.folder / f"journal-{self.writer}.jsonl", "a") as journal:
                journal.write(line)
                journal.flush()
                os.fsync(journal.fileno())
        except OSError as error:      # the shard stays unrecorded: never read, removed by `cache verify --repair`
            raise DfbenchInputError(f"feature cache {self.folder}: recording shard {shard} failed "
                                    f"({error.strerror or error}); free some space or use another --cache-dir"
                                    ) from None
        self._shard_sums[shard] = checksum
        self._verified.add(shard)
        for image, values in features.items():
            for name in values:
                self._entries.setdefault((image, name), (shard, f"{image}/{name}"))
        return shard

    def merge_manifest(self) -> Path:
        """Fold every journal into manifest.json (atomically), then remove the merged journals.

        A journal that grew while it was being merged (another process still writing) is kept: its
        lines are read again next time, and a shard recorded twice is the same record."""
        read, sizes = self._records()
        records = {record["shard"]: record for record in read}
        kept = [records[name] for name in sorted(records) if (self.folder / "shards" / name).is_file()]
        manifest = self.folder / "manifest.json"
        _write_json_atomic(manifest, {"cache_format": CACHE_FORMAT, "shards": kept})
        for journal, size in sizes.items():
            if journal.is_file() and journal.stat().st_size == size:
                journal.unlink()
        return manifest

    def summary(self) -> dict[str, Any]:
        """Images, entries and bytes on disk of this configuration."""
        shards = list((self.folder / "shards").glob("*.safetensors"))
        return {"images": len({image for image, _ in self._entries}), "entries": len(self._entries),
                "shards": len(shards), "bytes": sum(path.stat().st_size for path in shards)}


def _write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


class FeatureCache:
    """The cache root: opens one :class:`ConfigStore` per configuration."""

    def __init__(self, root: str | Path | None = None, storage_dtype: str = "float16", create: bool = True) -> None:
        if storage_dtype not in STORAGE_DTYPES:
            raise DfbenchInputError(f"cache storage dtype {storage_dtype!r}: choose float16 or float32")
        self.root = Path(root) if root else default_cache_root()
        self.storage_dtype = storage_dtype
        if not create:  # reading commands (ls, verify, prune) never create folders
            if not self.root.is_dir():
                raise DfbenchInputError(f"feature cache {self.root}: no such folder (nothing cached there yet; "
                                        "--cache-dir names the cache root)")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DfbenchInputError(f"feature cache {self.root}: cannot create it ({error.strerror})") from None
        if not os.access(self.root, os.W_OK):
            raise DfbenchInputError(f"feature cache {self.root}: not writable; choose another --cache-dir")

    @staticmethod
    def config_for(backbone: Backbone, settings: ExtractSettings, storage_dtype: str) -> dict[str, Any]:
        """What the stored values depend on."""
        values = settings.value_dict()
        for key in SPEED_FIELDS:
            values.pop(key, None)
        values["resolution"] = settings.resolution or backbone.default_resolution
        return {"cache_format": CACHE_FORMAT, "backbone": backbone.name,
                "weights": backbone.weight_fingerprint(), "recipe": backbone.recipe_version,
                "settings": values, "storage_dtype": storage_dtype}

    def open(self, backbone: Backbone, settings: ExtractSettings, writer: str | None = None) -> ConfigStore:
        """The store of this backbone + settings, created on first use."""
        config = self.config_for(backbone, settings, self.storage_dtype)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        folder = self.root / backbone.name / digest
        (folder / "shards").mkdir(parents=True, exist_ok=True)
        config_path = folder / "config.json"
        if config_path.is_file():
            check_format(config_path)
        else:
            _write_json_atomic(config_path, config)
        return ConfigStore(folder, config, writer or default_writer())

    def stores(self) -> list[ConfigStore]:
        """Every configuration under the root (read-only use)."""
        found = []
        for config_path in sorted(self.root.glob("*/*/config.json")):
            config = check_format(config_path)
            found.append(ConfigStore(config_path.parent, config, "reader"))
        return found


def check_format(config_path: Path) -> dict[str, Any]:
    """Read a config.json, refusing other cache formats with a one-line error."""
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise DfbenchInputError(f"feature cache {config_path}: unreadable config.json; delete that folder") from None
    if config.get("cache_format") != CACHE_FORMAT:
        raise DfbenchInputError(
            f"feature cache {config_path.parent}: written in cache format {config.get('cache_format')}, this "
            f"dfbench reads format {CACHE_FORMAT}; use another --cache-dir or delete that folder"
        )
    return config


def default_writer() -> str:
    """A writer id unique to this process (and rank): shard and journal names never collide."""
    rank = os.environ.get("RANK", "0")
    return f"r{rank}-{socket.gethostname()[:16]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def cached_extract(backbone: Backbone, items: Sequence[CacheItem], selection: Sequence[str], settings: ExtractSettings,
                   store: ConfigStore, rank: int = 0, world_size: int = 1, progress: bool = False,
                   load_image: Callable[[Path], Any] | None = None,
                   on_batch: Callable[[int], None] | None = None) -> dict[str, int]:
    """Make sure every item's activations are in ``store``; returns counts of hits and computed images.

    Batches are fixed slices of ``items`` (``settings.batch_size // ensemble_size`` images);
    batch i is this rank's when ``i % world_size == rank``. A batch with every entry stored is
    skipped; otherwise it is extracted whole and its missing entries are written. The stages overlap
    (:mod:`dfbench.pipeline`): the next batches' images are decoded on worker threads while the model runs,
    and shards are written by a background writer — the same shards, in the same order, as one thread would.
    """
    from tqdm.auto import tqdm

    from dfbench.pipeline import BackgroundWriter, Prefetcher

    loader = load_image or default_loader
    names = backbone.canonical_selection(selection)
    per_batch = settings.images_per_batch
    batches = [list(items[start : start + per_batch]) for start in range(0, len(items), per_batch)]
    counts = {"hit": 0, "computed": 0}
    mine = [batch for index, batch in enumerate(batches) if index % world_size == rank]
    # the batches to compute (decided up front: the writer adds entries of earlier batches meanwhile)
    todo = []
    for batch in mine:
        missing = [item for item in batch if not store.has(item.key, names)]
        counts["hit"] += len(batch) - len(missing)
        if missing:
            todo.append((batch, missing))
    writer = BackgroundWriter(store.write)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"extract {backbone.name} (rank {rank})",
               unit="batch", disable=not progress)
    try:
        images = Prefetcher([[item.path for item in batch] for batch, _ in todo], loader)
        for (batch, missing), decoded in zip(todo, images, strict=True):
            features = backbone.extract(decoded, names, settings, categories=[item.category for item in batch])
            writer.put({item.key: {name: features[name][index] for name in names}
                        for index, item in enumerate(batch) if item in missing})
            counts["computed"] += len(missing)
            bar.update()
            if on_batch:
                on_batch(len(missing))
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    finally:
        bar.close()
    return counts


def load_features(backbone: Backbone, items: Sequence[CacheItem], selection: Sequence[str], settings: ExtractSettings,
                  store: ConfigStore, progress: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Every item's activations (float32), computing only what the store lacks. A shard found
    damaged while reading is dropped and its images are extracted again."""
    names = backbone.canonical_selection(selection)
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for _attempt in range(2):
        cached_extract(backbone, items, names, settings, store, progress=progress)
        for item in items:
            if item.key not in loaded:
                values = store.load(item.key, names)
                if values is not None:
                    loaded[item.key] = values
        if len(loaded) == len({item.key for item in items}):
            return loaded
    raise RuntimeError(f"feature cache {store.folder}: entries keep failing their checksum")
