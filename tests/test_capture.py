"""Captured activations against the same computation done by hand on the stock diffusers modules."""

import pytest
import torch

from dfbench.capture import ActivationCapture, tokens_to_map

BLOCK = "down_blocks.0.attentions.0.transformer_blocks.0"


@pytest.fixture(scope="module")
def inputs(tiny_sd15):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, tiny_sd15.unet.config.cross_attention_dim, generator=generator)
    return sample, torch.tensor(261), text


def _run(unet, names, inputs, stop_early=True):
    sample, t, text = inputs
    with torch.no_grad():
        return ActivationCapture(unet, names, stop_early).run(lambda: unet(sample, t, text))


def _by_hand(unet, inputs):
    """conv_in, time embedding, first resnet and the first transformer's token input, step by step."""
    sample, t, text = inputs
    h = unet.conv_in(sample)
    emb = unet.time_embedding(unet.time_proj(t.expand(len(sample))).to(sample.dtype))
    resnet = unet.down_blocks[0].resnets[0](h, emb)
    transformer = unet.down_blocks[0].attentions[0]
    batch, channels, height, width = resnet.shape
    assert not transformer.use_linear_projection  # SD1.5: 1×1 conv proj_in, before flattening
    z = transformer.proj_in(transformer.norm(resnet))
    tokens = z.permute(0, 2, 3, 1).reshape(batch, height * width, z.shape[1])
    return h, emb, resnet, tokens, (height, width)


def test_block_and_resnet_outputs_equal_hand_run(tiny_sd15, inputs):
    unet = tiny_sd15.unet
    names = ["conv_in", "down_blocks.0.resnets.0", "down_blocks.0.resnets.0.increment", "down_blocks.0"]
    features = _run(unet, names, inputs)
    with torch.no_grad():
        h, emb, resnet, _, _ = _by_hand(unet, inputs)
        block_output, _ = unet.down_blocks[0](h, emb, encoder_hidden_states=inputs[2])
    torch.testing.assert_close(features["conv_in"], h)
    torch.testing.assert_close(features["down_blocks.0.resnets.0"], resnet)
    # 32 → 32 channels: no conv_shortcut, output_scale_factor 1, so increment = output − input
    assert unet.down_blocks[0].resnets[0].conv_shortcut is None
    torch.testing.assert_close(features["down_blocks.0.resnets.0.increment"], resnet - h)
    torch.testing.assert_close(features["down_blocks.0"], block_output)


def test_self_attention_query_equals_to_q_of_normed_tokens(tiny_sd15, inputs):
    unet = tiny_sd15.unet
    features = _run(unet, [f"{BLOCK}.attn1.q", f"{BLOCK}.attn1.k"], inputs)
    with torch.no_grad():
        _, _, _, tokens, (height, width) = _by_hand(unet, inputs)
        block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
        normed = block.norm1(tokens)
        query, key = block.attn1.to_q(normed), block.attn1.to_k(normed)
    # tokens are row-major positions: token y*W + x is pixel (y, x)
    expected_q = query.reshape(2, height, width, -1).permute(0, 3, 1, 2)
    expected_k = key.reshape(2, height, width, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(features[f"{BLOCK}.attn1.q"], expected_q)
    torch.testing.assert_close(features[f"{BLOCK}.attn1.k"], expected_k)


def test_transformer_block_residual_identity(tiny_sd15, inputs):
    """block output = tokens + attn1.out + attn2.out + ff.net[2](ff.inner) (pre-norm residual block)."""
    unet = tiny_sd15.unet
    names = [BLOCK, f"{BLOCK}.attn1.out", f"{BLOCK}.attn2.out", f"{BLOCK}.ff.inner", f"{BLOCK}.attn2.q"]
    features = _run(unet, names, inputs)
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    channels = features[BLOCK].shape[1]
    assert features[f"{BLOCK}.ff.inner"].shape[1] == 4 * channels  # GEGLU output: 4×C
    assert features[f"{BLOCK}.attn2.q"].shape == features[BLOCK].shape
    with torch.no_grad():
        _, _, _, tokens, (height, width) = _by_hand(unet, inputs)
        inner = features[f"{BLOCK}.ff.inner"].flatten(2).transpose(1, 2)
        ff = block.ff.net[2](inner).transpose(1, 2).reshape(2, channels, height, width)
        token_map = tokens.transpose(1, 2).reshape(2, channels, height, width)
    expected = token_map + features[f"{BLOCK}.attn1.out"] + features[f"{BLOCK}.attn2.out"] + ff
    torch.testing.assert_close(features[BLOCK], expected, rtol=1e-5, atol=1e-5)


def test_truncated_forward_stops_and_matches_full(tiny_sd15, inputs):
    unet = tiny_sd15.unet
    names = ["down_blocks.1", "mid_block.attentions.0.transformer_blocks.0.attn1.v"]
    calls = []
    handle = unet.up_blocks[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        truncated = _run(unet, names, inputs, stop_early=True)
        assert calls == []  # nothing after the mid block's attention ran
        full = _run(unet, names, inputs, stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()
    for name in names:
        assert torch.equal(truncated[name], full[name])
    assert list(truncated) == names


def test_tokens_to_map_is_row_major():
    tokens = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)  # B=2, H·W=6, C=3
    maps = tokens_to_map(tokens, 2, 3)
    assert maps.shape == (2, 3, 2, 3)
    # pixel (y=1, x=2) is token 1*3 + 2 = 5
    assert torch.equal(maps[1, :, 1, 2], tokens[1, 5])
    with pytest.raises(ValueError):
        tokens_to_map(tokens, 4, 2)


def test_hooks_are_removed_after_run(tiny_sd15, inputs):
    unet = tiny_sd15.unet
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())
    _run(unet, [f"{BLOCK}.attn1.q", "up_blocks.1"], inputs)
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())
    assert before == after
