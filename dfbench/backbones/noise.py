"""Noise schedules: how a clean latent is noised to the timestep ``--timestep T`` and which timestep the denoiser is
told. A family picks one; ``--timestep`` keeps its meaning per family and is recorded with every run."""

from __future__ import annotations

import math
from typing import Any

import torch

from dfbench.errors import DfbenchInputError


class NoiseSchedule:
    """What every schedule shares: the model's scheduler, its number of training timesteps, the check of t."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    @property
    def steps(self) -> int:
        """The number of training timesteps (t runs over 0 … steps − 1)."""
        return int(self.scheduler.config.num_train_timesteps)

    def check(self, timestep: int) -> None:
        """One line when ``timestep`` is outside the schedule."""
        if timestep >= self.steps:
            raise DfbenchInputError(f"timestep {timestep}: this scheduler has {self.steps} steps")


class DiscreteNoise(NoiseSchedule):
    """DDPM's forward process at an integer t: x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε (the scheduler's ``add_noise``),
    and the denoiser is told t (Stable Diffusion, SDXL, PixArt: diffusers' img2img ``prepare_latents``)."""

    def add(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """``latents`` noised to ``timestep`` with ``noise`` (one row each)."""
        timesteps = torch.full((len(latents),), timestep, dtype=torch.long, device=latents.device)
        return self.scheduler.add_noise(latents, noise.to(latents.device), timesteps)

    def model_timesteps(self, timestep: int, rows: torch.Tensor) -> torch.Tensor:
        """What the denoiser is told for the latent ``rows``: t itself."""
        return torch.full((len(rows),), timestep, dtype=torch.long, device=rows.device)


class FlowMatchingNoise(NoiseSchedule):
    """Rectified flow (SD3, FLUX): x_t = (1 − σ)·x₀ + σ·ε with σ the model's scheduler's at t,
    σ = s·u / (1 + (s − 1)·u), u = t / N, s its ``shift`` (``FlowMatchEulerDiscreteScheduler.__init__`` and
    ``scale_noise``); the denoiser is told σ·N, the scheduler's own timestep for that σ."""

    def __init__(self, scheduler: Any) -> None:
        super().__init__(scheduler)
        #: σ as the scheduler shifts it (default), or σ = t/N unshifted (DiTF's rule for FLUX)
        self.shifted = True

    def sigma(self, timestep: int, image_tokens: int = 0) -> float:
        """σ at ``timestep``, the scheduler's shift included: a fixed ``shift``, or with ``use_dynamic_shifting``
        (FLUX.1-dev) FluxPipeline's: μ linear in the image's token count (``calculate_shift``: ``base_shift`` at
        ``base_image_seq_len`` tokens, ``max_shift`` at ``max_image_seq_len``), σ = e^μ / (e^μ + 1/u − 1)
        (``_time_shift_exponential``)."""
        unshifted = timestep / self.steps
        config = self.scheduler.config
        if unshifted == 0 or not self.shifted:
            return unshifted
        if getattr(config, "use_dynamic_shifting", False):
            slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
            mu = image_tokens * slope + config.base_shift - slope * config.base_image_seq_len
            return math.exp(mu) / (math.exp(mu) + (1 / unshifted - 1))
        shift = float(config.shift)
        return shift * unshifted / (1 + (shift - 1) * unshifted)

    @staticmethod
    def image_tokens(latents: torch.Tensor) -> int:
        """The image's token count after 2×2 packing (what FluxPipeline's ``image_seq_len`` counts)."""
        return latents.shape[-2] * latents.shape[-1] // 4

    def add(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        sigma = self.sigma(timestep, self.image_tokens(latents))
        return sigma * noise.to(latents.device) + (1.0 - sigma) * latents      # as diffusers' scale_noise

    def model_timesteps(self, timestep: int, rows: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma(timestep, self.image_tokens(rows))
        return torch.full((len(rows),), sigma * self.steps, dtype=torch.float32, device=rows.device)
