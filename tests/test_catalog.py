"""The weight-free shape catalog: real tiny forwards agree, real configs give the published shapes."""

import pytest
import torch

from dfbench import create_backbone


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sd21", "tiny-sdxl"])
def test_catalog_agrees_with_a_real_forward(name):
    backbone = create_backbone(name)
    catalog = backbone.catalog(64)
    names = [row.name for row in catalog]
    assert sorted(names) == sorted(backbone.activation_names())
    latents = torch.randn(1, 4, 8, 8)
    embedding = backbone.prompt_embedding("")
    added = backbone.added_cond_kwargs(embedding, 1, 64)
    with torch.no_grad():
        features = backbone.capture(backbone.unet, names, 64, stop_early=False).run(
            lambda: backbone.unet(latents, 10, embedding.hidden_states, added_cond_kwargs=added)
        )
    for row in catalog:
        assert tuple(features[row.name].shape) == (1, row.channels, row.height, row.width), row.name


def _shapes(name, resolution):
    return {row.name: (row.channels, row.height, row.width)
            for row in create_backbone(name, init="meta").catalog(resolution)}


def test_sd15_512_real_shapes():
    shapes = _shapes("sd15", 512)
    assert len(shapes) == 205 + 16 * 2 + 1          # + attn1.map, attn2.map per transformer block, gdf.up_cross
    # latent 64×64; levels 320/640/1280/1280 at 64, 32, 16, 8
    assert shapes["conv_in"] == (320, 64, 64)
    assert shapes["down_blocks.0.downsamplers.0"] == (320, 32, 32)
    assert shapes["mid_block"] == (1280, 8, 8)
    assert shapes["up_blocks.0"] == (1280, 16, 16)  # after its upsampler
    assert shapes["up_blocks.1.attentions.1.transformer_blocks.0.attn2.q"] == (1280, 16, 16)
    assert shapes["up_blocks.1"] == (1280, 32, 32)
    assert shapes["up_blocks.1.resnets.2.increment"] == (1280, 16, 16)
    assert shapes["up_blocks.3.attentions.0.transformer_blocks.0.ff.inner"] == (4 * 320, 64, 64)
    assert shapes["up_blocks.3.attentions.0.transformer_blocks.0.attn1.k"] == (320, 64, 64)
    assert shapes["conv_out"] == (4, 64, 64)


def test_sd21_768_real_shapes():
    shapes = _shapes("sd21", 768)
    assert shapes["up_blocks.1"] == (1280, 48, 48)  # DIFT's SPair feature map: 1280 × 48 × 48
    assert shapes["up_blocks.2.attentions.0.transformer_blocks.0.attn1.q"] == (640, 48, 48)


def test_sdxl_1024_real_shapes():
    shapes = _shapes("sdxl", 1024)
    assert len(shapes) == 618 + 70 * 2 + 1
    # latent 128; levels 320/640/1280 at 128, 64, 32; up_blocks.0 holds 10-deep transformers
    assert shapes["up_blocks.0.attentions.0.transformer_blocks.9"] == (1280, 32, 32)
    assert shapes["up_blocks.1.attentions.0.transformer_blocks.0.attn2.q"] == (640, 64, 64)
    assert shapes["up_blocks.0.upsamplers.0"] == (1280, 64, 64)
    assert shapes["mid_block"] == (1280, 32, 32)
