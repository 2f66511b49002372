"""``dfbench perf recipes``: the extraction recipes of a full-size random-weight model side by side in one
process (SD1.5 at 512 px by default):

* the UNet up to the end of ``up_blocks.1`` vs the full UNet (truncation);
* the ``dift`` recipe (one VAE encode, 8 posterior samples, ensemble 8) vs a DIFT-style
  implementation (the image repeated 8 times through the VAE, the same truncated UNet);
* one clean pass (CleanDIFT style) vs the DIFT-style ensemble of 8;
* the recipe against its parts timed alone: one VAE encode plus the ensemble's rows through the truncated UNet
  (``recipe_vs_parts``: what the recipe's own bookkeeping — draws, noising, prompts, capture — costs);
* the peak resident memory of the recipe's extraction, in a fresh child process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch

from dfbench.capture import ActivationCapture
from dfbench.images import to_model_input
from dfbench.perf.common import machine_description, peak_rss_gib, perf_image, timed
from dfbench.settings import DTypeName, ExtractSettings


def dift_style_features(backbone: Any, pixels: torch.Tensor, settings: ExtractSettings) -> torch.Tensor:
    """DIFT's own algorithm, for comparison: the image repeated N times through the VAE encoder
    (a sample each), N seeded noises at t, the UNet truncated after ``up_blocks.1``, the mean."""
    members = settings.ensemble_size
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.inference_mode():
        repeated = pixels.to(backbone.device, next(backbone.vae.parameters()).dtype).repeat(members, 1, 1, 1)
        posterior = backbone.vae.encode(repeated).latent_dist
        latents = posterior.sample(generator=torch.Generator().manual_seed(settings.seed + 1))
        latents = latents * backbone.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        t = torch.full((members,), settings.timestep, dtype=torch.long, device=latents.device)
        noisy = backbone.scheduler.add_noise(latents, noise, t).to(backbone.dtype)
        text = backbone.prompt_embedding("").hidden_states.to(backbone.dtype).repeat(members, 1, 1)
        added = backbone.added_cond_kwargs(backbone.prompt_embedding(""), members, pixels.shape[-1])
        capture = ActivationCapture(backbone.unet, ["up_blocks.1"])
        features = capture.run(lambda: backbone.unet(noisy, t, text, added_cond_kwargs=added))
    return features["up_blocks.1"].float().mean(0, keepdim=True)


def _peak_rss_child(backbone: str, resolution: int, dtype: str, ensemble: int) -> float:
    """Peak RSS (GiB) of a fresh process that builds ``backbone`` and runs the ensemble recipe once."""
    code = f"""
from dfbench import ExtractSettings, create_backbone
from dfbench.perf.common import perf_image
b = create_backbone({backbone!r}, init="random", device="cpu", torch_dtype={dtype!r})
b.extract([perf_image()], ["up_blocks.1"], ExtractSettings(resolution={resolution}, ensemble_size={ensemble},
          batch_size={ensemble}, latent_mode="sample", dtype={dtype!r}))
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # VmHWM (KiB): this process's own peak; ru_maxrss would carry the parent's peak across exec
    return int(done.stdout.strip().splitlines()[-1]) / 2**20


