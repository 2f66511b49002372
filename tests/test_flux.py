"""FLUX.1 (double- and single-stream blocks on 2×2-packed latents): features equal a hand run of the stock modules
on the image tokens, the AdaLN modulation signals, [dev]'s dynamically shifted σ against its closed form, the real
models' catalogs and sizes without weights, and a save/load round trip."""

import json
import math

import pytest
import torch

from dfbench import ExtractSettings, create_backbone
from dfbench.backbones.noise import FlowMatchingNoise
from dfbench.backbones.parts import image_generator_seed
from dfbench.images import to_model_input
from dfbench.resolve import build_backbone

SETTINGS = ExtractSettings(resolution=64, timestep=260, ensemble_size=2, seed=9, prompt="a photo of a bird")
NAMES = ["transformer_blocks.4", "single_transformer_blocks.9", "single_transformer_blocks.9.mod.scale",
         "single_transformer_blocks.9.mod.shift"]


@pytest.fixture(scope="module")
def tiny_flux():
    return create_backbone("tiny-flux")


def test_dev_sigma_is_shifted_by_the_image_token_count():
    """FluxPipeline: μ = calculate_shift(image_seq_len) (0.5 at 256 tokens, 1.15 at 4096, linear between), then
    the scheduler's exponential time shift σ = e^μ / (e^μ + 1/u − 1); schnell: shift 1, σ = u."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    dev = FlowMatchingNoise(FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096))
    tokens = 1600                                       # 640² → 80×80 latent → 40×40 packed
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    assert dev.sigma(260, tokens) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / 0.26 - 1))
    assert FlowMatchingNoise.image_tokens(torch.zeros(1, 16, 80, 80)) == 1600
    schnell = FlowMatchingNoise(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0))
    assert schnell.sigma(260) == pytest.approx(0.26)


def hand_run(backbone, image, settings):
    """One image by hand, as FluxPipeline prepares it: (mean − shift)·scaling latents, x_t = (1 − σ)x₀ + σε, packed
    2×2 (view, permute, reshape), ids (0, row, col), CLIP-L pooled + T5 states, timestep σ·1000 / 1000, guidance
    3.5, then the transformer's embedders and blocks; returns the image tokens of double block 4 and single
    block 9 as maps, and single block 9's modulation (shift, scale) from its AdaLN linear."""
    members, model, vae = settings.ensemble_size, backbone.denoiser, backbone.vae
    with torch.no_grad():
        mean = vae.encode(image[None]).latent_dist.mean
        latents = ((mean - vae.config.shift_factor) * vae.config.scaling_factor).repeat(members, 1, 1, 1)
        generator = torch.Generator().manual_seed(image_generator_seed(settings.seed, image))
        eps = torch.randn(latents.shape, generator=generator)
        side = latents.shape[-1] // 2
        mu = 0.5 + (1.15 - 0.5) * (side * side - 256) / (4096 - 256)
        sigma = math.exp(mu) / (math.exp(mu) + 1 / 0.26 - 1)
        noisy = sigma * eps + (1 - sigma) * latents
        packed = noisy.view(members, 16, side, 2, side, 2).permute(0, 2, 4, 1, 3, 5).reshape(members, -1, 64)
        ids = torch.zeros(side, side, 3)
        ids[..., 1] += torch.arange(side)[:, None]
        ids[..., 2] += torch.arange(side)[None, :]
        clip_ids = backbone.tokenizers[0]([settings.prompt], padding="max_length", max_length=77, truncation=True,
                                          return_tensors="pt").input_ids
        pooled = backbone.text_encoders[0](clip_ids).pooler_output.repeat(members, 1)
        t5_ids = backbone.tokenizers[1]([settings.prompt], padding="max_length", max_length=512, truncation=True,
                                        return_tensors="pt").input_ids
        text = backbone.text_encoders[1](t5_ids)[0].repeat(members, 1, 1)
        timestep = torch.full((members,), sigma * 1000, dtype=torch.float32) / 1000 * 1000
        temb = model.time_text_embed(timestep, torch.full((members,), 3.5) * 1000, pooled)
        context = model.context_embedder(text)
        rotary = model.pos_embed(torch.cat([torch.zeros(512, 3), ids.reshape(-1, 3)]))
        hidden = model.x_embedder(packed)
        for index, block in enumerate(model.transformer_blocks):
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb,
                                    image_rotary_emb=rotary)
            if index == 4:
                double = hidden
        for index in range(10):
            block = model.single_transformer_blocks[index]
            if index == 9:
                shift, scale, _ = block.norm.linear(block.norm.silu(temb)).chunk(3, dim=1)
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb,
                                    image_rotary_emb=rotary)
    as_map = lambda tokens: tokens.permute(0, 2, 1).reshape(members, -1, side, side).mean(0)  # noqa: E731
    return as_map(double), as_map(hidden), shift.mean(0)[:, None, None], scale.mean(0)[:, None, None]


