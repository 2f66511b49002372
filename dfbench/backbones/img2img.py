"""GDF's img2img recipe (backbone option ``recipe=gdf-img2img``): the features of the last step of a short img2img
denoising run, as Darkbblue/generic-diffusion-feature extracts Hunyuan-DiT's and FLUX's.

GDF runs the whole img2img pipeline with ``strength = t / 1000`` and ``guidance_scale=1`` and keeps the features
its hooks stored last, those of the final denoising step (``feature/diffusion_feature.py`` 236–254; its feature store
overwrites an entry each step, ``feature/components/feature_extractor.py`` 68–69). With the pipeline's step count
(Hunyuan-DiT 50, FLUX 28) the schedule is the img2img pipeline's tail:

* discrete noise (Hunyuan-DiT; GDF's ``pipeline_hunyuandit.py`` 686–690): ``set_timesteps(steps)``, keep the last
  ``int(steps · strength)`` timesteps — at t=50: 21 then 1;
* flow matching (FLUX; diffusers ``FluxImg2ImgPipeline``): σ = linspace(1, 1/steps, steps) shifted by the image's
  token count, keep the timesteps from ``int(steps − steps · strength)`` on — at t=50: the last two.

The clean latent is noised to the first kept timestep, every step but the last runs the whole denoiser and the
scheduler's step, and the last step's activations are captured. A DDPM step draws variance noise; each row's comes
from a generator seeded by its own noise, so a row's features do not depend on its batch.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import numpy as np
import torch

RECIPES = ("single", "gdf-img2img")


def kept_timesteps(scheduler: Any, steps: int, timestep: int, image_tokens: int) -> torch.Tensor:
    """The img2img pipeline's timesteps from ``strength = timestep / 1000`` on (see the module docstring); the
    scheduler is set up for stepping through them."""
    strength = timestep / 1000
    if hasattr(scheduler, "scale_noise"):            # flow matching
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = scheduler.config
        mu = calculate_shift(image_tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        start = int(max(steps - min(steps * strength, steps), 0))
        scheduler.set_begin_index(start)
        return scheduler.timesteps[start:]
    scheduler.set_timesteps(steps)
    start = max(steps - min(int(steps * strength), steps), 0)
    return scheduler.timesteps[start:]


def row_generator(noise: torch.Tensor) -> torch.Generator:
    """A generator seeded by one row's noise (its float32 bytes' SHA-256)."""
    digest = hashlib.sha256(noise.detach().float().cpu().contiguous().numpy().tobytes()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))


def last_step_latents(backbone: Any, clean: torch.Tensor, noise: torch.Tensor, embeddings: list[Any],
                      resolution: int, timestep: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The latents at the last kept timestep after denoising from the first, and that timestep for the denoiser."""
    scheduler = copy.deepcopy(backbone.scheduler)           # stepping changes a scheduler's state
    flow = hasattr(scheduler, "scale_noise")                # flow matching, else DDPM's discrete noise
    image_tokens = clean.shape[-2] * clean.shape[-1] // 4
    timesteps = kept_timesteps(scheduler, steps, timestep, image_tokens)
    first = timesteps[:1].repeat(len(clean))
    noise = noise.to(clean.device, clean.dtype)
    latents = scheduler.scale_noise(clean, first, noise) if flow else scheduler.add_noise(clean, noise, first)
    for t in timesteps[:-1]:
        output = backbone.denoiser_call(latents, t.repeat(len(latents)), embeddings, resolution)()
        prediction = backbone.prediction(output, latents).float()
        if flow:       # an Euler step: elementwise, one call for the batch (each call advances the step index)
            latents = scheduler.step(prediction, t, latents.float()).prev_sample
        else:          # DDPM's step is stateless but draws variance noise: each row from its own generator
            latents = torch.cat([scheduler.step(prediction[index : index + 1], t, latents[index : index + 1].float(),
                                                generator=row_generator(noise[index])).prev_sample
                                 for index in range(len(latents))])
        latents = latents.to(clean.dtype)
    return latents, timesteps[-1:].repeat(len(latents))
