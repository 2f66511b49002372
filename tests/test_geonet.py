"""probe3d's training set: the GeoNet NYU release read as probe3d reads it, and probe3d-dpt trained on it.

References (mbanani/probe3d @a1f1464): evals/datasets/nyu.py 153-170 (the sorted listing, ``del insts[21181]`` then
``del insts[6919]``, split ``trainval`` = every remaining frame), 181-195 (``img`` and ``depth`` cut to 480×640,
``img + 2·mean`` per channel cast to uint8, depths above 10 m set to 0), train_depth.py 175 (training on
``trainval``), configs/dataset/nyu.yaml (``train_path: data/nyuv2_geonet``), data_processing/README.md 53-64.
"""

import json
import math

import numpy as np
import pytest
import scipy.io

from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.tasks.nyuv2.dataset import GEONET_MEANS, geonet_samples

MEANS = np.asarray(GEONET_MEANS)


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def write_frame(path, pixels, depth):
    """A GeoNet frame: ``img`` stored as the pixels less twice the channel means, ``depth`` in metres, ``norm``."""
    scipy.io.savemat(str(path), {"img": pixels - 2 * MEANS, "depth": depth,
                                 "norm": np.zeros((*depth.shape, 3))})


def test_a_frame_reads_as_probe3d_reads_it(tmp_path):
    """Stored pixel values x.5 − 2·mean come back as x.5 and are truncated to x by the uint8 cast; a 482×642
    frame is cut to its top-left 480×640; a depth of 12 m and a NaN are no measurement."""
    pixels = np.full((482, 642, 3), 10.5)
    pixels[0, 0] = (200.5, 0.5, 99.5)
    depth = np.full((482, 642), 2.25)
    depth[0, 1], depth[1, 0] = 12.0, np.nan
    write_frame(tmp_path / "room_0001_a-0001.mat", pixels, depth)
    (sample,) = geonet_samples(tmp_path)
    image, loaded = sample.load()
    array = np.asarray(image)
    assert array.shape == (480, 640, 3) and loaded.shape == (480, 640)
    assert array[0, 0].tolist() == [200, 0, 99] and (array[1:, 1:] == 10).all()
    assert loaded[0, 1] == 0 and loaded[1, 0] == 0 and loaded[2, 2] == 2.25


def test_the_listing_drops_probe3ds_two_bad_frames_only_from_the_full_release(tmp_path):
    """21,183 files sorted by name: positions 21181 and then 6919 go (so the original 6919th and 21181st names),
    21,181 remain; a folder of three keeps all three."""
    full = tmp_path / "full"
    full.mkdir()
    for index in range(21183):
        (full / f"f{index:05d}.mat").touch()
    names = [sample.stem for sample in geonet_samples(full)]
    assert len(names) == 21181 and "f06919" not in names and "f21181" not in names
    assert names[6918:6920] == ["f06918", "f06920"] and names[-1] == "f21182"
    small = tmp_path / "small"
    small.mkdir()
    for name in ("b.mat", "a.mat", "c.mat", "notes.txt"):
        (small / name).touch()
    assert [sample.stem for sample in geonet_samples(small)] == ["a", "b", "c"]
    with pytest.raises(DfbenchInputError, match="no .mat files"):
        geonet_samples(tmp_path)                      # folders only, no frames


def test_probe3d_dpt_trains_on_the_geonet_frames(tmp_path, capsys):
    """Five GeoNet frames, batch 2, 2 epochs: 2 · ⌈5 / 2⌉ = 6 steps; the record names the training set and the
    probe3d commit the protocol follows; a missing folder is one line."""
    frames = tmp_path / "geonet"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for index in range(5):
        pixels = np.floor(rng.uniform(0, 255, (60, 80, 3))) + 0.5
        write_frame(frames / f"kitchen_000{index}-{index:04d}.mat", pixels, rng.uniform(1.0, 5.0, (60, 80)))
    results = tmp_path / "results"
    assert main(["run", "--backbone", "tiny-sd21", "--task", "nyuv2/probe3d-dpt", "--preset", "probe3d-dift",
                 "--resolution", "64", "--data-root", "mini", "--results", str(results), "--no-progress",
                 "--no-figures", "--option", f"train_data={frames}", "--option", "epochs=2", "--option",
                 "batch_size=2", "--option", "hidden=8", "--option", "warmup_epochs=0.5"]) == 0
    record = json.loads(next(results.glob("runs/*/record.json")).read_text())
    details = record["details"]
    assert details["train_images"] == 5 and details["steps"] == 2 * math.ceil(5 / 2)
    assert details["train_set"] == "GeoNet NYU release" and details["reference"] == "mbanani/probe3d@a1f1464"
    assert details["options_changed"]["train_data"] == str(frames)
    capsys.readouterr()
    assert main(["run", "--backbone", "tiny-sd21", "--task", "nyuv2/probe3d-dpt", "--preset", "probe3d-dift",
                 "--resolution", "64", "--data-root", "mini", "--results", str(results), "--no-progress",
                 "--option", f"train_data={tmp_path / 'missing'}"]) == 2
    assert "option train_data=" in capsys.readouterr().err