def run_recipes(backbone_name: str = "sd15", resolution: int | None = None, dtype: DTypeName = "float32",
                repeats: int = 1, ensemble: int = 8, device: str = "cpu", measure_rss: bool = True,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time truncation, the ensemble recipe, DIFT-style encoding and a clean pass side by side."""
    from dfbench.backbones.stable_diffusion import StableDiffusionBackbone
    from dfbench.resolve import build_backbone

    log(f"building {backbone_name} with random weights ({dtype}) …")
    backbone = build_backbone(backbone_name, init="random", device=device, dtype=dtype)
    assert isinstance(backbone, StableDiffusionBackbone), "the recipes time a Stable Diffusion UNet's parts"
    resolution = resolution or backbone.default_resolution
    dev = backbone.device
    pixels = to_model_input([perf_image()], resolution, "squash")
    latent = torch.randn(1, 4, resolution // 8, resolution // 8, generator=torch.Generator().manual_seed(0))
    latent = latent.to(dev, backbone.dtype)
    text = backbone.prompt_embedding("").hidden_states.to(backbone.dtype)
    added = backbone.added_cond_kwargs(backbone.prompt_embedding(""), 1, resolution)
    t = torch.tensor([261], device=dev)

    def full_unet() -> None:
        with torch.inference_mode():
            backbone.unet(latent, t, text, added_cond_kwargs=added)

    def truncated_unet() -> None:
        with torch.inference_mode():
            ActivationCapture(backbone.unet, ["up_blocks.1"]).run(
                lambda: backbone.unet(latent, t, text, added_cond_kwargs=added)
            )

    rows = latent.repeat(ensemble, 1, 1, 1)
    rows_text = text.repeat(ensemble, 1, 1)
    rows_added = backbone.added_cond_kwargs(backbone.prompt_embedding(""), ensemble, resolution)
    rows_t = t.repeat(ensemble)

    def vae_encode() -> None:
        with torch.inference_mode():
            backbone.vae.encode(pixels.to(dev, next(backbone.vae.parameters()).dtype))

    def truncated_rows() -> None:
        with torch.inference_mode():
            ActivationCapture(backbone.unet, ["up_blocks.1"]).run(
                lambda: backbone.unet(rows, rows_t, rows_text, added_cond_kwargs=rows_added))

    recipe = ExtractSettings(resolution=resolution, ensemble_size=ensemble, batch_size=ensemble,
                             latent_mode="sample", dtype=dtype)
    clean = recipe.replace(ensemble_size=1, batch_size=1, add_noise=False, latent_mode="mode")
    results: dict[str, Any] = {"backbone": backbone_name, "resolution": resolution, "dtype": dtype,
                               "ensemble": ensemble, "repeats": repeats, "machine": machine_description(dev)}
    steps = {
        "unet_full_s": full_unet,
        "unet_to_up_blocks_1_s": truncated_unet,
        "vae_encode_s": vae_encode,
        "unet_rows_to_up_blocks_1_s": truncated_rows,
        "recipe_ensemble_s": lambda: backbone.extract(pixels, ["up_blocks.1"], recipe),
        "dift_style_ensemble_s": lambda: dift_style_features(backbone, pixels, recipe),
        "clean_pass_s": lambda: backbone.extract(pixels, ["up_blocks.1"], clean),
    }
    # One untimed warm-up run per single-pass step: the first forward of a shape pays one-time
    # costs (allocations, oneDNN/cuDNN kernel selection) that would bias whichever step runs first.
    # The ensemble steps reuse the shapes warmed up before them and are too slow to run twice on CPU.
    warmups = {"unet_full_s": 1, "unet_to_up_blocks_1_s": 1, "clean_pass_s": 1, "vae_encode_s": 1}
    for key, step in steps.items():
        log(f"timing {key} …")
        results[key] = timed(step, repeats, dev, warmup=warmups.get(key, 1 if dev.type == "cuda" else 0))
    results["truncation_speedup"] = results["unet_full_s"] / results["unet_to_up_blocks_1_s"]
    results["recipe_vs_dift_style_speedup"] = results["dift_style_ensemble_s"] / results["recipe_ensemble_s"]
    # the recipe against its parts timed alone: one VAE encode and the ensemble's rows through the truncated UNet
    results["parts_s"] = results["vae_encode_s"] + results["unet_rows_to_up_blocks_1_s"]
    results["recipe_vs_parts"] = results["recipe_ensemble_s"] / results["parts_s"]
    results["clean_vs_dift_style_speedup"] = results["dift_style_ensemble_s"] / results["clean_pass_s"]
    results["this_process_peak_rss_gib"] = peak_rss_gib()
    if measure_rss and dev.type == "cpu":
        log("measuring the recipe's peak RSS in a fresh process …")
        results["recipe_peak_rss_gib"] = _peak_rss_child(backbone_name, resolution, dtype, ensemble)
    return results


def from_args(args: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """``dfbench perf recipes``: one --backbone (default sd15), --resolution, --dtype (default float32)."""
    from dfbench.errors import DfbenchInputError

    backbones = args.backbone or ["sd15"]
    if len(backbones) != 1:
        raise DfbenchInputError("perf recipes: give one --backbone")
    return run_recipes(backbones[0], args.resolution, args.dtype or "float32", args.repeats, args.ensemble,
                       args.device or "cpu", log=log)
