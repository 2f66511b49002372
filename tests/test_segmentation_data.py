"""ADE20K and Cityscapes loaders on fixtures written in mmseg's exact layouts; the mmcv-lite stand-in."""

import numpy as np
import pytest
import torch
from PIL import Image

from dfbench.errors import DfbenchInputError
from dfbench.tasks.segmentation.dataset import ADE20K, CITYSCAPES, class_names, load_label, load_samples


def _ade(root, labels=None):
    base = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
    for index, label in enumerate(labels or [np.array([[0, 1, 150], [2, 2, 0]], dtype=np.uint8)]):
        Image.new("RGB", (label.shape[1], label.shape[0])).save(base / "images" / "validation" /
                                                                f"ADE_val_{index:08d}.jpg")
        Image.fromarray(label).save(base / "annotations" / "validation" / f"ADE_val_{index:08d}.png")
    return base


def _cityscapes(root, label=None):
    base = root / "cityscapes"
    (base / "leftImg8bit" / "val" / "lindau").mkdir(parents=True)
    (base / "gtFine" / "val" / "lindau").mkdir(parents=True)
    Image.new("RGB", (4, 2)).save(base / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
    values = label if label is not None else np.array([[0, 18, 255, 7], [1, 1, 255, 0]], dtype=np.uint8)
    Image.fromarray(values).save(base / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png")
    return base


def test_ade20k_layout_and_reduce_zero_label(tmp_path):
    _ade(tmp_path)
    for data_root in (tmp_path, tmp_path / "ADEChallengeData2016"):     # the folder or its parent
        (sample,) = load_samples(ADE20K, data_root, "val")
        assert sample.stem == "ADE_val_00000000" and sample.label.name == "ADE_val_00000000.png"
    # mmseg's LoadAnnotations(reduce_zero_label=True): 0 → 255 (ignored), c → c − 1
    assert load_label(ADE20K, sample.label, (3, 2)).tolist() == [[255, 0, 149], [1, 1, 255]]


def test_cityscapes_layout_and_train_ids(tmp_path):
    _cityscapes(tmp_path)
    (sample,) = load_samples(CITYSCAPES, tmp_path, "val")
    assert sample.stem == "lindau_000000_000019"
    assert load_label(CITYSCAPES, sample.label, (4, 2)).tolist() == [[0, 18, 255, 7], [1, 1, 255, 0]]
    assert class_names(CITYSCAPES)[:3] == ["road", "sidewalk", "building"] and len(class_names(ADE20K)) == 150


@pytest.mark.parametrize("make,fragment", [
    (lambda root: None, "no images/ folder here or in ADEChallengeData2016/"),
    (lambda root: (_ade(root), (root / "ADEChallengeData2016/annotations/validation/ADE_val_00000000.png").unlink()),
     "has no label"),
    (lambda root: _ade(root, [np.array([[0, 151]], dtype=np.uint8)]), "class id 151 at 1 pixels"),
    (lambda root: (_ade(root), (root / "ADEChallengeData2016/annotations/validation/ADE_val_00000000.png")
                   .write_bytes(b"not a png")), "not a readable PNG"),
    (lambda root: (_ade(root), Image.new("RGB", (3, 2)).save(
        root / "ADEChallengeData2016/annotations/validation/ADE_val_00000000.png")), "mode RGB"),
    (lambda root: (_ade(root), Image.new("L", (5, 5)).save(
        root / "ADEChallengeData2016/annotations/validation/ADE_val_00000000.png")), "5×5, but its image is 3×2"),
])
def test_bad_ade20k_data_is_one_line(tmp_path, make, fragment):
    make(tmp_path)
    with pytest.raises(DfbenchInputError, match=fragment.replace("(", r"\(").replace("*", r"\*")) as raised:
        for sample in load_samples(ADE20K, tmp_path, "val"):
            load_label(ADE20K, sample.label, Image.open(sample.image).size)
    assert len(str(raised.value).splitlines()) == 1


def test_cityscapes_class_ids_beyond_18_are_refused(tmp_path):
    _cityscapes(tmp_path, np.array([[19, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint8))
    (sample,) = load_samples(CITYSCAPES, tmp_path, "val")
    with pytest.raises(DfbenchInputError, match="class id 19 at 1 pixels; cityscapes has 19 classes, 255 = ignore"):
        load_label(CITYSCAPES, sample.label)
    with pytest.raises(DfbenchInputError, match="split 'test': choose one of train, val"):
        load_samples(CITYSCAPES, tmp_path, "test")


def test_mmcv_lite_stand_in_point_sample_equals_bilinear_sampling():
    """The stand-in's point_sample: (x, y) in [0, 1] sampled bilinearly (align_corners=False), checked
    against interpolating a linear ramp by hand; mmseg's heads import with it."""
    from dfbench.tasks.segmentation.mmseg_compat import ensure_mmcv_ops, point_sample

    ensure_mmcv_ops()
    from mmseg.models.decode_heads import FCNHead, UPerHead  # noqa: F401  (import is the check)

    ramp = torch.arange(8, dtype=torch.float32).repeat(4, 1)[None, None]        # value = column index, 4×8
    points = torch.tensor([[[0.5, 0.5], [0.25, 0.3], [0.0625, 0.6]]])          # (x, y), inside the centres
    sampled = point_sample(ramp, points)
    # pixel centres: x = p·W − 0.5 → 3.5, 1.5, 0.0
    torch.testing.assert_close(sampled[0, 0], torch.tensor([3.5, 1.5, 0.0]))
    import mmcv.ops

    assert hasattr(mmcv.ops, "point_sample")  # the stand-in, or full mmcv's own
