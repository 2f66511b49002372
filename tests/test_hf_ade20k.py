"""ADE20K from Hugging Face `datasets`: the same samples as the folder layout, byte for byte."""

import datasets
import numpy as np
import pytest

from dfbench.cli import main
from dfbench.registry import TASKS
from dfbench.resolve import resolve_data_root
from dfbench.tasks.segmentation.dataset import ADE20K, load_label, load_samples
from dfbench.tasks.segmentation.hf_ade20k import hf_ade20k_root


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def _as_hf(root, keep_paths=True) -> datasets.DatasetDict:
    """The mini set's files as scene_parse_150 holds them: image + annotation Image columns, original bytes."""
    splits = {}
    for split, name in (("train", "train"), ("val", "validation")):
        samples = load_samples(ADE20K, root, split)
        rows = {"image": [{"bytes": s.image.read_bytes(), "path": s.image.name if keep_paths else None}
                          for s in samples],
                "annotation": [{"bytes": s.label.read_bytes(), "path": s.label.name if keep_paths else None}
                               for s in samples],
                "scene_category": [0] * len(samples)}
        splits[name] = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).cast_column(
            "annotation", datasets.Image())
    return datasets.DatasetDict(splits)


def _same_samples(folder_root, hf_root, same_stems=True):
    for split in ("train", "val"):
        folder, converted = load_samples(ADE20K, folder_root, split), load_samples(ADE20K, hf_root, split)
        assert len(folder) == len(converted)
        if same_stems:
            assert [s.stem for s in folder] == [s.stem for s in converted]
        for a, b in zip(folder, converted, strict=True):
            assert a.image.read_bytes() == b.image.read_bytes()          # not re-encoded
            np.testing.assert_array_equal(load_label(ADE20K, a.label), load_label(ADE20K, b.label))


def test_save_to_disk_folder_gives_the_folder_layouts_samples(tmp_path):
    task = TASKS.get("ade20k")()
    mini = task.mini_root()
    _as_hf(mini).save_to_disk(tmp_path / "saved")
    root = resolve_data_root(task, str(tmp_path / "saved"))
    _same_samples(mini, root)
    assert resolve_data_root(task, str(tmp_path / "saved")) == root       # written once, then reused


def test_hub_style_source_through_load_dataset(tmp_path):
    """`hf:<id>` goes through datasets.load_dataset; a local folder of parquet shards takes the same path."""
    mini = TASKS.get("ade20k")().mini_root()
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    for name, split in _as_hf(mini, keep_paths=False).items():
        split.to_parquet(str(hub / f"{name}-00000-of-00001.parquet"))
    root = hf_ade20k_root(f"hf:{tmp_path / 'hub'}")
    _same_samples(mini, root, same_stems=False)                            # no paths kept: <split>_<index>
    assert load_samples(ADE20K, root, "val")[0].stem == "val_000000"


def test_bad_hf_sources_are_one_line(tmp_path, capsys):
    mini = TASKS.get("ade20k")().mini_root()
    broken = _as_hf(mini).rename_column("annotation", "mask")
    broken.save_to_disk(tmp_path / "broken")
    base = ["run", "--backbone", "tiny-sd15", "--task", "ade20k", "--select", "up_blocks.1", "--no-progress"]
    assert main([*base, "--data-root", str(tmp_path / "broken")]) == 2
    assert "columns image, mask, scene_category; need 'image' and 'annotation'" in capsys.readouterr().err
    assert main([*base, "--data-root", f"hf:{tmp_path / 'nothing-here'}"]) == 2
    assert f"ade20k --data-root hf:{tmp_path / 'nothing-here'}: cannot load it with datasets" in (
        capsys.readouterr().err)
