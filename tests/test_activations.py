"""Activation names: aliases, refusals, and the addressable set counted from the configs by hand."""

import json
from pathlib import Path

import pytest

from dfbench.activations import CLEANDIFT_ALIASES, addressable_names, resolve_name, validate_selection
from dfbench.errors import DfbenchInputError, UnknownNameError

CONFIGS = Path(__file__).resolve().parents[1] / "dfbench" / "backbones" / "configs"


@pytest.mark.parametrize("alias,canonical", [
    # GDF grammar (Meng et al.)
    ("up-level1-repeat1-vit-block0-cross-q", "up_blocks.1.attentions.1.transformer_blocks.0.attn2.q"),
    ("up-level1-repeat2-res-out", "up_blocks.1.resnets.2"),
    ("up-level1-repeat2-res-increment", "up_blocks.1.resnets.2.increment"),
    ("up-level3-repeat0-vit-block0-self-k", "up_blocks.3.attentions.0.transformer_blocks.0.attn1.k"),
    ("up-level3-repeat2-vit-block0-self-q", "up_blocks.3.attentions.2.transformer_blocks.0.attn1.q"),
    ("up-level3-repeat2-vit-block0-self-v", "up_blocks.3.attentions.2.transformer_blocks.0.attn1.v"),
    ("up-level3-repeat2-vit-out", "up_blocks.3.attentions.2"),
    ("up-level0-repeat0-vit-block7-out", "up_blocks.0.attentions.0.transformer_blocks.7"),
    ("down-level2-repeat1-vit-block0-ffn-inner", "down_blocks.2.attentions.1.transformer_blocks.0.ff.inner"),
    ("up-level0-upsampler-out", "up_blocks.0.upsamplers.0"),
    ("down-level1-downsampler-out", "down_blocks.1.downsamplers.0"),
    ("mid-repeat1-res-out", "mid_block.resnets.1"),
    ("mid-repeat0-res-increment", "mid_block.resnets.0.increment"),
    ("mid-vit-out", "mid_block.attentions.0"),
    ("mid-vit-block0-cross-q", "mid_block.attentions.0.transformer_blocks.0.attn2.q"),
    ("unet-after-conv-in", "conv_in"),
    ("unet-out", "conv_out"),
    # DIFT
    ("up_ft_index=1", "up_blocks.1"),
    ("up_ft_index=3", "up_blocks.3"),
    # CleanDIFT (min_sd15.py / min_sd21.py)
    ("mid", "mid_block"),
    ("us1", "up_blocks.0.resnets.0"),
    ("us2", "up_blocks.0.resnets.1"),
    ("us3", "up_blocks.0"),
    ("us4", "up_blocks.1.attentions.0"),
    ("us5", "up_blocks.1.attentions.1"),
    ("us6", "up_blocks.1"),
    ("us7", "up_blocks.2.attentions.0"),
    ("us8", "up_blocks.2.attentions.1"),
    ("us9", "up_blocks.2"),
    ("us10", "up_blocks.3.attentions.0"),
    # canonical names pass unchanged
    ("up_blocks.1.attentions.1.transformer_blocks.0.attn1.out",
     "up_blocks.1.attentions.1.transformer_blocks.0.attn1.out"),
])
def test_alias_resolves(alias, canonical):
    assert resolve_name(alias) == canonical


def test_every_cleandift_name_is_covered():
    assert sorted(CLEANDIFT_ALIASES) == sorted(["mid"] + [f"us{i}" for i in range(1, 11)])


@pytest.mark.parametrize("name,fragment", [
    ("up_blocks.1.attentions.1.transformer_blocks.0.attn2.k", "cross-attention keys/values"),
    ("up_blocks.1.attentions.1.transformer_blocks.0.attn2.v", "cross-attention keys/values"),
    ("up-level1-repeat1-vit-block0-cross-k", "cross-attention keys/values"),
    ("unet-in", "input latent"),
])
def test_refused_names_explain_why(name, fragment):
    with pytest.raises(DfbenchInputError, match=fragment):
        resolve_name(name)


def _meta_unet(family: str):
    import torch
    from diffusers import UNet2DConditionModel

    config = json.loads((CONFIGS / family / "unet" / "config.json").read_text())
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config), config


def _expected_count(config: dict) -> int:
    """Count addressable names from the config alone (docs/activations.md), independently of the walker."""
    per_transformer_block = 1 + 5 + 3 + 1  # block, attn1 q/k/v/out/map, attn2 q/out/map, ff.inner
    layers = config["layers_per_block"]
    n_levels = len(config["block_out_channels"])
    depth = config.get("transformer_layers_per_block") or 1
    depths = depth if isinstance(depth, list) else [depth] * n_levels
    total = 2  # conv_in, conv_out
    for level, kind in enumerate(config["down_block_types"]):
        total += 1 + 2 * layers  # block + resnets (+ .increment)
        if kind.startswith("CrossAttn"):
            total += layers * (1 + depths[level] * per_transformer_block)
        total += level < n_levels - 1  # downsampler on every level but the last
    for level, kind in enumerate(config["up_block_types"]):
        total += 1 + 2 * (layers + 1)
        if kind.startswith("CrossAttn"):
            total += (layers + 1) * (1 + depths[n_levels - 1 - level] * per_transformer_block)
        total += level < n_levels - 1
    total += 1 + 2 * 2 + 1 + depths[-1] * per_transformer_block  # mid block: 2 resnets, 1 transformer
    return total


