"""Backbone.extract: the recipe against an independent implementation, seeds, batching, loading."""

import pytest
import torch
from references import per_image_generator

from dfbench import ExtractSettings, create_backbone
from dfbench.errors import DfbenchInputError
from dfbench.images import content_box, to_model_input

SETTINGS = ExtractSettings(resolution=64, timestep=261, ensemble_size=3, seed=7, batch_size=4)


def test_recipe_equals_straightforward_dift_implementation(tiny_sd15, photos):
    """Mode latent, N noises at t from the image's own generator, UNet, up_blocks.1, mean — written out
    here with plain diffusers."""
    backbone, members = tiny_sd15, 3
    features = backbone.extract(photos[:2], ["up_blocks.1"], SETTINGS)["up_blocks.1"]

    pixels = to_model_input(photos[:2], 64, "squash")
    captured = []
    hook = backbone.unet.up_blocks[1].register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        expected = []
        with torch.no_grad():
            ids = backbone.tokenizers[0]([""], padding="max_length", max_length=77, truncation=True,
                                         return_tensors="pt").input_ids
            text = backbone.text_encoders[0](ids)[0]
            for image in pixels:
                # fresh noise per image (DIFT's torch.randn_like per image): its own seeded generator
                noise = torch.randn(members, 4, 8, 8, generator=per_image_generator(7, image))
                repeated = image[None].repeat(members, 1, 1, 1)  # DIFT: the image repeated N times
                latents = backbone.vae.encode(repeated).latent_dist.mode() * backbone.vae.config.scaling_factor
                t = torch.full((members,), 261, dtype=torch.long)
                noisy = backbone.scheduler.add_noise(latents, noise, t)
                captured.clear()
                backbone.unet(noisy, t, text.repeat(members, 1, 1))
                expected.append(captured[0].mean(0))
    finally:
        hook.remove()
    torch.testing.assert_close(features, torch.stack(expected), rtol=1e-4, atol=1e-5)


def test_same_seed_bit_identical_and_seed_matters(tiny_sd15, photos):
    names = ["up_blocks.1", "up_blocks.2.attentions.0.transformer_blocks.0.attn1.q"]
    first = tiny_sd15.extract(photos[:2], names, SETTINGS)
    second = tiny_sd15.extract(photos[:2], names, SETTINGS)
    other = tiny_sd15.extract(photos[:2], names, SETTINGS.replace(seed=8))
    for name in names:
        assert torch.equal(first[name], second[name])
        assert not torch.allclose(first[name], other[name])


def test_batch_size_does_not_change_values(tiny_sd15, photos):
    names = ["up_blocks.1"]
    one = tiny_sd15.extract(photos, names, SETTINGS.replace(batch_size=1))["up_blocks.1"]
    many = tiny_sd15.extract(photos, names, SETTINGS.replace(batch_size=9))["up_blocks.1"]
    alone = tiny_sd15.extract(photos[1:2], names, SETTINGS)["up_blocks.1"]
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone[0], many[1], rtol=1e-5, atol=1e-6)


def test_posterior_sampling_and_clean_pass(tiny_sd15, photos):
    base = SETTINGS.replace(ensemble_size=1)
    mode = tiny_sd15.extract(photos[:1], ["up_blocks.1"], base)["up_blocks.1"]
    sampled = tiny_sd15.extract(photos[:1], ["up_blocks.1"], base.replace(latent_mode="sample"))["up_blocks.1"]
    assert not torch.allclose(mode, sampled)
    clean = tiny_sd15.extract(photos[:1], ["up_blocks.1"], base.replace(add_noise=False))["up_blocks.1"]
    with torch.no_grad():  # clean pass: UNet on the posterior mean itself, at t=261
        latents = tiny_sd15.vae.encode(to_model_input(photos[:1], 64, "squash")).latent_dist.mean
        latents = latents * tiny_sd15.vae.config.scaling_factor
        text = tiny_sd15.prompt_embedding("").hidden_states
        captured = []
        hook = tiny_sd15.unet.up_blocks[1].register_forward_hook(lambda m, a, out: captured.append(out))
        tiny_sd15.unet(latents, 261, text)
        hook.remove()
    torch.testing.assert_close(clean, captured[0], rtol=1e-5, atol=1e-6)


def test_prompt_embedding_computed_once_per_distinct_prompt(photos):
    backbone = create_backbone("tiny-sd15")
    calls = []
    original = backbone.text.encode
    backbone.text.encode = lambda prompt, device: calls.append(prompt) or original(prompt, device)
    settings = SETTINGS.replace(prompt="a photo of a {category}")
    backbone.extract(photos, ["up_blocks.1"], settings, categories=["cat", "person", "cat"])
    backbone.extract(photos[:1], ["up_blocks.1"], settings, categories=["cat"])
    assert sorted(calls) == ["a photo of a cat", "a photo of a person"]
    with pytest.raises(DfbenchInputError, match="needs one category per image"):
        backbone.extract(photos, ["up_blocks.1"], settings)


