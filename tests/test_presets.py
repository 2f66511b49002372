"""Presets reproduce the authors' own code: prompts, timesteps, latent mode.

The timesteps are computed here by diffusers' own img2img ``get_timesteps`` on the schedulers of the
real checkpoints, the way GDF's ``feature/diffusion_feature.py:290-295`` calls it:
``scheduler.set_timesteps(1000)``, ``get_timesteps(1000, t / 1000)``, UNet at ``timesteps[:1]``.
"""

from types import SimpleNamespace

import pytest
from diffusers import EulerDiscreteScheduler, PNDMScheduler, StableDiffusionImg2ImgPipeline
from diffusers import StableDiffusionXLImg2ImgPipeline as XLImg2Img

from dfbench.registry import get_preset

# GDF, correspondence/correspondence/aggregation_network.py line 28, verbatim (one line).
GDF_PROMPT = ("a highly realistic photo that may contain an aeroplane, a bicycle, a bird, a boat, a bottle, a bus, a "
              "car, a cat, a chair, a cow, a dog, a horse, a motorbike, a person, a plant within a pot, a sheep, a "
              "train, or a tv monitor.")
# scheduler/scheduler_config.json of stable-diffusion-v1-5 (PNDM) and stable-diffusion-xl-base-1.0 (Euler)
SD15_SCHEDULER = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                  "trained_betas": None}
SDXL_SCHEDULER = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
                  "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}
GDF_CONFIG_T = 50  # correspondence/correspondence/config_sd15.json and config_sdxl.json: "t": 50


def _gdf_unet_timestep(scheduler, pipeline_class) -> int:
    scheduler.set_timesteps(1000, device="cpu")
    timesteps, _ = pipeline_class.get_timesteps(SimpleNamespace(scheduler=scheduler), 1000, GDF_CONFIG_T / 1000,
                                                "cpu")
    return int(timesteps[:1].item())


def test_gdf_timesteps_come_from_the_schedulers():
    assert _gdf_unet_timestep(PNDMScheduler(**SD15_SCHEDULER), StableDiffusionImg2ImgPipeline) == 51
    assert _gdf_unet_timestep(EulerDiscreteScheduler(**SDXL_SCHEDULER), XLImg2Img) == 50
    # GDF feature/components/models.py 30-42: EulerDiscreteScheduler.from_pretrained on SD2.1-base's PNDM config
    # (the same numbers as SD1.5's: no timestep_spacing, so Euler's default linspace)
    euler = EulerDiscreteScheduler.from_config(SD15_SCHEDULER)
    assert euler.config.timestep_spacing == "linspace"
    assert _gdf_unet_timestep(euler, StableDiffusionImg2ImgPipeline) == 49
    assert get_preset("gdf-ours-sd21").extract_settings().timestep == 49


def test_playground_v2_lands_on_50_through_its_own_scheduler():
    """Playground v2's scheduler/scheduler_config.json: EulerAncestralDiscreteScheduler, scaled_linear 0.00085–0.012,
    "leading", steps_offset 1; GDF runs it in StableDiffusionXLImg2ImgPipeline (feature/components/models.py), so the
    Ours-XL-t preset's shared t=50 is its own."""
    from diffusers import EulerAncestralDiscreteScheduler

    playground = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 num_train_timesteps=1000, prediction_type="epsilon",
                                                 timestep_spacing="leading", steps_offset=1)
    assert _gdf_unet_timestep(playground, XLImg2Img) == 50
    preset = get_preset("gdf-ours-xl-t")
    assert preset.settings["timestep"] == 50 and preset.backbone_options["timestep.2"] == 51   # SD1.5's PNDM


def test_euler_noise_with_its_input_scaling_is_ddpms_noise_at_t():
    """GDF's SD2.1 latents: Euler's add_noise x₀ + σ·ε, then scale_model_input's 1/√(σ² + 1) — the DDPM form
    √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε that dfbench's discrete noise applies at t=49."""
    import torch
    from diffusers import DDPMScheduler

    euler = EulerDiscreteScheduler.from_config(SD15_SCHEDULER)
    euler.set_timesteps(1000, device="cpu")
    t = euler.timesteps[950:951]
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    gdf = euler.scale_model_input(euler.add_noise(clean, noise, t.repeat(2)), t)
    ddpm = DDPMScheduler.from_config(SD15_SCHEDULER)
    torch.testing.assert_close(gdf, ddpm.add_noise(clean, noise, torch.tensor([49, 49])), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gdf-ours-sd15", "gdf-legacy-sd15", "gdf-ours-sdxl", "gdf-legacy-sdxl",
                                  "gdf-ours-sd21", "gdf-legacy-sd21"])
