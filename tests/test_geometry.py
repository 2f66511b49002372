"""Features carry their geometry: with resize_mode=pad, activations are cropped to the image's content,
so keypoints in original pixels stay aligned (before, matching upsampled the whole padded map)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dfbench import features as features_module
from dfbench.features import crop_to_content, image_features
from dfbench.images import to_model_input
from dfbench.runner import RunSpec, run_one
from dfbench.settings import ExtractSettings


def _coordinate_map(size=8):
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
    return torch.stack([rows, cols])  # channel 0: the row index, channel 1: the column index


def test_crop_on_cell_boundaries_takes_those_cells():
    # a 200×100 image padded into 64 px: content rows 16…47 → cells 2…5 of an 8×8 map (stride 8)
    cropped = crop_to_content(_coordinate_map(), (0, 16, 64, 32), 64)
    assert torch.equal(cropped, _coordinate_map()[:, 2:6, :])
    assert torch.equal(crop_to_content(_coordinate_map(), (0, 0, 64, 64), 64), _coordinate_map())


def test_crop_between_cells_interpolates_at_the_content_cell_centres():
    # content rows 12…51 (40 px) → round(40·8/64) = 5 rows, centres at 16, 24, …, 48 px = map rows 1.5 … 5.5
    cropped = crop_to_content(_coordinate_map(), (0, 12, 64, 40), 64)
    assert cropped.shape == (2, 5, 8)
    torch.testing.assert_close(cropped[0, :, 0], torch.tensor([1.5, 2.5, 3.5, 4.5, 5.5]))
    torch.testing.assert_close(cropped[1, 0], torch.arange(8, dtype=torch.float32))


class ColourBackbone:
    """A backbone whose feature at each 4×4 input cell encodes the cell's mean colour (r, g) with
    sines and cosines: unique per colour, so nearest neighbours match equal colours."""

    name, default_resolution, default_settings, source = "colour", 64, {}, "none"
    setting_names = ("resolution", "resize_mode", "dtype", "batch_size")
    device = torch.device("cpu")
    recipe_version = 1

    def check_resolution(self, resolution):
        pass

    def activation_names(self):
        return ["colour"]

    def catalog(self, resolution=None):
        from dfbench.activations import ActivationInfo

        side = (resolution or self.default_resolution) // 4
        return [ActivationInfo("colour", 12, side, side)]

    def weight_fingerprint(self):
        return "colour-v1"

    def to(self, device, torch_dtype=None):
        return self

    def canonical_selection(self, selection):
        return list(selection)

    def extract(self, images, selection, settings=None, categories=None, progress=False):
        pooled = F.avg_pool2d(to_model_input(images, settings.resolution, settings.resize_mode), 4)
        rg = (pooled[:, :2] + 1) / 2 * math.pi
        parts = [torch.sin(k * rg) for k in (1, 2, 3)] + [torch.cos(k * rg) for k in (1, 2, 3)]
        return {"colour": torch.cat(parts, dim=1)}


def test_features_are_cropped_to_the_content(tmp_path):
    path = tmp_path / "white.png"
    Image.new("RGB", (200, 100), (255, 255, 255)).save(path)
    backbone, settings = ColourBackbone(), ExtractSettings(resolution=64, resize_mode="pad")
    raw = backbone.extract([Image.open(path)], ["colour"], settings)["colour"][0]
    found = image_features(backbone, {"white": (path, "")}, ["colour"], settings)
    assert found.sizes["white"] == (100, 200) and found.boxes["white"] == (0, 16, 64, 32)
    cropped = found.features["white"]["colour"]
    assert raw.shape == (12, 16, 16) and cropped.shape == (12, 8, 16)
    white_feature = raw[:, 8, 8]
    assert torch.allclose(cropped, white_feature[:, None, None].expand_as(cropped), atol=1e-5)  # no padding left
    assert not torch.allclose(raw[:, 0, 0], white_feature, atol=1e-3)                           # the pad is grey
    squashed = image_features(backbone, {"white": (path, "")}, ["colour"], settings.replace(resize_mode="squash"))
    assert squashed.boxes["white"] == (0, 0, 64, 64) and squashed.features["white"]["colour"].shape == (12, 16, 16)


def _gradient(width, height):
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8))


@pytest.fixture
def aspect_pair(tmp_path):
    """SPair layout: a 200×100 gradient and the same gradient squashed to 100×100 (x' = x / 2)."""
    root = tmp_path / "spair"
    (root / "JPEGImages" / "cat").mkdir(parents=True)
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    _gradient(200, 100).save(root / "JPEGImages" / "cat" / "wide.png")
    _gradient(100, 100).save(root / "JPEGImages" / "cat" / "square.png")
    points = [(20, 10), (60, 30), (100, 50), (140, 70), (180, 90), (30, 80), (170, 20), (110, 15)]
    pair = {"src_imname": "wide.png", "trg_imname": "square.png", "src_imsize": [200, 100, 3],
            "trg_imsize": [100, 100, 3], "src_bndbox": [0, 0, 200, 100], "trg_bndbox": [0, 0, 100, 100],
            "category": "cat", "src_kps": [list(p) for p in points], "trg_kps": [[x / 2, y] for x, y in points]}
    (root / "PairAnnotation" / "test" / "000001-wide-square:cat.json").write_text(json.dumps(pair))
    return root


def _pck(root, tmp_path, resize_mode):
    spec = RunSpec(backbone="colour", task="spair", selection=["colour"], data_root=str(root),
                   settings={"resolution": 64, "resize_mode": resize_mode})
    result, _ = run_one(spec, tmp_path / resize_mode, progress=False, figures=False, backbone=ColourBackbone())
    return result.metrics["pck@0.1_bbox"]


def test_pad_keeps_spair_keypoints_aligned(aspect_pair, tmp_path, monkeypatch):
    assert _pck(aspect_pair, tmp_path, "squash") == 100.0
    assert _pck(aspect_pair, tmp_path, "pad") == 100.0
    # the old behaviour, matching the whole padded map: the wide image's keypoints land in the padding
    monkeypatch.setattr(features_module, "crop_to_content", lambda activation, box, size: activation)
    assert _pck(aspect_pair, tmp_path / "uncropped", "pad") < 50.0