def test_prompt_changes_features(tiny_sd15, photos):
    a = tiny_sd15.extract(photos[:1], ["up_blocks.1"], SETTINGS.replace(prompt="a cat"))["up_blocks.1"]
    b = tiny_sd15.extract(photos[:1], ["up_blocks.1"], SETTINGS.replace(prompt="a dog"))["up_blocks.1"]
    assert not torch.allclose(a, b)


def test_sdxl_time_ids_reach_the_unet(tiny_sdxl, photos):
    name = "up_blocks.0.attentions.0.transformer_blocks.7"
    plain = tiny_sdxl.extract(photos[:1], [name], SETTINGS)[name]
    original = tiny_sdxl.added_cond_kwargs

    def shifted(embedding, rows, resolution):
        kwargs = original(embedding, rows, resolution)
        return {**kwargs, "time_ids": kwargs["time_ids"] * 2}

    tiny_sdxl.added_cond_kwargs = shifted
    try:
        changed = tiny_sdxl.extract(photos[:1], [name], SETTINGS)[name]
    finally:
        del tiny_sdxl.added_cond_kwargs
    assert plain.shape == (1, 64, 2, 2)
    assert not torch.allclose(plain, changed)


def test_bfloat16_close_to_float32(photos, tiny_sd15):
    backbone = create_backbone("tiny-sd15", torch_dtype="bfloat16")  # the same seeded weights, cast
    assert backbone.dtype == torch.bfloat16
    full = tiny_sd15.extract(photos[:1], ["up_blocks.1"], SETTINGS)["up_blocks.1"]
    half = backbone.extract(photos[:1], ["up_blocks.1"], SETTINGS.replace(dtype="bfloat16"))["up_blocks.1"]
    assert half.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(full.flatten(), half.flatten(), dim=0)
    assert cosine > 0.99
    with pytest.raises(DfbenchInputError, match="holds bfloat16 weights; create it with torch_dtype='float32'"):
        backbone.extract(photos[:1], ["up_blocks.1"], SETTINGS)


def test_save_pretrained_round_trip_offline(tmp_path, monkeypatch, photos, tiny_sd15):
    tiny_sd15.save_pretrained(tmp_path / "tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = create_backbone("tiny-sd15", weights=str(tmp_path / "tiny"), local_files_only=True)
    assert loaded.source == str(tmp_path / "tiny")
    for ours, theirs in ((tiny_sd15.unet, loaded.unet), (tiny_sd15.vae, loaded.vae),
                         (tiny_sd15.text_encoders[0], loaded.text_encoders[0])):
        state, loaded_state = ours.state_dict(), theirs.state_dict()
        assert state.keys() == loaded_state.keys()
        assert all(torch.equal(state[key], loaded_state[key]) for key in state)
    names = ["up_blocks.1", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.v"]
    expected = tiny_sd15.extract(photos[:1], names, SETTINGS)
    got = loaded.extract(photos[:1], names, SETTINGS)
    for name in names:  # same weights; loaded tensors may differ in memory layout, so not bit-equal
        torch.testing.assert_close(expected[name], got[name], rtol=1e-5, atol=1e-6)


def test_missing_model_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(DfbenchInputError, match=r"cannot load backbone sd15 .*hf download"):
        create_backbone("sd15", local_files_only=True)


def test_pad_mode_content_box_and_input():
    # 200×100 image into 64: longer side 64, height 32, centred vertically at rows 16…47
    assert content_box(200, 100, 64, "pad") == (0, 16, 64, 32)
    assert content_box(200, 100, 64, "squash") == (0, 0, 64, 64)
    from PIL import Image

    white = Image.new("RGB", (200, 100), (255, 255, 255))
    pixels = to_model_input([white], 64, "pad")
    assert torch.all(pixels[0, :, 16:48] == 1.0)
    assert torch.all(pixels[0, :, :16] == 0.0) and torch.all(pixels[0, :, 48:] == 0.0)


def test_sdxl_float16_keeps_its_vae_in_float32(photos):
    """The SDXL VAE overflows in float16 (its config says force_upcast): only the rest is cast."""
    backbone = create_backbone("tiny-sdxl", torch_dtype="float16")
    assert backbone.unet.dtype == torch.float16 and backbone.text_encoders[1].dtype == torch.float16
    assert backbone.vae.dtype == torch.float32
    features = backbone.extract(photos[:1], ["up_blocks.1"], SETTINGS.replace(dtype="float16"))["up_blocks.1"]
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
