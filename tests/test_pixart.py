"""PixArt (a DiT on the diffusion backbone's parts): features equal a hand run of the stock diffusers modules
(VAE posterior, DDPM noise from PixArt's betas, T5 with its mask, the transformer's own input stages and blocks, the
tokens laid on the patch grid), the real models' catalogs and sizes without weights, and a save/load round trip."""

import json
from pathlib import Path

import pytest
import torch

from dfbench import ExtractSettings, create_backbone
from dfbench.backbones.parts import image_generator_seed
from dfbench.cli import main
from dfbench.images import to_model_input
from dfbench.resolve import build_backbone

NAME = "transformer_blocks.5"
SETTINGS = ExtractSettings(resolution=64, timestep=300, ensemble_size=2, seed=3, prompt="a photo of a cat")
CONFIGS = Path(__file__).resolve().parents[1] / "dfbench" / "backbones" / "configs"


@pytest.fixture(scope="module")
def tiny_pixart():
    return create_backbone("tiny-pixart")


def hand_run(backbone, image, settings, block):
    """One image through the stock modules by hand: the posterior mean × scaling factor, noised with DDPM's
    closed form √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε (ᾱ from PixArt's linear betas 1e-4 … 0.02, scheduler_config.json), T5 over
    120 padded tokens with the mask, then the transformer's patch embedding, adaLN-single, caption projection and
    blocks 0 … ``block`` exactly as PixArtTransformer2DModel.forward calls them (GDF feature/diffusion_feature.py
    467-474: encoder_attention_mask, no resolution / aspect-ratio conditions)."""
    members = settings.ensemble_size
    model = backbone.denoiser
    with torch.no_grad():
        posterior = backbone.vae.encode(image[None]).latent_dist
        latents = (posterior.mean * backbone.vae.config.scaling_factor).repeat(members, 1, 1, 1)
        generator = torch.Generator().manual_seed(image_generator_seed(settings.seed, image))
        noise = torch.randn(latents.shape, generator=generator)
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        alpha_bar = torch.cumprod(1 - betas, 0)[settings.timestep].float()
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        tokens = backbone.tokenizers[0]([settings.prompt], padding="max_length", max_length=120, truncation=True,
                                        return_tensors="pt")
        text = backbone.text_encoders[0](tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        text, mask = text.repeat(members, 1, 1), tokens.attention_mask.repeat(members, 1)
        bias = ((1 - mask.float()) * -10000.0)[:, None]
        hidden = model.pos_embed(noisy)
        t = torch.full((members,), settings.timestep)
        timestep, _ = model.adaln_single(t, {"resolution": None, "aspect_ratio": None}, batch_size=members,
                                         hidden_dtype=hidden.dtype)
        context = model.caption_projection(text).view(members, -1, hidden.shape[-1])
        for index in range(block + 1):
            hidden = model.transformer_blocks[index](hidden, encoder_hidden_states=context,
                                                     encoder_attention_mask=bias, timestep=timestep)
    side = noisy.shape[-1] // model.config.patch_size
    return hidden.permute(0, 2, 1).reshape(members, -1, side, side).mean(0)


def test_a_block_equals_a_hand_run_of_the_stock_modules(tiny_pixart, photos):
    pixels = to_model_input(photos[:2], 64, "squash")
    features = tiny_pixart.extract(photos[:2], [NAME, "transformer_blocks.-1"], SETTINGS)
    assert features[NAME].shape == (2, 16, 4, 4) and list(features) == [NAME, "transformer_blocks.27"]
    for index, image in enumerate(pixels):
        torch.testing.assert_close(features[NAME][index], hand_run(tiny_pixart, image, SETTINGS, 5),
                                   rtol=1e-4, atol=1e-5)


def test_the_text_mask_reaches_the_cross_attention(tiny_pixart, photos):
    """Padding tokens are masked out (PixArtAlphaPipeline.encode_prompt's mask): the same prompt padded to 300
    tokens (PixArt-Σ's length) gives the same features; unmasked padding would not."""
    from dfbench.backbones.parts import PromptEmbedding
    from dfbench.backbones.text import T5Text

    class Unmasked(T5Text):
        def encode(self, prompt, device):
            return PromptEmbedding(hidden_states=super().encode(prompt, device).hidden_states)

    short = tiny_pixart.extract(photos[:1], [NAME], SETTINGS)[NAME]
    original = tiny_pixart.text
    try:
        tiny_pixart.text = T5Text(original.encoders, original.tokenizers, max_length=300)
        long = tiny_pixart.extract(photos[:1], [NAME], SETTINGS)[NAME]
        tiny_pixart.text = Unmasked(original.encoders, original.tokenizers, max_length=300)
        unmasked = tiny_pixart.extract(photos[:1], [NAME], SETTINGS)[NAME]
    finally:
        tiny_pixart.text = original
    torch.testing.assert_close(long, short, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unmasked, short, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "resolution", "grid", "length"),
                         [("pixart-alpha", 512, 32, 120), ("pixart-sigma", 1024, 64, 300),
                          ("pixart-sigma-512", 512, 32, 300)])
def test_the_real_models_catalog_and_size_without_weights(name, resolution, grid, length):
    """28 blocks of 1152 channels (16 heads × 72, transformer/config.json) on the 2×2-patch grid; 0.611 B
    transformer values (SOURCES.json: the fp32 safetensors file is 2,443,492,488 B = 610.9 M floats)."""
    backbone = build_backbone(name, weightless=True)
    rows = {row.name: row for row in backbone.catalog(resolution)}
    assert len(rows) == 28 * 10                  # block, attn1 q/k/v/out/map, attn2 q/out/map, ff.inner
    block = rows["transformer_blocks.27"]
    assert (block.channels, block.height, block.width) == (1152, grid, grid)
    assert rows["transformer_blocks.0.ff.inner"].channels == 4 * 1152
    parameters = sum(parameter.numel() for parameter in backbone.denoiser.parameters())
    assert parameters == pytest.approx(2_443_492_488 / 4, rel=1e-3)
    assert backbone.text.max_length == length
    t5 = json.loads((CONFIGS / "pixart-alpha" / "text_encoder" / "config.json").read_text())
    assert (t5["d_model"], t5["num_layers"]) == (4096, 24)          # T5-XXL (v1.1)


def test_resolution_must_fill_whole_patches(tiny_pixart):
    with pytest.raises(Exception, match="multiple of 16"):
        tiny_pixart.check_resolution(72)


def test_save_and_load_round_trip(tiny_pixart, photos, tmp_path):
    """A model saved in the diffusers layout (transformer/ vae/ text_encoder/ tokenizer/ scheduler/) loads through
    the real model's from_pretrained (--weights DIR) and gives the same features."""
    tiny_pixart.save_pretrained(tmp_path / "model")
    loaded = create_backbone("pixart-alpha", weights=str(tmp_path / "model"), device="cpu")
    assert loaded.source == str(tmp_path / "model")
    expected = tiny_pixart.extract(photos[:1], [NAME], SETTINGS)[NAME]
    torch.testing.assert_close(loaded.extract(photos[:1], [NAME], SETTINGS)[NAME], expected)


def test_activations_lists_the_dit_names(capsys):
    assert main(["activations", "pixart-alpha", "--resolution", "256", "--grep", r"transformer_blocks\.27"]) == 0
    out = capsys.readouterr().out
    assert "transformer_blocks.27.attn2.q" in out and "1152" in out and "16" in out
