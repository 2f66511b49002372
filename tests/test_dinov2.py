"""DINOv2 backbones: real configs' sizes, activation names against transformers'
own outputs, token handling, preprocessing, resolution rule, weights round trip, a leaderboard with
DINOv2 and SD rows."""

import numpy as np
import pytest
import torch
from PIL import Image

from dfbench.backbones.dinov2 import IMAGENET_MEAN, IMAGENET_STD, TINY_CONFIG, create_dinov2, qkv_linear
from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.registry import create_backbone
from dfbench.settings import ExtractSettings


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def photo(seed=0, size=(80, 60)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("name, millions", [("dinov2-small", 22.06), ("dinov2-base", 86.58),
                                            ("dinov2-large", 304.37), ("dinov2-giant", 1136.48),
                                            ("dinov2-reg-small", 22.06), ("dinov2-reg-base", 86.58)])
def test_real_configs_parameter_counts_on_the_meta_device(name, millions):
    backbone = create_backbone(name, init="meta")
    assert round(sum(p.numel() for p in backbone.model.parameters()) / 1e6, 2) == millions
    rows = {row.name: row for row in backbone.catalog()}                     # default 840 px: a 60×60 grid
    assert (rows["blocks.11"].height, rows["blocks.11"].width) == (60, 60)
    assert rows["blocks.-1".replace("-1", str(backbone.layers - 1))].channels == backbone.model.config.hidden_size


def test_maps_equal_transformers_hidden_states_with_cls_dropped():
    backbone = create_backbone("tiny-dinov2")                                # 12 blocks, 56 px → 4×4
    images = [photo(0), photo(1)]
    features = backbone.extract(images, ["blocks.11", "blocks.-1", "norm", "norm.cls", "embeddings",
                                         "blocks.3.attn.k"])
    pixels = backbone.pixel_values(images, ExtractSettings(resolution=56))
    with torch.no_grad():
        output = backbone.model(pixel_values=pixels, output_hidden_states=True)
        hidden = output.hidden_states

        def as_map(tokens):
            return tokens[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)

        torch.testing.assert_close(features["blocks.11"], as_map(hidden[12]))   # blocks.i = hidden_states[i + 1]
        torch.testing.assert_close(features["embeddings"], as_map(hidden[0]))
        torch.testing.assert_close(features["norm"], as_map(output.last_hidden_state))
        torch.testing.assert_close(features["norm.cls"], output.last_hidden_state[:, :1].transpose(1, 2)[..., None])
        layer = backbone.model.encoder.layer[3]                            # the key Linear of block 3, by hand
        keys = qkv_linear(layer.attention, "k")(layer.norm1(hidden[3]))
        torch.testing.assert_close(features["blocks.3.attn.k"], as_map(keys))
    assert backbone.canonical_selection(["blocks.-1"]) == ["blocks.11"]
    assert not torch.equal(features["blocks.11"], features["norm"])        # before the final norm


def test_registers_are_dropped_from_maps_and_kept_by_name():
    backbone = create_dinov2("tiny-dinov2-reg", {**TINY_CONFIG, "num_register_tokens": 4}, "facebook/x", init="random",
                             default_resolution=56, device="cpu")
    features = backbone.extract([photo()], ["blocks.2", "blocks.2.registers", "blocks.2.cls"])
    pixels = backbone.pixel_values([photo()], ExtractSettings(resolution=56))
    with torch.no_grad():
        tokens = backbone.model(pixel_values=pixels, output_hidden_states=True).hidden_states[3]
    assert tokens.shape[1] == 1 + 4 + 16
    torch.testing.assert_close(features["blocks.2"], tokens[:, 5:].transpose(1, 2).reshape(1, 32, 4, 4))
    torch.testing.assert_close(features["blocks.2.registers"], tokens[:, 1:5].transpose(1, 2)[..., None])
    torch.testing.assert_close(features["blocks.2.cls"], tokens[:, :1].transpose(1, 2)[..., None])


def test_imagenet_normalisation_and_the_patch_rule():
    backbone = create_backbone("tiny-dinov2")
    solid = Image.new("RGB", (28, 28), (255, 128, 0))
    pixels = backbone.pixel_values([solid], ExtractSettings(resolution=28))
    expected = [(value / 255 - mean) / std for value, mean, std in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD,
                                                                      strict=True)]
    torch.testing.assert_close(pixels[0, :, 5, 5], torch.tensor(expected), atol=1e-5, rtol=0)
    with pytest.raises(DfbenchInputError, match="multiple of its 14-pixel patch"):
        backbone.check_resolution(845)
    with pytest.raises(DfbenchInputError, match="not an activation of tiny-dinov2"):
        backbone.canonical_selection(["blocks.12"])


def test_weights_round_trip_through_save_pretrained(tmp_path):
    backbone = create_backbone("tiny-dinov2", seed=3)
    backbone.model.save_pretrained(tmp_path / "tiny")
    loaded = create_backbone("tiny-dinov2", weights=str(tmp_path / "tiny"))
    torch.testing.assert_close(loaded.extract([photo()], ["blocks.5"])["blocks.5"],
                               backbone.extract([photo()], ["blocks.5"])["blocks.5"])
    assert loaded.weight_fingerprint() == backbone.weight_fingerprint()


@pytest.mark.slow
def test_spair_mini_with_dinov2_and_sd_rows_in_one_leaderboard(tmp_path, capsys):
    results = tmp_path / "results"
    for backbone, selection in (("tiny-dinov2", "blocks.11"), ("tiny-sd15", "up_blocks.1")):
        assert main(["run", "--backbone", backbone, "--task", "spair", "--select", selection, "--data-root", "mini",
                     "--results", str(results), "--no-progress", "--limit", "3"]) == 0
    board = (results / "leaderboard.md").read_text()
    assert "tiny-dinov2 / blocks.11" in board and "tiny-sd15 / up_blocks.1" in board
    capsys.readouterr()
    assert main(["run", "--backbone", "tiny-dinov2", "--task", "spair", "--select", "blocks.1", "--data-root", "mini",
                 "--results", str(results), "--timestep", "50"]) == 2
    assert "does not use the setting(s) timestep" in capsys.readouterr().err


def test_the_forward_stops_after_the_deepest_selected_block():
    backbone = create_backbone("tiny-dinov2")
    ran = []
    handle = backbone.model.encoder.layer[5].register_forward_hook(lambda *args: ran.append(5))
    backbone.extract([photo()], ["blocks.2", "blocks.4.attn.v"])
    assert ran == []                                                         # blocks 5… never ran
    backbone.extract([photo()], ["blocks.2", "norm"])                        # the final norm needs them all
    assert ran == [5]
    handle.remove()
