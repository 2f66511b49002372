"""The overlapped extraction pipeline (dfbench/pipeline.py in dfbench/cache.py's cached_extract): the same cache as
one thread writes, a writer failure as one line with only whole shards left, and its stages on their own."""

import errno
import json
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from dfbench import ExtractSettings, create_backbone
from dfbench.cache import CacheItem, FeatureCache, cached_extract, image_key
from dfbench.errors import DfbenchInputError
from dfbench.images import load_image
from dfbench.pipeline import BackgroundWriter, Prefetcher
from dfbench.registry import TASKS


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def spair_items():
    task = TASKS.get("spair")()
    return [CacheItem(image_key(path), path, category) for path, category in task.split_images(task.mini_root(),
                                                                                                 "test")]


def shards_in_order(store):
    """(entries, tensors) of each shard, in the order the journal recorded them."""
    journal = sorted(store.folder.glob("journal-*.jsonl"))
    (lines,) = [path.read_text().splitlines() for path in journal]
    records = [json.loads(line) for line in lines]
    return [(record["entries"], load_file(str(store.folder / "shards" / record["shard"]))) for record in records]


def test_the_overlapped_pipeline_writes_what_one_thread_writes(tmp_path):
    """tiny-sd15 over the mini SPair test images, 2 per batch: the pipeline's shards, in journal order, hold the
    same entries and bit-identical tensors as a plain loop (decode, extract, write, batch after batch)."""
    backbone = create_backbone("tiny-sd15")
    settings = ExtractSettings(resolution=64, batch_size=2, timestep=100)
    items = spair_items()
    assert len(items) >= 6
    names = ["up_blocks.1", "up_blocks.2"]
    overlapped = FeatureCache(tmp_path / "overlapped").open(backbone, settings)
    counts = cached_extract(backbone, items, names, settings, overlapped)
    assert counts == {"hit": 0, "computed": len(items)}
    sequential = FeatureCache(tmp_path / "sequential").open(backbone, settings)
    for start in range(0, len(items), 2):
        batch = items[start : start + 2]
        features = backbone.extract([load_image(item.path) for item in batch], names, settings,
                                    categories=[item.category for item in batch])
        sequential.write({item.key: {name: features[name][index] for name in names}
                          for index, item in enumerate(batch)})
    ours, theirs = shards_in_order(overlapped), shards_in_order(sequential)
    assert [entries for entries, _ in ours] == [entries for entries, _ in theirs]
    for (_, first), (_, second) in zip(ours, theirs, strict=True):
        assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    assert cached_extract(backbone, items, names, settings, overlapped) == {"hit": len(items), "computed": 0}


def test_a_writer_failure_fails_the_run_with_one_line_and_leaves_only_whole_shards(tmp_path):
    """The third shard's write runs out of space (a file-size limit, RLIMIT_FSIZE, as a full disk does): `extract
    --dataset` exits 2 with one line, the shards written before it are whole and recorded, and no temp file is
    left."""
    TASKS.get("spair")().mini_root()                  # built here, not under the limit
    cache = tmp_path / "cache"
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "from dfbench.cli import main\n"
              "import dfbench.cache as cache\n"
              "original, count = cache.atomic_write, [0]\n"
              "def limited(path, write):\n"
              "    count[0] += 1\n"
              "    if count[0] == 3:\n"
              "        resource.setrlimit(resource.RLIMIT_FSIZE, (512, resource.RLIM_INFINITY))\n"
              "    return original(path, write)\n"
              "cache.atomic_write = limited\n"
              f"sys.exit(main(['extract', 'tiny-sd15', '--dataset', 'spair', '--data-root', 'mini', '--split', "
              f"'test', '--select', 'up_blocks.1', '--resolution', '64', '--batch-size', '1', '--cache-dir', "
              f"'{cache}', '--no-progress']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("dfbench:")]
    assert len(error) == 1 and "writing a shard failed" in error[0] and "File too large" in error[0]
    (folder,) = [path.parent for path in cache.glob("*/*/config.json")]
    shards = sorted((folder / "shards").iterdir())
    assert [path.suffix for path in shards] == [".safetensors", ".safetensors"]      # no temp file
    recorded = [json.loads(line)["shard"] for path in folder.glob("journal-*.jsonl")
                for line in path.read_text().splitlines()]
    assert sorted(recorded) == [path.name for path in shards]
    assert all(load_file(str(path)) for path in shards)


def test_the_prefetcher_keeps_order_and_decodes_ahead():
    started = []

    def decode(value):
        started.append(value)
        time.sleep(0.01)
        return value * 10

    batches = [[1, 2], [3], [4, 5, 6], [7]]
    iterator = iter(Prefetcher(batches, decode, ahead=2, workers=2))
    assert next(iterator) == [10, 20]
    time.sleep(0.1)
    assert {3, 4, 5, 6} <= set(started)          # the next two batches were decoded while the first was in use
    assert list(iterator) == [[30], [40, 50, 60], [70]]


def test_the_writer_keeps_order_and_raises_its_first_error_in_the_caller():
    written, gate = [], threading.Event()

    def write(item):
        gate.wait(timeout=10)
        if item == 3:
            raise DfbenchInputError("disk full")
        written.append(item)

    writer = BackgroundWriter(write, depth=1)
    writer.put(1)
    writer.put(2)                                   # queued behind 1: put returns once there is room
    gate.set()
    writer.put(3)
    with pytest.raises(DfbenchInputError, match="disk full"):
        for item in range(4, 100):
            writer.put(item)
    writer.abandon()
    assert written == [1, 2]
    failing = BackgroundWriter(lambda item: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    failing.put("a")
    with pytest.raises(OSError, match="No space left"):
        failing.close()
