"""Hunyuan-DiT on the diffusion backbone's parts: features equal a hand run of the stock diffusers modules (VAE
posterior, DDPM noise from Hunyuan's scaled-linear betas, BERT and mT5 with their masks, the transformer's own input
stages, its blocks with the long skips of the second half), the real model's catalog and size without weights, the
text-encoder modes and a save/load round trip."""

import json
from pathlib import Path

import pytest
import torch
from diffusers.models.embeddings import get_2d_rotary_pos_embed

from dfbench import ExtractSettings, create_backbone
from dfbench.backbones.parts import image_generator_seed
from dfbench.cli import main
from dfbench.images import to_model_input
from dfbench.resolve import build_backbone

SETTINGS = ExtractSettings(resolution=64, timestep=300, ensemble_size=2, seed=3, prompt="a photo of a cat")
CONFIGS = Path(__file__).resolve().parents[1] / "dfbench" / "backbones" / "configs"


@pytest.fixture(scope="module")
def tiny_hunyuan():
    return create_backbone("tiny-hunyuan")


def hand_run(backbone, image, settings, block):
    """One image by hand: the posterior mean × 0.13025 (the SDXL VAE's scaling factor, vae/config.json), noised with
    DDPM's closed form (ᾱ from betas linspace(√0.00085, √0.03)², scheduler/config.json's scaled_linear), BERT over 77
    and mT5 over 256 padded tokens with their masks (HunyuanDiTPipeline.encode_prompt), then the transformer's input
    stages as HunyuanDiT2DModel.forward runs them and blocks 0 … ``block``, where block i > 20 (of 40) also takes
    block 39 − i's output: the paper's long skip (the forward's stack of skips, popped in reverse)."""
    members = settings.ensemble_size
    model = backbone.denoiser
    with torch.no_grad():
        posterior = backbone.vae.encode(image[None]).latent_dist
        latents = (posterior.mean * 0.13025).repeat(members, 1, 1, 1)
        generator = torch.Generator().manual_seed(image_generator_seed(settings.seed, image))
        noise = torch.randn(latents.shape, generator=generator)
        betas = torch.linspace(0.00085**0.5, 0.03**0.5, 1000, dtype=torch.float64) ** 2
        alpha_bar = torch.cumprod(1 - betas, 0)[settings.timestep].float()
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        states, masks = [], []
        for index, length in ((0, 77), (1, 256)):
            tokens = backbone.tokenizers[index]([settings.prompt], padding="max_length", max_length=length,
                                                truncation=True, return_tensors="pt")
            encoded = backbone.text_encoders[index](tokens.input_ids, attention_mask=tokens.attention_mask)[0]
            states.append(encoded.repeat(members, 1, 1))
            masks.append(tokens.attention_mask.repeat(members, 1))
        t = torch.full((members,), float(settings.timestep))
        meta = torch.tensor([[1024.0, 1024.0, 64.0, 64.0, 0.0, 0.0]]).repeat(members, 1)
        temb = model.time_extra_emb(t, states[1], meta, torch.zeros(members, dtype=torch.long),
                                    hidden_dtype=t.dtype)
        context = torch.cat([states[0], model.text_embedder(states[1])], dim=1)
        mask = torch.cat(masks, dim=1)[..., None].bool()
        context = torch.where(mask, context, model.text_embedding_padding)
        grid = noisy.shape[-1] // 2
        rotary = get_2d_rotary_pos_embed(8, ((0, 0), (32, 32)), (grid, grid), output_type="pt")
        hidden, outputs = model.pos_embed(noisy), []
        for index in range(block + 1):
            skip = {"skip": outputs[39 - index]} if index > 20 else {}
            hidden = model.blocks[index](hidden, temb=temb, encoder_hidden_states=context, image_rotary_emb=rotary,
                                         **skip)
            outputs.append(hidden)
    return hidden.permute(0, 2, 1).reshape(members, -1, grid, grid).mean(0)


