"""Attention maps as activations (dfbench/attention_maps.py): ``attn2.map`` and ``attn1.map`` equal a hand computation
from the captured q and k (softmax over the keys, mean over heads), ``gdf.up_cross`` equals GDF's aggregation of its
component maps done by hand, and its sizes for SD1.5 at 512 px and SDXL at 1024 px."""

import pytest
import torch
import torch.nn.functional as F

from dfbench import ExtractSettings, create_backbone
from dfbench.activations import aliases_of, resolve_name

BLOCK = "up_blocks.1.attentions.1.transformer_blocks.0"
SETTINGS = ExtractSettings(resolution=64, timestep=261, seed=5, prompt="a photo of a cat")


@pytest.fixture(scope="module")
def tiny_sd15():
    return create_backbone("tiny-sd15")


def head_mean_softmax(query, key, heads):
    """N×Lq×C queries, N×Lk×C keys → mean over heads of softmax(q_h·k_hᵀ / √d) over the keys (the scaled dot-product
    attention of diffusers' Attention with its default scale d^-½)."""
    batch, queries, width = query.shape
    d = width // heads
    q = query.view(batch, queries, heads, d).transpose(1, 2)
    k = key.view(batch, key.shape[1], heads, d).transpose(1, 2)
    return ((q @ k.transpose(-1, -2)) / d**0.5).softmax(-1).mean(1)


def tokens(feature_map):
    return feature_map.flatten(2).transpose(1, 2)          # N×C×h×w → N×(h·w)×C, row-major


def test_cross_attention_map_equals_a_hand_computation(tiny_sd15, photos):
    names = [f"{BLOCK}.attn2.map", f"{BLOCK}.attn2.q"]
    features = tiny_sd15.extract(photos[:2], names, SETTINGS)
    text = tiny_sd15.prompt_embedding("a photo of a cat").hidden_states
    attention = tiny_sd15.denoiser.get_submodule(f"{BLOCK}.attn2")
    with torch.no_grad():
        key = attention.to_k(text).expand(2, -1, -1)
    expected = head_mean_softmax(tokens(features[f"{BLOCK}.attn2.q"]), key, attention.heads)
    side = features[f"{BLOCK}.attn2.q"].shape[-1]
    got = features[f"{BLOCK}.attn2.map"]
    assert got.shape == (2, 77, side, side)
    torch.testing.assert_close(tokens(got), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(2, side, side))        # a distribution over the 77 tokens


def test_self_attention_map_equals_a_hand_computation(tiny_sd15, photos):
    names = [f"{BLOCK}.attn1.map", f"{BLOCK}.attn1.q", f"{BLOCK}.attn1.k"]
    features = tiny_sd15.extract(photos[:1], names, SETTINGS)
    heads = tiny_sd15.denoiser.get_submodule(f"{BLOCK}.attn1").heads
    expected = head_mean_softmax(tokens(features[f"{BLOCK}.attn1.q"]), tokens(features[f"{BLOCK}.attn1.k"]), heads)
    got = features[f"{BLOCK}.attn1.map"]
    side = got.shape[-1]
    assert got.shape == (1, side * side, side, side)                       # one channel per key position
    torch.testing.assert_close(tokens(got), expected, rtol=1e-4, atol=1e-6)


def test_up_cross_equals_gdfs_aggregation_by_hand(tiny_sd15, photos):
    """tiny-sd15 at 64 px: sides 2 (up_blocks.1) and 4 (up_blocks.2) lie in [64/32, 64/16]; each side's three maps
    are averaged, resized nearest to 64/8 = 8 and concatenated (GDF attention.py 143-161, diffusion_feature.py
    492-500)."""
    components = [f"up_blocks.{level}.attentions.{index}.transformer_blocks.0.attn2.map"
                  for level in (1, 2) for index in range(3)]
    features = tiny_sd15.extract(photos[:2], ["up_cross", *components], SETTINGS)
    parts = []
    for level in (1, 2):
        mean = torch.stack([features[name] for name in components if name.startswith(f"up_blocks.{level}")]).mean(0)
        parts.append(F.interpolate(mean, size=(8, 8), mode="nearest"))
    torch.testing.assert_close(features["gdf.up_cross"], torch.cat(parts, dim=1))
    assert features["gdf.up_cross"].shape == (2, 154, 8, 8)


@pytest.mark.parametrize(("name", "resolution", "grid"), [("sd15", 512, 64), ("sdxl", 1024, 128)])
def test_up_cross_has_154_channels_at_the_papers_sizes(name, resolution, grid):
    """SD1.5 at 512: sides 16 and 32; SDXL at 1024: sides 32 and 64 (its up_blocks.0 and .1): 2 × 77 channels at
    img/8, without weights."""
    rows = {row.name: row for row in create_backbone(name, init="meta").catalog(resolution)}
    up_cross = rows["gdf.up_cross"]
    assert (up_cross.channels, up_cross.height, up_cross.width) == (154, grid, grid)
    sides = {row.height for row in rows.values() if row.name.startswith("up_blocks") and row.name.endswith("attn2.map")
             and resolution // 32 <= row.height <= resolution // 16}
    assert sides == {resolution // 32, resolution // 16}


def test_gdf_names_of_attention_maps():
    assert resolve_name("up-level1-repeat1-vit-block0-cross-map") == f"{BLOCK}.attn2.map"
    assert resolve_name("up-level1-repeat1-vit-block0-self-map") == f"{BLOCK}.attn1.map"
    assert resolve_name("up_cross") == "gdf.up_cross"
    assert aliases_of(f"{BLOCK}.attn2.map") == ["up-level1-repeat1-vit-block0-cross-map"]
    assert aliases_of("gdf.up_cross") == ["up_cross"]
