"""Pictures that explain a result (plain torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_overlay(image: torch.Tensor, token_mask: torch.Tensor, dim: float = 0.35) -> torch.Tensor:
    """Show which reference tokens are used: cells outside the token mask are dimmed, used cells get a tint.

    Args:
        image: ``[3, H, W]`` in [0, 1].
        token_mask: ``[g, g]`` bool token grid of the (stretched) image.

    Returns:
        ``[3, H, W]`` in [0, 1].
    """
    height, width = image.shape[-2:]
    cells = F.interpolate(token_mask[None, None].float(), size=(height, width), mode="nearest")[0].to(image.device)
    tint = torch.tensor([0.2, 1.0, 0.4], device=image.device).view(3, 1, 1)
    used = image * 0.75 + tint * 0.25
    return (cells * used + (1.0 - cells) * image * dim).clamp(0.0, 1.0)


def prompt_overlay(image: torch.Tensor, token_mask: torch.Tensor, prompt_cells: torch.Tensor) -> torch.Tensor:
    """:func:`token_overlay` with the cells hit by the prompt itself painted red: ``[3, H, W]`` in [0, 1]."""
    shown = token_overlay(image, token_mask)
    height, width = image.shape[-2:]
    hit = F.interpolate(prompt_cells[None, None].float(), size=(height, width), mode="nearest")[0].to(image.device)
    red = torch.tensor([1.0, 0.1, 0.1], device=image.device).view(3, 1, 1)
    return (hit * (0.4 * shown + 0.6 * red) + (1.0 - hit) * shown).clamp(0.0, 1.0)
