"""Noise schedules: how a clean latent is noised to the timestep ``--timestep T`` and which timestep the denoiser is
told. A family picks one; ``--timestep`` keeps its meaning per family and is recorded with every run."""

from __future__ import annotations

from typing import Any

import torch

from dfbench.errors import DfbenchInputError


class DiscreteNoise:
    """DDPM's forward process at an integer t: x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε (the scheduler's ``add_noise``),
    and the denoiser is told t (Stable Diffusion, SDXL, PixArt: diffusers' img2img ``prepare_latents``)."""

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

    def add(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """``latents`` noised to ``timestep`` with ``noise`` (one row each)."""
        timesteps = torch.full((len(latents),), timestep, dtype=torch.long, device=latents.device)
        return self.scheduler.add_noise(latents, noise.to(latents.device), timesteps)

    def model_timesteps(self, timestep: int, rows: int, device: torch.device) -> torch.Tensor:
        """What the denoiser is told for ``rows`` rows: t itself."""
        return torch.full((rows,), timestep, dtype=torch.long, device=device)


class FlowMatchingNoise:
    """Rectified flow (SD3, FLUX): x_t = (1 − σ)·x₀ + σ·ε with σ the model's scheduler's at t,
    σ = s·u / (1 + (s − 1)·u), u = t / N, s its ``shift`` (``FlowMatchEulerDiscreteScheduler.__init__`` and
    ``scale_noise``); the denoiser is told σ·N, the scheduler's own timestep for that σ."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    @property
    def steps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def check(self, timestep: int) -> None:
        if timestep >= self.steps:
            raise DfbenchInputError(f"timestep {timestep}: this scheduler has {self.steps} steps")

    def sigma(self, timestep: int) -> float:
        """σ at ``timestep``, the scheduler's shift included."""
        unshifted = timestep / self.steps
        shift = float(self.scheduler.config.shift)
        return shift * unshifted / (1 + (shift - 1) * unshifted)

    def add(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        sigma = self.sigma(timestep)
        return sigma * noise.to(latents.device) + (1.0 - sigma) * latents      # as diffusers' scale_noise

    def model_timesteps(self, timestep: int, rows: int, device: torch.device) -> torch.Tensor:
        return torch.full((rows,), self.sigma(timestep) * self.steps, dtype=torch.float32, device=device)