def test_blocks_and_modulation_equal_a_hand_run(tiny_flux, photos):
    pixels = to_model_input(photos[:2], 64, "squash")
    features = tiny_flux.extract(photos[:2], NAMES, SETTINGS)
    assert features["single_transformer_blocks.9"].shape == (2, 16, 4, 4)
    assert features["single_transformer_blocks.9.mod.scale"].shape == (2, 16, 1, 1)
    for index, image in enumerate(pixels):
        double, single, shift, scale = hand_run(tiny_flux, image, SETTINGS)
        for name, expected in zip(NAMES, (double, single, scale, shift), strict=True):
            torch.testing.assert_close(features[name][index], expected, rtol=1e-4, atol=1e-5)


def test_single_block_tokens_are_the_image_ones_after_the_text(tiny_flux, photos):
    """A single block's sequence is [512 text tokens, 16 image tokens]: the captured map is its tail, so it
    differs from what the leading (text) tokens would give, and negative indices count within each stack."""
    assert tiny_flux.canonical_selection(["single_transformer_blocks.-1", "transformer_blocks.-1.attn.q"]) == [
        "single_transformer_blocks.37", "transformer_blocks.18.attn.q"]
    captured = {}
    hook = tiny_flux.denoiser.single_transformer_blocks[9].register_forward_hook(
        lambda module, args, output: captured.setdefault("tokens", output))
    try:
        features = tiny_flux.extract(photos[:1], ["single_transformer_blocks.9"],
                                     SETTINGS.replace(ensemble_size=1))["single_transformer_blocks.9"]
    finally:
        hook.remove()
    text, image = captured["tokens"]
    assert text.shape[1] == 512 and image.shape[1] == 16
    torch.testing.assert_close(features[0], image[0].T.reshape(16, 4, 4))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "parameters"), [
    ("flux-dev", 23_802_816_640 // 2),                 # SOURCES.json: the bf16 index's total_size / 2 bytes
    ("flux-schnell", 23_802_816_640 // 2 - 10_229_760),   # [dev] less its guidance embedder (two 256→3072→3072)
])
def test_the_real_models_catalog_and_size_without_weights(name, parameters):
    backbone = build_backbone(name, weightless=True)
    assert sum(parameter.numel() for parameter in backbone.denoiser.parameters()) == parameters
    rows = {row.name: row for row in backbone.catalog(256)}
    assert len(rows) == 7 * (19 + 38)
    assert (rows["single_transformer_blocks.9"].channels, rows["single_transformer_blocks.9"].height) == (3072, 16)
    assert (rows["transformer_blocks.18.mod.gate"].height, rows["transformer_blocks.18.mod.gate"].width) == (1, 1)


def test_save_and_load_round_trip(tiny_flux, photos, tmp_path):
    tiny_flux.save_pretrained(tmp_path / "model")
    loaded = create_backbone("flux-dev", weights=str(tmp_path / "model"), device="cpu")
    expected = tiny_flux.extract(photos[:1], NAMES[:2], SETTINGS)
    actual = loaded.extract(photos[:1], NAMES[:2], SETTINGS)
    for name in NAMES[:2]:
        torch.testing.assert_close(actual[name], expected[name])


def test_ditf_descriptor_on_a_hand_worked_case():
    """eval_spair.py:148-160: zero the discarded channels, LayerNorm over channels (no affine, eps 1e-6), then
    (1 + scale)·x + shift. One location with channels (1, 100, 3, 5), channel 1 discarded: (1, 0, 3, 5) has mean
    2.25 and biased variance 3.6875; scale (0, 1, 0, -1), shift (1, 1, 1, 1)."""
    from dfbench.backbones.flux import FluxOptions, ditf_descriptor

    features = torch.tensor([1.0, 100.0, 3.0, 5.0]).view(1, 4, 1, 1)
    scale, shift = torch.tensor([0.0, 1.0, 0.0, -1.0]).view(1, 4, 1, 1), torch.ones(1, 4, 1, 1)
    activations = {"single_transformer_blocks.8": features, "single_transformer_blocks.9.mod.scale": scale,
                   "single_transformer_blocks.9.mod.shift": shift}
    std = math.sqrt(3.6875 + 1e-6)
    normed = [(value - 2.25) / std for value in (1.0, 0.0, 3.0, 5.0)]
    expected = [normed[0] + 1, 2 * normed[1] + 1, normed[2] + 1, 0 * normed[3] + 1]
    result = ditf_descriptor(activations, FluxOptions(descriptor="ditf", discard="1"))
    assert result.flatten().tolist() == pytest.approx(expected, rel=1e-6)
    plain = ditf_descriptor(activations, FluxOptions(descriptor="ditf", discard="", norm=False, modulate=False))
    assert plain.flatten().tolist() == [1.0, 100.0, 3.0, 5.0]
    with pytest.raises(Exception, match="the map has 4 channels"):
        ditf_descriptor(activations, FluxOptions(descriptor="ditf"))          # 154, 1446: FLUX.1-dev's


def test_ditf_options_are_recorded_and_make_distinct_runs(tmp_path):
    """The ablation's three rows (as they come, + AdaLN, + channel discard) are three identities; σ = t/1000."""
    from dfbench.resolve import resolve_run
    from dfbench.runner import RunSpec
    from dfbench.tasks.base import TaskOutput

    specs = [RunSpec("tiny-flux", "spair/dift-nn", ["single_transformer_blocks.8"], data_root="mini",
                     settings={"timestep": 260}, backbone_options={"descriptor": "none", "sigma": "linear"}),
             *(RunSpec("tiny-flux", "spair/dift-nn", ["single_transformer_blocks.8",
                                                      "single_transformer_blocks.9.mod.shift",
                                                      "single_transformer_blocks.9.mod.scale"], data_root="mini",
                       settings={"timestep": 260},
                       backbone_options={"descriptor": "ditf", "sigma": "linear", "discard": discard})
               for discard in ("", "3"))]
    runs = [resolve_run(spec, weightless=True) for spec in specs]
    assert len({run.identity_hash() for run in runs}) == 3
    record = runs[2].record(TaskOutput(metrics={}))
    assert record.details["backbone_options"]["discard"] == "3" and "DiTF[discard 3" in record.details[
        "backbone_detail"]
    assert runs[0].backbone.noise.sigma(260, 1600) == pytest.approx(0.26)


def test_ditf_descriptor_runs_through_spair(tmp_path):
    """The descriptor reaches the matcher: spair/dift-nn on the mini set with DiTF's recipe on tiny-flux."""
    from dfbench.cli import main
    from dfbench.results import load_results

    code = main(["run", "--backbone", "tiny-flux", "--task", "spair", "--preset", "ditf-flux", "--data-root", "mini",
                 "--resolution", "64", "--ensemble", "2", "--dtype", "float32", "--limit", "3",
                 "--backbone-option", "discard=3", "--results", str(tmp_path), "--no-progress", "--no-figures"])
    assert code == 0
    (record,) = load_results(tmp_path)
    assert record.preset == "ditf-flux" and record.details["backbone_options"]["descriptor"] == "ditf"
    assert 0 <= record.metrics["pck@0.1_bbox"] <= 100


def test_options_that_change_activations_join_the_cache_key():
    """σ rule, guidance and recipe change what the transformer computes, so the feature cache must not hand one
    configuration's activations to another; the descriptor options only combine cached activations. Defaults
    leave the key as it was before the options had a part in it."""
    from dfbench.cache import weight_fingerprint

    plain = create_backbone("tiny-flux")
    weights_only = weight_fingerprint([plain.denoiser, plain.vae, *plain.loaded_encoders])
    assert plain.weight_fingerprint() == weights_only
    keys = {}
    for options in ({"sigma": "linear"}, {"guidance": 2.0}, {"recipe": "gdf-img2img"},
                    {"recipe": "gdf-img2img", "steps": 10}, {"descriptor": "ditf", "norm": False}):
        backbone = create_backbone("tiny-flux", options=options)
        keys[json.dumps(options)] = backbone.weight_fingerprint()
    assert keys['{"descriptor": "ditf", "norm": false}'] == weights_only
    changing = [key for options, key in keys.items() if "descriptor" not in options]
    assert len(set(changing)) == 4 and all(key.startswith(weights_only + "+") for key in changing)
