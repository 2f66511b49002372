"""The embedded mini segmentation sets: exact native layouts, meaningful and exact labels, deterministic."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from dfbench.tasks.segmentation.dataset import ADE20K, CITYSCAPES, IGNORE_INDEX, load_label, load_samples
from dfbench.tasks.segmentation.mini import build_mini_segmentation

# metric-side class ids (ADE20K after reduce_zero_label): sky, wall/building, grass/terrain, road
EXPECTED = {"ade20k": {"sky": 2, "brick": 0, "grass": 9, "gravel": 6},
            "cityscapes": {"sky": 10, "brick": 2, "grass": 9, "gravel": 0}}


@pytest.fixture(scope="module", params=[ADE20K, CITYSCAPES], ids=["ade20k", "cityscapes"])
def built(request, tmp_path_factory):
    layout = request.param
    return layout, build_mini_segmentation(layout, tmp_path_factory.mktemp(layout.name))


def test_native_layout_and_class_ids(built):
    layout, root = built
    train, val = load_samples(layout, root, "train"), load_samples(layout, root, "val")
    assert (len(train), len(val)) == (6, 3)
    classes = set()
    for sample in [*train, *val]:
        size = Image.open(sample.image).size
        classes |= set(np.unique(load_label(layout, sample.label, size)).tolist())
    assert classes == {*EXPECTED[layout.name].values(), IGNORE_INDEX}


def test_labels_mean_what_they_say(built):
    """Sky pixels are blue, grass pixels green, brick pixels red-brown, gravel grey: measured on the files."""
    layout, root = built
    ids = EXPECTED[layout.name]
    pixels = {name: [] for name in ids}
    for sample in load_samples(layout, root, "train"):
        image = np.asarray(Image.open(sample.image).convert("RGB"), dtype=np.float64)
        label = load_label(layout, sample.label, Image.open(sample.image).size)
        for name, class_id in ids.items():
            pixels[name].append(image[label == class_id])
    mean = {name: np.concatenate(values).mean(0) for name, values in pixels.items()}
    assert mean["sky"][2] > mean["sky"][0] + 20                       # blue over red
    assert mean["grass"][1] > max(mean["grass"][0], mean["grass"][2])  # green dominates
    assert mean["brick"][0] > mean["brick"][2] + 20                    # red over blue
    assert np.ptp(mean["gravel"]) < 20                                 # grey


def test_every_region_edge_is_ignored_and_nothing_else(built):
    """Independently of the builder: a labelled pixel has, within 2 pixels along rows and columns, only its
    own class or ignored pixels; and each class region meets the others only through ignored pixels."""
    layout, root = built
    for sample in load_samples(layout, root, "val"):
        label = load_label(layout, sample.label)
        for axis in (0, 1):
            for step in (1, 2):
                a = np.take(label, range(0, label.shape[axis] - step), axis=axis)
                b = np.take(label, range(step, label.shape[axis]), axis=axis)
                both = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
                assert np.all(a[both] == b[both])
        assert (label == IGNORE_INDEX).mean() < 0.2


def test_deterministic(built, tmp_path):
    layout, root = built
    again = build_mini_segmentation(layout, tmp_path)

    def digest(folder):
        return [hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.rglob("*.png"))]

    assert digest(again) == digest(root)
