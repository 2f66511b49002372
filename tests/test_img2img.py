"""GDF's img2img recipe (dfbench/backbones/img2img.py): the kept timesteps against closed forms of the two pipelines'
schedules, a FLUX run against a hand-stepped Euler step, and Hunyuan's DDPM steps independent of the batch."""

import copy
import math

import numpy as np
import pytest
import torch

from dfbench import ExtractSettings, create_backbone
from dfbench.backbones.flux import pack, unpack
from dfbench.backbones.img2img import kept_timesteps
from dfbench.backbones.parts import per_image_draws
from dfbench.errors import DfbenchInputError
from dfbench.images import to_model_input


def test_hunyuan_keeps_the_pipeline_tail_of_its_ddpm_schedule():
    """50 'leading' steps with offset 1 are 981, 961, …, 1 (step 1000 // 50 = 20); GDF's pipeline_hunyuandit.py
    686-690 keeps the last int(50 · t/1000): 2 at t=50, 13 at t=261."""
    scheduler = create_backbone("tiny-hunyuan", init="meta").scheduler
    assert kept_timesteps(copy.deepcopy(scheduler), 50, 50, 16).tolist() == [21, 1]
    assert kept_timesteps(copy.deepcopy(scheduler), 50, 261, 16).tolist() == list(range(241, 0, -20))


def test_flux_keeps_the_tail_of_its_shifted_sigmas():
    """FluxImg2ImgPipeline: σ = linspace(1, 1/28, 28), shifted by exp(μ) / (exp(μ) + 1/σ − 1) with μ linear in the
    token count (0.5 at 256 tokens, 1.15 at 4096: scheduler_config.json); kept from int(28 − 28 · 0.05) = 26 on."""
    scheduler = create_backbone("flux-dev", init="meta").scheduler
    tokens = 1024                                                    # 512 px
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    sigmas = np.linspace(1.0, 1 / 28, 28)
    shifted = [math.exp(mu) / (math.exp(mu) + (1 / sigma - 1)) for sigma in sigmas]
    kept = kept_timesteps(copy.deepcopy(scheduler), 28, 50, tokens)
    torch.testing.assert_close(kept, torch.tensor(shifted[26:], dtype=torch.float32) * 1000)


def test_a_flux_run_equals_one_hand_stepped_euler_step(photos):
    """At t=50 FLUX keeps two timesteps: noised to σ₀ (x = σ₀·ε + (1 − σ₀)·x₀), one whole forward gives the velocity
    v, the Euler step x + (σ₁ − σ₀)·v, and the captured call at σ₁ (guidance 1, as GDF runs it)."""
    backbone = create_backbone("tiny-flux", options={"recipe": "gdf-img2img", "guidance": 1})
    settings = ExtractSettings(resolution=64, timestep=50, seed=4, prompt="a dog")
    name = "single_transformer_blocks.3"
    features = backbone.extract(photos[:1], [name], settings)[name]

    pixels = to_model_input(photos[:1], 64, "squash")
    _, noise = per_image_draws(pixels, settings, 16, 8)
    with torch.no_grad():
        vae = backbone.vae
        clean = (vae.encode(pixels).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
        kept = kept_timesteps(copy.deepcopy(backbone.scheduler), 28, 50, 16)
        sigma0, sigma1 = (kept / 1000).tolist()
        noisy = sigma0 * noise + (1 - sigma0) * clean
        embedding = [backbone.prompt_embedding("a dog")]
        output = backbone.denoiser_call(noisy, kept[:1], embedding, 64)()
        velocity = unpack(output[0], 8, 8)
        assert torch.equal(pack(velocity), output[0])                 # unpack inverts pack
        stepped = noisy + (sigma1 - sigma0) * velocity
        capture = backbone.capture(backbone.denoiser, [name], 64)
        expected = capture.run(backbone.denoiser_call(stepped, kept[1:], embedding, 64))[name]
    torch.testing.assert_close(features, expected.float(), rtol=1e-4, atol=1e-5)


def test_hunyuan_steps_do_not_depend_on_the_batch():
    """DDPM steps draw variance noise: each row's generator is seeded by its own noise, so three images together
    give what each gives alone, and a second run the same."""
    backbone = create_backbone("tiny-hunyuan", options={"recipe": "gdf-img2img"})
    settings = ExtractSettings(resolution=64, timestep=261, ensemble_size=2, seed=1)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    together = backbone.extract(images, ["blocks.22"], settings)["blocks.22"]
    alone = torch.cat([backbone.extract(images[i : i + 1], ["blocks.22"], settings)["blocks.22"] for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    single = create_backbone("tiny-hunyuan").extract(images, ["blocks.22"], settings)["blocks.22"]
    assert not torch.allclose(single, together, atol=1e-3)          # the recipe is not one call at t


def test_unknown_recipe_is_one_line():
    with pytest.raises(DfbenchInputError, match="recipe"):
        create_backbone("tiny-hunyuan", options={"recipe": "img2img"})
