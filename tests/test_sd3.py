"""SD3 / SD3.5 (an MMDiT on the diffusion backbone's parts): features equal a hand run of the stock modules on the
image stream (the text stream would not even form a map), rectified-flow noise against its closed form, the text
encoders' modes, the real models' catalogs and sizes without weights, and a save/load round trip."""

import pytest
import torch

from dfbench import ExtractSettings, create_backbone
from dfbench.backbones.noise import FlowMatchingNoise
from dfbench.backbones.parts import image_generator_seed
from dfbench.errors import DfbenchInputError
from dfbench.images import to_model_input
from dfbench.resolve import build_backbone

NAME = "transformer_blocks.6"
SETTINGS = ExtractSettings(resolution=64, timestep=261, ensemble_size=2, seed=5, prompt="a photo of a dog")


@pytest.fixture(scope="module")
def tiny_sd3():
    return create_backbone("tiny-sd3")


def test_sigma_is_the_schedulers_shifted_one():
    """σ(t) = 3u / (1 + 2u), u = t/1000 (FlowMatchEulerDiscreteScheduler with shift 3: its sigmas table)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    noise = FlowMatchingNoise(scheduler)
    assert noise.sigma(261) == pytest.approx(0.783 / 1.522)
    assert noise.sigma(0) == 0.0
    # the scheduler's own table holds σ for its timesteps 1000 … 1: index k ↔ t = 1000 - k
    for t in (1, 261, 500, 999):
        assert noise.sigma(t) == pytest.approx(float(scheduler.sigmas[1000 - t]), rel=1e-6)
    latents, eps = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    sigma = 0.783 / 1.522
    torch.testing.assert_close(noise.add(latents, eps, 261), (1 - sigma) * latents + sigma * eps)
    assert noise.model_timesteps(261, torch.zeros(3, 16, 4, 4)).tolist() == pytest.approx([sigma * 1000] * 3)


def hand_run(backbone, image, settings, block):
    """One image by hand: the posterior mean shifted and scaled ((z − shift)·scaling, the SD3 VAE's factors),
    x_t = (1 − σ)·x₀ + σ·ε, the CLIPs' penultimate states padded to T5's width then T5's (StableDiffusion3Pipeline
    .encode_prompt), the transformer's patch embedding, time-text embedding and context embedder, and blocks
    0 … ``block``, keeping the image stream each returns as (text, image)."""
    members, model, vae = settings.ensemble_size, backbone.denoiser, backbone.vae
    with torch.no_grad():
        mean = vae.encode(image[None]).latent_dist.mean
        latents = ((mean - vae.config.shift_factor) * vae.config.scaling_factor).repeat(members, 1, 1, 1)
        generator = torch.Generator().manual_seed(image_generator_seed(settings.seed, image))
        eps = torch.randn(latents.shape, generator=generator)
        unshifted = settings.timestep / 1000
        sigma = 3 * unshifted / (1 + 2 * unshifted)
        noisy = (1 - sigma) * latents + sigma * eps
        states, pooled = [], []
        for encoder, tokenizer in zip(backbone.text_encoders[:2], backbone.tokenizers[:2], strict=True):
            ids = tokenizer([settings.prompt], padding="max_length", max_length=77, truncation=True,
                            return_tensors="pt").input_ids
            output = encoder(ids, output_hidden_states=True)
            states.append(output.hidden_states[-2])
            pooled.append(output[0])
        ids = backbone.tokenizers[2]([settings.prompt], padding="max_length", max_length=256, truncation=True,
                                     return_tensors="pt").input_ids
        t5 = backbone.text_encoders[2](ids)[0]
        clip = torch.cat(states, -1)
        clip = torch.cat([clip, torch.zeros(*clip.shape[:2], t5.shape[-1] - clip.shape[-1])], -1)
        text = torch.cat([clip, t5], dim=1).repeat(members, 1, 1)
        hidden = model.pos_embed(noisy)
        temb = model.time_text_embed(torch.full((members,), sigma * 1000), torch.cat(pooled, -1).repeat(members, 1))
        context = model.context_embedder(text)
        for index in range(block + 1):
            context, hidden = model.transformer_blocks[index](hidden_states=hidden, encoder_hidden_states=context,
                                                              temb=temb)
    side = noisy.shape[-1] // 2
    return hidden.permute(0, 2, 1).reshape(members, -1, side, side).mean(0), context


def test_a_block_is_the_image_stream_of_a_hand_run(tiny_sd3, photos):
    pixels = to_model_input(photos[:2], 64, "squash")
    features = tiny_sd3.extract(photos[:2], [NAME], SETTINGS)[NAME]
    assert features.shape == (2, 16, 4, 4)
    for index, image in enumerate(pixels):
        image_stream, text_stream = hand_run(tiny_sd3, image, SETTINGS, 6)
        torch.testing.assert_close(features[index], image_stream, rtol=1e-4, atol=1e-5)
        assert text_stream.shape[1] == 77 + 256 != 16        # the text stream: 333 tokens, no 4×4 map


def test_text_stream_signals_are_refused_in_one_line(tiny_sd3):
    for name in ("transformer_blocks.3.ff_context", "transformer_blocks.3.attn.add_q_proj"):
        with pytest.raises(DfbenchInputError, match="text-stream signal"):
            tiny_sd3.canonical_selection([name])
    assert tiny_sd3.canonical_selection(["transformer_blocks.-1.attn.k"]) == ["transformer_blocks.23.attn.k"]


def test_text_encoder_modes(tiny_sd3):
    """``clip``: T5's 256 tokens zeros (the pipeline with text_encoder_3=None); ``none``: every value zero; both of
    the shapes ``all`` gives."""
    full = tiny_sd3.prompt_embedding("a dog")
    clip = tiny_sd3.prompt_embedding("a dog", "clip")
    none = tiny_sd3.prompt_embedding("a dog", "none")
    assert full.hidden_states.shape == clip.hidden_states.shape == none.hidden_states.shape == (1, 333, 64)
    torch.testing.assert_close(clip.hidden_states[:, :77], full.hidden_states[:, :77])
    assert not clip.hidden_states[:, 77:].any() and full.hidden_states[:, 77:].any()
    assert not none.hidden_states.any() and not none.pooled.any() and none.pooled.shape == full.pooled.shape


def test_text_encoders_setting_is_recorded_only_off_its_default():
    """Records and cache keys written before the setting existed keep their identity."""
    assert "text_encoders" not in ExtractSettings().value_dict()
    assert ExtractSettings(text_encoders="clip").value_dict()["text_encoders"] == "clip"
    with pytest.raises(DfbenchInputError, match="text_encoders"):
        ExtractSettings(text_encoders="t5")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "parameters", "blocks", "width"), [
    # SOURCES.json of each config: SD3-medium's fp16 file ≈ 2.08 B values with the 192²×1536 pos_embed buffer;
    # SD3.5-large's index: 8,146,280,768 values − its 192²×2432 buffer; SD3.5-medium: GGUF 2.47 B − 384²×1536
    ("sd3-medium", 2_080_000_000 - 192 * 192 * 1536, 24, 1536),
    ("sd35-large", 8_146_280_768 - 192 * 192 * 2432, 38, 2432),
    ("sd35-medium", 2_470_000_000 - 384 * 384 * 1536, 24, 1536),
])
def test_the_real_models_catalog_and_size_without_weights(name, parameters, blocks, width):
    backbone = build_backbone(name, weightless=True)
    count = sum(parameter.numel() for parameter in backbone.denoiser.parameters())
    assert count == pytest.approx(parameters, rel=0.01)
    rows = {row.name: row for row in backbone.catalog(512)}
    assert len(rows) == 5 * blocks
    last = rows[f"transformer_blocks.{blocks - 1}"]
    assert (last.channels, last.height, last.width) == (width, 32, 32)


def test_save_and_load_round_trip(tiny_sd3, photos, tmp_path):
    tiny_sd3.save_pretrained(tmp_path / "model")
    loaded = create_backbone("sd3-medium", weights=str(tmp_path / "model"), device="cpu")
    expected = tiny_sd3.extract(photos[:1], [NAME], SETTINGS)[NAME]
    torch.testing.assert_close(loaded.extract(photos[:1], [NAME], SETTINGS)[NAME], expected)


def test_a_backbone_built_without_t5_never_loads_it(tiny_sd3, photos, tmp_path):
    """--text-encoders clip: the T5's weights are never read (its folder may hold only its config), its place in
    the conditioning is zeros, and the features equal a full model's in the same mode; asking such a backbone
    for all encoders is one line."""
    from dfbench.backbones.parts import is_meta
    from dfbench.resolve import resolve_features

    tiny_sd3.save_pretrained(tmp_path / "model")
    for weights in (tmp_path / "model" / "text_encoder_3").glob("*.safetensors"):
        weights.unlink()                                           # only config.json is left
    features = resolve_features("sd3-medium", selection=[NAME], weights=str(tmp_path / "model"), device="cpu",
                                settings={**SETTINGS.to_dict(), "text_encoders": "clip"})
    assert [is_meta(encoder) for encoder in features.backbone.text_encoders] == [False, False, True]
    clip = SETTINGS.replace(text_encoders="clip")
    torch.testing.assert_close(features.backbone.extract(photos[:1], [NAME], clip)[NAME],
                               tiny_sd3.extract(photos[:1], [NAME], clip)[NAME])
    with pytest.raises(DfbenchInputError, match="text_encoder_3 was not loaded"):
        features.backbone.extract(photos[:1], [NAME], SETTINGS)