@pytest.mark.parametrize("block", [5, 23])
def test_a_block_equals_a_hand_run_of_the_stock_modules(tiny_hunyuan, photos, block):
    pixels = to_model_input(photos[:2], 64, "squash")
    name = f"blocks.{block}"
    features = tiny_hunyuan.extract(photos[:2], [name], SETTINGS)
    assert features[name].shape == (2, 16, 4, 4)
    for index, image in enumerate(pixels):
        torch.testing.assert_close(features[name][index], hand_run(tiny_hunyuan, image, SETTINGS, block),
                                   rtol=1e-4, atol=1e-5)


def test_text_encoder_modes(tiny_hunyuan):
    """clip: the BERT's states and mask, mT5's part zeros with every token attended; none: both zeros. An encoder
    left out by the build is never loaded, and asking for it is one line."""
    device = torch.device("cpu")
    full = tiny_hunyuan.prompt_embedding("a cat")
    clip = tiny_hunyuan.prompt_embedding("a cat", "clip")
    none = tiny_hunyuan.prompt_embedding("a cat", "none")
    assert full.hidden_states.shape == (1, 77, 32) and full.hidden_states_2.shape == (1, 256, 32)
    assert full.attention_mask.sum() < 77                         # "a cat" is a few tokens; the rest is padding
    torch.testing.assert_close(clip.hidden_states, full.hidden_states)
    assert not clip.hidden_states_2.any() and clip.attention_mask_2.all()
    assert not none.hidden_states.any() and none.attention_mask.all() and none.hidden_states_2.shape == (1, 256, 32)
    left_out = create_backbone("tiny-hunyuan", text_encoders="clip")
    assert [type(encoder).__name__ for encoder in left_out.loaded_encoders] == ["BertModel"]
    with pytest.raises(Exception, match="text_encoder_2 was not loaded"):
        left_out.text.embedding("a cat", device, "all")


@pytest.mark.slow
def test_the_real_models_catalog_and_size_without_weights():
    """40 blocks of 1408 channels (16 heads × 88, transformer/config.json) on the 2×2-patch grid; 1.517 B transformer
    values, the published "1.5B" (SOURCES.json: Tencent/HunyuanDiT README) at its two significant digits."""
    backbone = build_backbone("hunyuan-dit", weightless=True)
    rows = {row.name: row for row in backbone.catalog(512)}
    assert len(rows) == 40 * 8
    block = rows["blocks.39"]
    assert (block.channels, block.height, block.width) == (1408, 32, 32)
    parameters = sum(parameter.numel() for parameter in backbone.denoiser.parameters())
    assert round(parameters / 1e9, 1) == 1.5
    assert backbone.canonical_selection(["blocks.-1"]) == ["blocks.39"]
    bert = json.loads((CONFIGS / "hunyuan-dit" / "text_encoder" / "config.json").read_text())
    mt5 = json.loads((CONFIGS / "hunyuan-dit" / "text_encoder_2" / "config.json").read_text())
    transformer = json.loads((CONFIGS / "hunyuan-dit" / "transformer" / "config.json").read_text())
    assert bert["hidden_size"] == transformer["cross_attention_dim"] == 1024
    assert mt5["d_model"] == transformer["cross_attention_dim_t5"] == 2048


def test_save_and_load_round_trip(tiny_hunyuan, photos, tmp_path):
    """Saved in the diffusers layout (transformer/ vae/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/
    scheduler/), it loads through the real model's from_pretrained (--weights DIR) with the same features."""
    tiny_hunyuan.save_pretrained(tmp_path / "model")
    loaded = create_backbone("hunyuan-dit", weights=str(tmp_path / "model"), device="cpu")
    expected = tiny_hunyuan.extract(photos[:1], ["blocks.7"], SETTINGS)["blocks.7"]
    torch.testing.assert_close(loaded.extract(photos[:1], ["blocks.7"], SETTINGS)["blocks.7"], expected)


def test_activations_lists_the_names(capsys):
    assert main(["activations", "tiny-hunyuan", "--grep", r"blocks\.39"]) == 0
    out = capsys.readouterr().out
    assert "blocks.39.attn2.q" in out and "blocks.39.ff.inner" in out
