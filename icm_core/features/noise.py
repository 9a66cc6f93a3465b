"""The noise recipe: SD ``scaled_linear`` schedule, DDPM ``add_noise`` and the ensemble of noisy latents.

Every image gets E ensemble copies, each with its own VAE posterior sample and its own noise (paper: E = 4,
t = 200). The E draws come from ``seed`` alone and are shared by all images of a call, so an image's matte
depends only on the image and the seed: not on its position in the batch, nor on the micro-batch size, and
consecutive video frames see the same noise (no extra flicker).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def scaled_linear_alphas_cumprod(
    num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """ᾱ_t of SD's ``scaled_linear`` schedule, float32 ``[num_steps]`` (cumulative product in float32)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(
    clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """DDPM forward process ``sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε`` with a timestep per sample.

    Args:
        clean, noise: ``[B, ...]``.
        timesteps: ``[B]`` int64.
        alphas_cumprod: ``[T]`` schedule.
    """
    alpha_bar = alphas_cumprod.to(device=clean.device, dtype=clean.dtype)[timesteps.to(clean.device)]
    shape = (-1,) + (1,) * (clean.ndim - 1)
    return alpha_bar.sqrt().view(shape) * clean + (1.0 - alpha_bar).sqrt().view(shape) * noise


@dataclass(frozen=True)
class LatentDistribution:
    """Diagonal Gaussian VAE posterior, already in UNet latent units (times the VAE scaling factor).

    Attributes:
        mean: ``[n, 4, h, w]``.
        std: ``[n, 4, h, w]``.
    """

    mean: torch.Tensor
    std: torch.Tensor


def ensemble_draws(
    latent_shape: tuple[int, int, int], ensemble_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The E posterior-sample draws and E noise draws for ``seed``: two ``[E, c, h, w]`` fp32 CPU tensors.

    Drawn on the CPU so a seed gives the same numbers on every device.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    posterior = torch.randn((ensemble_size, *latent_shape), generator=generator)
    noise = torch.randn((ensemble_size, *latent_shape), generator=generator)
    return posterior, noise


def ensemble_noisy_latents(
    distribution: LatentDistribution, alpha_bar: float, ensemble_size: int, seed: int
) -> torch.Tensor:
    """UNet inputs for n images: ``[n * E, c, h, w]``, image-major (row ``i * E + e``).

    ``z_t = sqrt(ᾱ) (mean + std ε_post) + sqrt(1 - ᾱ) ε_noise``.
    """
    mean, std = distribution.mean, distribution.std
    posterior, noise = ensemble_draws(tuple(mean.shape[1:]), ensemble_size, seed)
    posterior = posterior.to(device=mean.device, dtype=mean.dtype)
    noise = noise.to(device=mean.device, dtype=mean.dtype)
    clean = mean[:, None] + std[:, None] * posterior[None]
    noisy = alpha_bar**0.5 * clean + (1.0 - alpha_bar) ** 0.5 * noise[None]
    return noisy.flatten(0, 1)