def test_gdf_presets(name):
    preset = get_preset(name)
    settings = preset.extract_settings()
    expected_t = {"sd15": 51, "sdxl": 50, "sd21-base": 49}[preset.backbone]
    assert settings.prompt == GDF_PROMPT and "\n" not in settings.prompt
    assert settings.timestep == expected_t
    # img2img prepare_latents draws a posterior sample (retrieve_latents' default sample_mode="sample")
    assert settings.latent_mode == "sample" and settings.add_noise and settings.ensemble_size == 1
    assert settings.resolution == (1024 if preset.backbone == "sdxl" else 512)
    for source in ("aggregation_network.py:28", "diffusion_feature.py:373", "diffusion_feature.py:290-295"):
        assert source in preset.source


@pytest.mark.parametrize("name", ["cleandift-dift", "cleandift-us6", "cleandift-mid", "cleandift-us10"])
def test_cleandift_presets_prompt_like_its_spair_evaluation(name):
    """CleanDIFT branch geoaware-sc-eval, model_utils/extractor_sd.py line 235:
    caption = f"A photo of a {category}", clean latent, t=261."""
    settings = get_preset(name).extract_settings()
    assert settings.prompt == "A photo of a {category}"
    assert settings.timestep == 261 and not settings.add_noise and settings.latent_mode == "mode"
    assert "extractor_sd.py:235" in get_preset(name).source


def test_dift_preset_prompts_like_dift():
    """Tsingularity/dift src/models/dift_sd.py line 253: prompt = f"a photo of a {cat}"."""
    settings = get_preset("dift").extract_settings()
    assert settings.prompt == "a photo of a {category}"
    assert (settings.timestep, settings.ensemble_size, settings.resolution) == (261, 8, 768)
    assert settings.latent_mode == "sample"  # dift_sd.py:178 latent_dist.sample()


# segmentation/configs/{ade,city}_{sd15,sdxl,legacy_sd15,legacy_sdxl}.py, `layer=` (lines 50-51)
GDF_SEGMENTATION_LAYERS = {
    "gdf-ours-sd15": {"up-level1-repeat1-vit-block0-cross-q", "up-level1-repeat2-res-out",
                      "up-level2-repeat1-vit-block0-cross-q", "up-level3-repeat0-vit-block0-self-k"},
    "gdf-legacy-sd15": {"up-level0-upsampler-out", "up-level1-upsampler-out", "up-level2-upsampler-out",
                        "up-level3-repeat2-vit-out"},
    "gdf-ours-sdxl": {"up-level0-repeat0-vit-block7-out", "up-level0-repeat0-vit-block5-out",
                      "up-level1-repeat0-vit-block0-cross-q", "up-level1-repeat0-vit-block0-out"},
    "gdf-legacy-sdxl": {"up-level0-upsampler-out", "up-level1-upsampler-out", "up-level2-repeat2-res-out"},
}
SEGMENTATION_PROMPTS = {
    # segmentation/configs/ade_sd15.py line 65
    "ade20k": "a highly realistic photo of the real world. It can be an indoor scene, or an outdoor scene, or a photo "
              "of nature. high quality.",
    # segmentation/configs/city_sd15.py line 64
    "cityscapes": "An urban street scene with multiple lanes, various buildings, traffic lights, cars in the "
                  "lanes, and pedestrians, highly realistic.",
}


@pytest.mark.parametrize("base", sorted(GDF_SEGMENTATION_LAYERS))
@pytest.mark.parametrize("dataset", ["ade20k", "cityscapes"])
def test_gdf_segmentation_presets(base, dataset):
    preset = get_preset(f"{base}-{dataset}")
    settings = preset.extract_settings()
    assert set(preset.selection) == GDF_SEGMENTATION_LAYERS[base]
    assert settings.prompt == SEGMENTATION_PROMPTS[dataset]
    assert settings.timestep == (51 if base.endswith("sd15") else 50) and settings.latent_mode == "sample"
    assert settings.resolution == (512 if base.endswith("sd15") else 1024)   # img_size, line 55
