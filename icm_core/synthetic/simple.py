"""Synthetic scenes with known ground truth (alpha, foreground, background), for tests and documentation figures."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )


def _colour_field(yy, xx, c0, c1, fx, fy, phase, texture: float) -> torch.Tensor:
    height, width = yy.shape
    t = 0.5 + 0.5 * torch.sin(2 * math.pi * (fx * xx / width + fy * yy / height) + phase)
    base = torch.tensor(c0)[:, None, None] * (1 - t) + torch.tensor(c1)[:, None, None] * t
    tex = torch.sin(2 * math.pi * (0.11 * xx + 0.07 * yy) + phase) * torch.sin(2 * math.pi * (0.05 * yy - 0.03 * xx))
    return (base + texture * tex).clamp(0, 1)


def soft_edge_scene(size: int = 256, noisy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A soft-edged star over a different textured background: ``(image [1, 3, S, S], alpha [1, 1, S, S])``."""
    yy, xx = _grid(size, size)
    angle = torch.atan2(yy - size * 0.5, xx - size * 0.48)
    distance = torch.hypot(yy - size * 0.5, xx - size * 0.48)
    radius = size * (0.30 + 0.06 * torch.sin(5 * angle) + 0.03 * torch.cos(3 * angle + 1.0))
    alpha = torch.sigmoid(radius - distance)  # ~4 px wide soft transition
    foreground = _colour_field(yy, xx, (0.85, 0.25, 0.2), (0.95, 0.7, 0.2), 1.0, 0.5, 0.3, 0.08)
    background = _colour_field(yy, xx, (0.1, 0.3, 0.7), (0.2, 0.6, 0.4), 0.7, 1.3, 1.7, 0.08)
    if noisy:  # extra texture at the scale of the coarse grid + per-pixel noise
        generator = torch.Generator().manual_seed(0)
        coarse = torch.rand(1, 3, 32, 32, generator=generator, dtype=torch.float64) - 0.5
        noise = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0] * 0.3
        fine = torch.rand(3, size, size, generator=generator, dtype=torch.float64) - 0.5
        foreground = (foreground + noise).clamp(0, 1)
        background = (background - noise.flip(-1) + 0.1 * fine).clamp(0, 1)
    image = alpha * foreground + (1 - alpha) * background
    return image[None].float(), alpha[None, None].float()


def foreground_scene(size: int = 192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A wide radial alpha ramp (~38 px) between smooth, different colour fields.

    Returns ``(image, alpha, foreground, background)``: ``[1, 3, S, S]``, ``[1, 1, S, S]``, ``[1, 3, S, S]`` x2.
    """
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    foreground = torch.stack([0.8 + 0.15 * torch.sin(3 * xx), 0.3 + 0.2 * yy, 0.2 + 0.1 * torch.cos(4 * yy)])
    background = torch.stack([0.1 + 0.2 * yy, 0.5 + 0.3 * torch.sin(2 * xx + 1), 0.8 - 0.2 * xx])
    alpha = ((0.35 - torch.hypot(yy - 0.5, xx - 0.5)) / 0.2 + 0.5).clamp(0, 1)
    image = alpha * foreground + (1 - alpha) * background
    return image[None], alpha[None, None], foreground[None], background[None]
