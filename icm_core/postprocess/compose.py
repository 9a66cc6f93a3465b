"""Compositing of a matted foreground over a new background, batched in torch.

Layout NCHW; colours and alpha are floats in ``[0, 1]`` (straight, i.e. not premultiplied, colour).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["composite"]

#: Pixels (rows x width x batch) composited at a time: bounds the temporaries to a few MB.
_BAND_ELEMENTS = 1 << 18


def _check_fg_alpha(foreground: Tensor, alpha: Tensor, name: str) -> None:
    if foreground.dim() != 4 or foreground.shape[1] != 3:
        raise ValueError(
            f"{name}: expected foreground [B,3,H,W], got {tuple(foreground.shape)}; pass RGB in "
            "NCHW (permute(0,3,1,2) for BHWC)."
        )
    expected = (foreground.shape[0], 1, foreground.shape[2], foreground.shape[3])
    if tuple(alpha.shape) != expected:
        raise ValueError(
            f"{name}: expected alpha {list(expected)} to match the foreground, got "
            f"{tuple(alpha.shape)}; resize the matte to the foreground (refine_alpha) and keep one "
            "channel."
        )


def _background_tensor(background: Tensor | Sequence[float], foreground: Tensor) -> Tensor:
    """Validate ``background`` and return it as a float tensor broadcastable to the foreground."""
    if isinstance(background, Tensor):
        b, _, h, w = foreground.shape
        ok = (
            background.dim() == 4
            and background.shape[1] == 3
            and background.shape[0] in (1, b)
            and tuple(background.shape[2:]) == (h, w)
        )
        if not ok:
            raise ValueError(
                f"composite: expected background [{b} or 1,3,{h},{w}], got "
                f"{tuple(background.shape)}; resize it to the foreground (NCHW) or pass an (r,g,b) "
                "tuple."
            )
        return background.to(device=foreground.device, dtype=foreground.dtype)
    values = tuple(background)
    if len(values) != 3 or not all(isinstance(v, numbers.Real) and 0.0 <= v <= 1.0 for v in values):
        raise ValueError(
            f"composite: expected a background colour (r, g, b) with values in [0, 1], got "
            f"{background!r}; divide 8-bit colours by 255."
        )
    colour = torch.tensor([float(v) for v in values], device=foreground.device, dtype=foreground.dtype)
    return colour.view(1, 3, 1, 1)


def composite(
    foreground: Tensor,
    alpha: Tensor,
    background: Tensor | Sequence[float] = (0.0, 0.0, 0.0),
) -> Tensor:
    """Alpha-composite ``foreground`` over ``background``: ``alpha * F + (1 - alpha) * B``.

    Args:
        foreground: ``[B, 3, H, W]`` straight RGB in ``[0, 1]`` (e.g. from ``estimate_foreground``).
        alpha: ``[B, 1, H, W]`` in ``[0, 1]``.
        background: ``[B, 3, H, W]`` or ``[1, 3, H, W]`` RGB tensor in ``[0, 1]``, or one colour
            ``(r, g, b)`` with components in ``[0, 1]``. Default black.

    Returns:
        ``[B, 3, H, W]`` composite in ``foreground``'s dtype and device (values stay in ``[0, 1]``
        for inputs in ``[0, 1]``; nothing is clamped). Computed in bands of rows: the only full-size
        allocation is the result.
    """
    _check_fg_alpha(foreground, alpha, "composite")
    bg = _background_tensor(background, foreground)
    out = torch.empty_like(foreground)
    height = foreground.shape[2]
    step = max(1, _BAND_ELEMENTS // max(1, foreground.shape[0] * foreground.shape[3]))
    for top in range(0, height, step):  # in bands of rows: no full-size temporaries
        rows = slice(top, min(height, top + step))
        a = alpha[:, :, rows].to(device=foreground.device, dtype=foreground.dtype)
        band_bg = bg[:, :, rows] if bg.shape[2] == height else bg
        out[:, :, rows] = a * foreground[:, :, rows] + (1.0 - a) * band_bg
    return out
