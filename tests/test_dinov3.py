"""DINOv3 as a reference row beside DINOv2: the activations equal transformers' own outputs (``hidden_states``,
``last_hidden_state``, ``pooler_output``), the real models' sizes by closed form and against the published ones, the
16-pixel patch grid, and a save/load round trip."""

import sys

import pytest
import torch

from dfbench import ExtractSettings, create_backbone
from dfbench.backbones.dinov2 import IMAGENET_MEAN, IMAGENET_STD
from dfbench.errors import DfbenchInputError
from dfbench.images import to_model_input

SETTINGS = ExtractSettings(resolution=64)


@pytest.fixture(scope="module")
def tiny_dinov3():
    return create_backbone("tiny-dinov3")


def parameters_by_hand(width: int, depth: int) -> int:
    """A DINOv3 ViT/16's parameters from its numbers (facebookresearch/dinov3 dinov3/hub/backbones.py): per block two
    LayerNorms (2w each), q and v with bias, k without (mask_k_bias), the output projection with bias, two layer
    scales (w each), an MLP w → 4w → w with biases; the patch conv 3·16·16·w + w, CLS, mask and 4 register tokens;
    the final LayerNorm."""
    block = 2 * (2 * width) + 3 * (width * width + width) + width * width + 2 * width + 8 * width * width \
        + 4 * width + width
    return depth * block + 3 * 16 * 16 * width + width + 6 * width + 2 * width


@pytest.mark.parametrize(("name", "width", "depth", "published"),
                         [("dinov3-small", 384, 12, 21e6), ("dinov3-base", 768, 12, 86e6),
                          ("dinov3-large", 1024, 24, 300e6)])
def test_the_real_models_size_and_grid_without_weights(name, width, depth, published):
    """Exact counts by closed form; within 3 % of the README's rounded sizes (its ViT-S "21M" is 21.6 M, as DINOv2's
    table lists its 22.06 M ViT-S as "21M")."""
    backbone = create_backbone(name, init="meta")
    count = sum(parameter.numel() for parameter in backbone.model.parameters())
    assert count == parameters_by_hand(width, depth)
    assert abs(count - published) / published < 0.03
    rows = {row.name: row for row in backbone.catalog()}
    assert (rows["blocks.0"].channels, rows["blocks.0"].height) == (width, 60)      # 960 px / 16
    assert (rows["norm.registers"].height, rows["norm.registers"].width) == (4, 1)
    assert backbone.canonical_selection(["blocks.-1"]) == [f"blocks.{depth - 1}"]


def test_activations_equal_transformers_outputs(tiny_dinov3, photos):
    """blocks.i = hidden_states[i + 1] without CLS and the 4 registers (the patch tokens, row-major); norm =
    last_hidden_state's patch tokens; norm.cls = pooler_output; embeddings = hidden_states[0]."""
    pixels = to_model_input(photos[:2], 64, "squash")
    unit = (pixels + 1) / 2
    normalized = (unit - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        output = tiny_dinov3.model(pixel_values=normalized, output_hidden_states=True)

    def as_map(tokens):
        return tokens[:, 5:].transpose(1, 2).reshape(2, 32, 4, 4)

    names = ["embeddings", "blocks.3", "blocks.-1", "norm", "norm.cls", "blocks.2.registers"]
    features = tiny_dinov3.extract(photos[:2], names, SETTINGS)
    torch.testing.assert_close(features["embeddings"], as_map(output.hidden_states[0]))
    torch.testing.assert_close(features["blocks.3"], as_map(output.hidden_states[4]))
    torch.testing.assert_close(features["blocks.11"], as_map(output.hidden_states[12]))
    torch.testing.assert_close(features["norm"], as_map(output.last_hidden_state))
    torch.testing.assert_close(features["norm.cls"][..., 0, 0], output.pooler_output)
    torch.testing.assert_close(features["blocks.2.registers"][..., 0], output.hidden_states[3][:, 1:5].transpose(1, 2))


def test_resolution_is_a_multiple_of_the_16_pixel_patch(tiny_dinov3):
    with pytest.raises(DfbenchInputError, match="multiple of its 16-pixel patch"):
        tiny_dinov3.check_resolution(56)


def test_save_and_load_round_trip(tiny_dinov3, photos, tmp_path):
    tiny_dinov3.model.save_pretrained(tmp_path / "model")
    loaded = create_backbone("dinov3-base", weights=str(tmp_path / "model"), device="cpu")
    expected = tiny_dinov3.extract(photos[:1], ["blocks.5"], SETTINGS)["blocks.5"]
    torch.testing.assert_close(loaded.extract(photos[:1], ["blocks.5"], SETTINGS)["blocks.5"], expected)


def test_an_old_transformers_is_one_line(monkeypatch):
    # the module as imported now (building a model can replace transformers' lazy module in sys.modules)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.55.4")
    with pytest.raises(DfbenchInputError, match="transformers ≥ 4.56"):
        create_backbone("dinov3-base", init="meta")
