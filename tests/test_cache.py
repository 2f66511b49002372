"""The feature cache: keys, round trips, resume after kill -9, damage, bad input, ranks, CLI."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dfbench import ExtractSettings, create_backbone
from dfbench.cache import CacheItem, FeatureCache, cached_extract, image_key, load_features
from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.images import load_image
from dfbench.tasks.spair.dataset import spair_images
from dfbench.tasks.spair.mini import mini_spair_root

SETTINGS = ExtractSettings(resolution=64, timestep=261, batch_size=2)
NAMES = ["up_blocks.1", "up_blocks.2.attentions.0.transformer_blocks.0.attn1.q"]


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    return mini_spair_root(tmp_path_factory.mktemp("mini") / "mini-spair")


@pytest.fixture(scope="module")
def items(mini_root):
    return [CacheItem(image_key(path), path, category) for path, category in spair_images(mini_root, "test")]


def _all_tensors(cache_root: Path) -> dict[str, torch.Tensor]:
    values = {}
    for shard in cache_root.glob("*/*/shards/*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            for name in handle.keys():
                values[name] = handle.get_tensor(name)
    return values


def test_key_depends_on_weights_and_every_value_changing_setting(tmp_path, tiny_sd15):
    cache = FeatureCache(tmp_path)
    base = cache.open(tiny_sd15, SETTINGS).folder
    assert cache.open(tiny_sd15, SETTINGS.replace(batch_size=7)).folder == base  # batch size changes no value
    changed = [SETTINGS.replace(seed=1), SETTINGS.replace(timestep=50), SETTINGS.replace(prompt="a cat"),
               SETTINGS.replace(add_noise=False), SETTINGS.replace(ensemble_size=2), SETTINGS.replace(resolution=128)]
    folders = {cache.open(tiny_sd15, settings).folder for settings in changed}
    assert len(folders) == len(changed) and base not in folders
    other_weights = create_backbone("tiny-sd15", seed=1)
    assert cache.open(other_weights, SETTINGS).folder != base
    assert FeatureCache(tmp_path, "float32").open(tiny_sd15, SETTINGS).folder != base


def test_round_trip_float16_and_float32(tmp_path, tiny_sd15, items):
    direct = tiny_sd15.extract([load_image(item.path) for item in items[:4]], NAMES, SETTINGS)
    for dtype, expected in (("float16", {n: v.half().float() for n, v in direct.items()}), ("float32", direct)):
        store = FeatureCache(tmp_path / dtype, dtype).open(tiny_sd15, SETTINGS)
        loaded = load_features(tiny_sd15, items[:4], NAMES, SETTINGS, store)
        for index, item in enumerate(items[:4]):
            for name in NAMES:
                assert torch.equal(loaded[item.key][name], expected[name][index]), (dtype, name)


def test_tasks_read_from_cache_without_backbone_time(tmp_path, monkeypatch, tiny_sd15, items):
    store = FeatureCache(tmp_path).open(tiny_sd15, SETTINGS)
    first = load_features(tiny_sd15, items, NAMES, SETTINGS, store)

    def no_extraction(*args, **kwargs):
        raise AssertionError("the backbone ran although every feature was cached")

    monkeypatch.setattr(tiny_sd15, "extract", no_extraction)
    again = load_features(tiny_sd15, items, NAMES, SETTINGS, FeatureCache(tmp_path).open(tiny_sd15, SETTINGS))
    assert all(torch.equal(first[k][n], again[k][n]) for k in first for n in NAMES)


def test_damaged_shard_is_detected_and_recomputed(tmp_path, tiny_sd15, items, capsys):
    store = FeatureCache(tmp_path, "float32").open(tiny_sd15, SETTINGS)
    clean = load_features(tiny_sd15, items, NAMES, SETTINGS, store)
    shard = sorted((store.folder / "shards").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-16:] = bytes(16)  # corrupt tensor bytes; the header stays readable
    shard.write_bytes(bytes(data))
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 1
    assert f"damaged: {shard}" in capsys.readouterr().out
    fresh_store = FeatureCache(tmp_path, "float32").open(tiny_sd15, SETTINGS)
    recomputed = load_features(tiny_sd15, items, NAMES, SETTINGS, fresh_store)
    assert shard.name in fresh_store.damaged
    assert all(torch.equal(clean[k][n], recomputed[k][n]) for k in clean for n in NAMES)
    capsys.readouterr()
    assert main(["cache", "verify", "--cache-dir", str(tmp_path), "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"removed: {shard}" in out and "--repair removed 1 shard(s)" in out       # says what it deleted
    assert not shard.exists()
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 0


def test_truncated_journal_line_is_ignored(tmp_path, tiny_sd15, items):
    store = FeatureCache(tmp_path).open(tiny_sd15, SETTINGS)
    cached_extract(tiny_sd15, items[:2], NAMES, SETTINGS, store)
    (journal,) = store.folder.glob("journal-*.jsonl")
    with open(journal, "a") as stream:
        stream.write('{"shard": "r0-half-written')  # a kill in the middle of an append
    reopened = FeatureCache(tmp_path).open(tiny_sd15, SETTINGS)
    assert reopened.has(items[0].key, NAMES) and reopened.has(items[1].key, NAMES)
    assert not reopened.has(items[2].key, NAMES)


def test_full_disk_leaves_nothing_recorded(tmp_path, monkeypatch, tiny_sd15, items):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    store = FeatureCache(tmp_path).open(tiny_sd15, SETTINGS)
    message = "writing a shard failed .No space left on device.; nothing was recorded"
    with pytest.raises(DfbenchInputError, match=message):
        cached_extract(tiny_sd15, items[:2], NAMES, SETTINGS, store)
    assert list((store.folder / "shards").iterdir()) == []  # temp file removed
    assert list(store.folder.glob("journal-*")) == []


def test_bad_roots_and_incompatible_format(tmp_path, tiny_sd15, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DfbenchInputError, match="cannot create it"):
        FeatureCache(blocker / "cache")
    store = FeatureCache(tmp_path / "c").open(tiny_sd15, SETTINGS)
    config = json.loads((store.folder / "config.json").read_text())
    (store.folder / "config.json").write_text(json.dumps({**config, "cache_format": 99}))
    with pytest.raises(DfbenchInputError, match="written in cache format 99, this dfbench reads format 1"):
        FeatureCache(tmp_path / "c").open(tiny_sd15, SETTINGS)
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "cache format 99" in capsys.readouterr().err


def _extract_cmd(cache_dir, *extra):
    return [sys.executable, "-m", "dfbench", "extract", "tiny-sd15", "--dataset", "spair", "--data-root", "mini",
            "--select", *NAMES, "--resolution", "64", "--batch-size", "2", "--storage-dtype", "float32",
            "--cache-dir", str(cache_dir), "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference_cache(tmp_path_factory):
    """An uninterrupted single-process run over the mini test split."""
    root = tmp_path_factory.mktemp("reference")
    env = {**os.environ, "DFBENCH_HOME": str(tmp_path_factory.getbasetemp() / "home"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(_extract_cmd(root / "cache"), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return root / "cache", env


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(tmp_path, reference_cache):
    reference, env = reference_cache
    cache_dir = tmp_path / "cache"
    slow = _extract_cmd(cache_dir, "--resolution", "256")  # slower batches: room to kill in the middle
    process = subprocess.Popen(slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            path.stat().st_size for path in cache_dir.glob("*/*/journal-*.jsonl")):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    recorded = sum(1 for _ in cache_dir.glob("*/*/shards/*.safetensors"))
    assert 1 <= recorded < 7  # killed part-way: 7 batches of 2 images in all
    resumed = subprocess.run(slow, capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "already cached" in resumed.stdout and " 0 already cached" not in resumed.stdout
    uninterrupted = tmp_path / "uninterrupted"
    assert subprocess.run(_extract_cmd(uninterrupted, "--resolution", "256"), env=env).returncode == 0
    got, expected = _all_tensors(cache_dir), _all_tensors(uninterrupted)
    assert got.keys() == expected.keys() and len(got) == 14 * len(NAMES)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


@pytest.mark.slow
def test_two_ranks_with_gloo_equal_a_single_process(tmp_path, reference_cache):
    reference, env = reference_cache
    cache_dir = tmp_path / "cache"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *_extract_cmd(cache_dir)[1:]]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = [path.name for path in cache_dir.glob("*/*/shards/*.safetensors")]
    assert {name[:2] for name in shards} == {"r0", "r1"}  # both ranks wrote, each its own files
    (manifest,) = cache_dir.glob("*/*/manifest.json")
    assert list(manifest.parent.glob("journal-*")) == []  # rank 0 merged the journals
    assert len(json.loads(manifest.read_text())["shards"]) == len(shards)
    got, expected = _all_tensors(cache_dir), _all_tensors(reference)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[name], expected[name]) for name in expected)


@pytest.mark.slow
def test_two_processes_writing_the_same_keys(tmp_path, reference_cache):
    reference, env = reference_cache
    cache_dir = tmp_path / "cache"
    processes = [subprocess.Popen(_extract_cmd(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                 for _ in range(2)]
    assert [process.wait(timeout=300) for process in processes] == [0, 0]
    assert main(["cache", "verify", "--cache-dir", str(cache_dir)]) == 0
    expected = _all_tensors(reference)
    for name, value in _all_tensors(cache_dir).items():
        assert torch.equal(value, expected[name])


def test_cache_ls_on_a_new_machine_says_empty(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "new-home"))
    assert main(["cache", "ls"]) == 0
    assert capsys.readouterr().out.strip() == (f"feature cache {tmp_path / 'new-home' / 'features'}: empty (the folder "
                                               "does not exist yet; `run --cache-dir` and `extract --dataset` fill it)")
    assert not (tmp_path / "new-home").exists()                   # reading never creates the folder


def test_cache_ls_and_prune(tmp_path, tiny_sd15, items, capsys):
    store = FeatureCache(tmp_path).open(tiny_sd15, SETTINGS)
    cached_extract(tiny_sd15, items[:3], NAMES, SETTINGS, store)
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tiny-sd15" in out and store.folder.name in out and "float16" in out
    assert main(["cache", "prune", "--cache-dir", str(tmp_path)]) == 2
    assert main(["cache", "prune", "--cache-dir", str(tmp_path), "--backbone", "tiny-sd15"]) == 0
    assert not store.folder.exists()
