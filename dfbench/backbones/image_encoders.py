"""Image encoders: how model-input pixels (N×3×R×R in [-1, 1]) become the denoiser's clean latents. A latent
diffusion family encodes with its VAE (:class:`VaeEncoder`); a pixel-space one would pass the pixels through."""

from __future__ import annotations

from typing import Any

import torch


class VaeEncoder:
    """A ``diffusers.AutoencoderKL`` encoder: the posterior of each image once, then each ensemble member's latent —
    the posterior mean (``latent_mode="mode"``) or mean + std·ε (``"sample"``) — shifted by ``shift_factor`` where
    the VAE has one (SD3, FLUX) and multiplied by ``scaling_factor``, as diffusers' pipelines do."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for every Stable Diffusion VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, pixels: torch.Tensor, posterior_eps: torch.Tensor | None, members: int,
               device: torch.device) -> torch.Tensor:
        """Images N×3×R×R → (image × member) rows of clean latents (float32). ``posterior_eps``: the rows'
        posterior draws (``latent_mode="sample"``) or ``None`` (the posterior mean)."""
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(pixels.to(device, vae_dtype)).latent_dist
        mean = posterior.mean.float().repeat_interleave(members, dim=0)
        if posterior_eps is not None:
            std = posterior.std.float().repeat_interleave(members, dim=0)
            latents = mean + std * posterior_eps.to(mean.device)
        else:
            latents = mean
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * self.vae.config.scaling_factor