@pytest.mark.parametrize("family,count", [("sd15", 237), ("sd21", 237), ("sdxl", 758)])
def test_addressable_names_match_hand_count(family, count):
    unet, config = _meta_unet(family)
    names = addressable_names(unet)
    assert len(names) == len(set(names)) == _expected_count(config) == count
    assert "up_blocks.1.attentions.1.transformer_blocks.0.attn2.q" in names
    assert not any(name.endswith((".attn2.k", ".attn2.v")) for name in names)


def test_validate_selection_suggests_close_names():
    unet, _ = _meta_unet("sd15")
    valid = addressable_names(unet)
    with pytest.raises(UnknownNameError) as info:
        validate_selection(["up_blocks.1.attentions.1.transformer_blocks.0.attn1.qq"], valid, "sd15")
    assert "did you mean: up_blocks.1.attentions.1.transformer_blocks.0.attn1.q" in str(info.value)
    # an alias that resolves to a name this model lacks names both spellings
    with pytest.raises(UnknownNameError, match=r"up-level5-repeat0-res-out .*up_blocks\.5\.resnets\.0"):
        validate_selection(["up-level5-repeat0-res-out"], valid, "sd15")
    # aliases and duplicates collapse to one canonical name each, in order
    assert validate_selection(["us6", "up_blocks.1", "mid"], valid, "sd15") == ["up_blocks.1", "mid_block"]


@pytest.mark.parametrize("backbone", ["tiny-sd15", "tiny-sdxl"])
def test_every_alias_shown_resolves_back_to_its_name(backbone):
    from dfbench import create_backbone
    from dfbench.activations import aliases_of, resolve_name

    names = create_backbone(backbone, init="meta").activation_names()
    for name in names:
        for alias in aliases_of(name):
            assert resolve_name(alias) == name, (name, alias)
    # the names docs/activations.md spells out, by hand
    assert aliases_of("up_blocks.1") == ["us6", "up_ft_index=1"]
    assert aliases_of("up_blocks.1.attentions.1.transformer_blocks.0.attn2.q") == [
        "up-level1-repeat1-vit-block0-cross-q"]
    assert aliases_of("up_blocks.1.resnets.2.increment") == ["up-level1-repeat2-res-increment"]
    assert aliases_of("up_blocks.0.upsamplers.0") == ["up-level0-upsampler-out"]
    assert aliases_of("mid_block") == ["mid"]
    assert aliases_of("up_blocks.1.attentions.1.transformer_blocks.0.attn1.out") == []  # GDF has no name


def test_activations_table_shows_aliases(capsys):
    from dfbench.cli import main

    assert main(["activations", "tiny-sd15", "--grep", r"^up_blocks\.1$"]) == 0
    out = capsys.readouterr().out
    assert "aliases (CleanDIFT, DIFT, GDF)" in out and "us6, up_ft_index=1" in out


def test_massive_channels_on_a_hand_made_map():
    """Channel peaks (max |x| over images and positions) 1, 2, 3, 400 and -90: median 3, so at threshold 10 the
    outliers are channel 3 (×133.3) then channel 4 (×30)."""
    import torch

    from dfbench.activation_stats import massive_channels

    features = torch.zeros(2, 5, 2, 2)
    features[0, :, 0, 0] = torch.tensor([1.0, -2.0, 3.0, 1.0, 5.0])
    features[1, :, 1, 1] = torch.tensor([0.5, 1.0, -1.0, 400.0, -90.0])
    median, outliers = massive_channels(features, threshold=10)
    assert median == 3.0
    assert [(o.channel, o.peak) for o in outliers] == [(3, 400.0), (4, 90.0)]
    assert [o.ratio for o in outliers] == pytest.approx([400 / 3, 30.0])


def test_activations_stats_reads_the_models_own_activations(tmp_path, capsys, photos):
    """The CLI's outliers are those of the activations `extract` returns for the same images and settings."""
    import json

    import torch

    from dfbench import ExtractSettings, create_backbone
    from dfbench.activation_stats import massive_channels
    from dfbench.cli import main

    for index, photo in enumerate(photos[:2]):
        photo.save(tmp_path / f"{index}.png")
    assert main(["activations", "tiny-sd15", "--stats", "--images", str(tmp_path), "--grep", r"^up_blocks\.[12]$",
                 "--resolution", "64", "--threshold", "2", "--format", "json"]) == 0
    report = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(report) == {"up_blocks.1", "up_blocks.2"}
    features = create_backbone("tiny-sd15").extract(photos[:2], ["up_blocks.1"], ExtractSettings(resolution=64))
    median, outliers = massive_channels(features["up_blocks.1"], threshold=2)
    assert report["up_blocks.1"]["median_peak"] == pytest.approx(median)
    assert [o["channel"] for o in report["up_blocks.1"]["outliers"]] == [o.channel for o in outliers]
    assert torch.is_tensor(features["up_blocks.1"])
    assert main(["activations", "tiny-sd15", "--stats", "--grep", "x"]) == 2          # no --images: one line
