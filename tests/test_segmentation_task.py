"""ade20k / cityscapes, protocol `linear`: the probe, the pixel sampling, mIoU from saved PNGs by hand."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from references import TextureBackbone, hand_miou

from dfbench.cli import main
from dfbench.runner import RunSpec, run_one
from dfbench.tasks.segmentation.dataset import ADE20K, CITYSCAPES, load_samples
from dfbench.tasks.segmentation.linear import sample_at_pixels


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def test_pixel_sampling_equals_full_bilinear_upsampling():
    maps = torch.randn(5, 6, 7, generator=torch.Generator().manual_seed(0))
    full = F.interpolate(maps[None], size=(30, 41), mode="bilinear", align_corners=False)[0]   # 5×30×41
    points = torch.tensor([[0, 0], [40, 29], [13, 7], [20, 15], [39, 1]])
    torch.testing.assert_close(sample_at_pixels(maps, points, (30, 41)), full[:, points[:, 1], points[:, 0]].T)
    # a linear probe commutes with bilinear upsampling (weights sum to 1): probe(sampled) = sampled(probe)
    probe = torch.nn.Conv2d(5, 3, 1)
    with torch.no_grad():
        logits = F.interpolate(probe(maps[None]), size=(30, 41), mode="bilinear", align_corners=False)[0]
        direct = F.linear(sample_at_pixels(maps, points, (30, 41)), probe.weight[:, :, 0, 0], probe.bias)
    torch.testing.assert_close(direct, logits[:, points[:, 1], points[:, 0]].T)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [ADE20K, CITYSCAPES], ids=["ade20k", "cityscapes"])
def test_linear_probe_learns_the_mini_set_and_miou_equals_a_hand_confusion_matrix(layout, tmp_path):
    spec = RunSpec(backbone="texture", task=layout.name, selection=["texture"], data_root="mini",
                   options={"steps": 300}, save_predictions=True, settings={"resolution": 64})
    result, record_path = run_one(spec, tmp_path, progress=False, figures=False, backbone=TextureBackbone())
    folder = record_path.parent / "predictions"
    from dfbench.registry import TASKS

    mini = TASKS.get(layout.name)().mini_root()
    assert result.metrics["mIoU"] == pytest.approx(hand_miou(layout, mini, folder), abs=1e-9)
    assert result.metrics["mIoU"] > 60 and result.metrics["images"] == 3   # meaningful labels, learnt
    values = np.unique(np.concatenate([np.unique(np.asarray(Image.open(p))) for p in folder.glob("*.png")]))
    if layout is ADE20K:
        assert values.min() >= 1 and values.max() <= 150                     # ADE annotation encoding
    else:
        assert values.max() <= 18                                            # Cityscapes trainIds
    assert set(result.per_category) <= {"sky", "wall", "grass", "road", "building", "terrain"}


def test_bad_segmentation_predictions_are_one_line(tmp_path, capsys):
    from dfbench.registry import TASKS

    root = TASKS.get("ade20k")().mini_root()
    samples = load_samples(ADE20K, root, "val")
    folder = tmp_path / "pred"
    folder.mkdir()
    for sample in samples[1:]:
        Image.fromarray(np.ones((96, 128), np.uint8)).save(folder / f"{sample.stem}.png")
    base = ["score", "--task", "ade20k", "--data-root", "mini", "--predictions", str(folder)]
    assert main(base) == 2
    assert f"no prediction for 1 of 3 ade20k val images (first: {samples[0].stem}.png)" in capsys.readouterr().err
    Image.fromarray(np.zeros((96, 128), np.uint8)).save(folder / f"{samples[0].stem}.png")
    assert main(base) == 2
    assert "value 0 is not a class; predictions are 1…150" in capsys.readouterr().err
    Image.fromarray(np.ones((10, 10), np.uint8)).save(folder / f"{samples[0].stem}.png")
    assert main(base) == 2
    assert "10×10, but its image is 128×96" in capsys.readouterr().err
    Image.fromarray(np.ones((96, 128), np.uint8)).save(folder / f"{samples[0].stem}.png")
    capsys.readouterr()
    assert main([*base, "--format", "json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 3 and 0 <= metrics["mIoU"] <= 100   # all "wall": IoU of wall only


def test_overlay_blends_the_palette_and_keeps_ignored_pixels():
    from dfbench.tasks.segmentation.plots import overlay

    image = np.array([[[100, 50, 0], [10, 20, 30]]], dtype=np.uint8)
    palette = np.array([[200, 0, 100], [0, 0, 0]], dtype=np.uint8)
    blended = overlay(image, np.array([[0, 255]]), palette)
    assert blended[0, 0].tolist() == [160, 20, 60]          # 0.4 · photo + 0.6 · colour
    assert blended[0, 1].tolist() == [10, 20, 30]           # ignored: the photo


def test_figures_are_the_per_class_chart_and_image_truth_prediction_overlays(tmp_path):
    from dfbench.registry import TASKS
    from dfbench.tasks.base import TaskOutput

    task = TASKS.get("cityscapes")()
    samples = load_samples(CITYSCAPES, task.mini_root(), "val")
    output = TaskOutput({"mIoU": 50.0}, {"road": {"IoU": 40.0}, "sky": {"IoU": 60.0}},
                        {s.stem: np.zeros((96, 192), np.int64) for s in samples})
    output.details["overlay_images"] = [[s.stem, str(s.image), str(s.label)] for s in samples[:2]]
    paths = task.figures(output, "title", tmp_path)
    assert [path.name for path in paths] == ["per-class-iou.png", "overlays.png"]
    with Image.open(paths[1]) as figure:
        assert figure.size[1] > figure.size[0] / 3 * 0.5 * 2 * 0.9   # two rows of three 2:1 panels


def test_cityscapes_predictions_named_as_dfbench_or_as_mmseg_writes_them(tmp_path, capsys):
    """mmseg's IoUMetric(output_dir=…) / format_only names a prediction after its image file,
    <city>_<seq>_<frame>_leftImg8bit.png (mmseg/evaluation/metrics/iou_metric.py:89-92); dfbench saves
    <city>_<seq>_<frame>.png. Both score alike: the ground truth itself (trainIds, ignore → 0) scores 100."""
    from dfbench.registry import TASKS
    from dfbench.tasks.segmentation.dataset import CITYSCAPES as LAYOUT

    root = TASKS.get("cityscapes")().mini_root()
    samples = load_samples(LAYOUT, root, "val")
    scored = {}
    for naming in ("dfbench", "mmseg"):
        folder = tmp_path / naming
        folder.mkdir()
        for sample in samples:
            label = np.asarray(Image.open(sample.label)).copy()
            label[label == 255] = 0                                  # ignored pixels: any class, not counted
            name = f"{sample.stem}.png" if naming == "dfbench" else sample.image.name
            assert naming == "dfbench" or name.endswith("_leftImg8bit.png")
            Image.fromarray(label).save(folder / name)
        capsys.readouterr()
        assert main(["score", "--task", "cityscapes", "--data-root", "mini", "--predictions", str(folder),
                     "--format", "json"]) == 0
        scored[naming] = json.loads(capsys.readouterr().out)
    assert scored["dfbench"] == scored["mmseg"]
    assert scored["mmseg"]["mIoU"] == pytest.approx(100.0) and scored["mmseg"]["images"] == len(samples)
    (tmp_path / "mmseg" / samples[0].image.name).unlink()
    assert main(["score", "--task", "cityscapes", "--data-root", "mini", "--predictions", str(tmp_path / "mmseg")]) == 2
    assert f"(first: {samples[0].stem}.png or {samples[0].image.name})" in capsys.readouterr().err
