"""Training losses of the in-context decoder (paper §4: L1 + Laplacian + gradient for mattes, L1 for masks).

All functions take alphas ``[B, 1, H, W]`` in [0, 1] (predictions are the decoder's sigmoid output) and return a
scalar tensor. Per sample the trainer picks one of two recipes:

* **matting sample** (the ground-truth alpha has any value strictly between 0 and 1):
  ``w_l1 * L1 + w_lap * Laplacian + w_grad * Gradient`` over the whole crop (no trimap needed). The official
  code splits L1 into unknown/known parts by the trimap and adds a small gradient-magnitude penalty; we keep the
  three terms the paper names.
* **segmentation sample** (the ground-truth alpha holds only 0 and 1, decided on the whole image): its
  boundary is not a true matte, so only **confident** pixels count: ``w_seg * L1`` over pixels farther than
  ``band`` pixels (Chebyshev distance) from the other class. The uncertain band is
  ``dilate(fg, band) & dilate(bg, band)``, i.e. the pixels with both a foreground and a background pixel
  within ``band`` pixels (both sides of the mask edge, 2 * band wide). The official code likewise restricts its
  segmentation loss to the known (non-unknown) region.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)
LAPLACIAN_LEVELS = 5


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (all 1 in the paper)."""

    l1: float = 1.0
    laplacian: float = 1.0
    gradient: float = 1.0
    segmentation: float = 1.0


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.ndim != 4 or pred.shape[1] != 1 or pred.shape != target.shape:
        raise ValueError(
            f"expected pred and target of the same shape [B, 1, H, W], got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(values)``, or ``sum(weight * values) / sum(weight)`` (0 when the weight is all zero)."""
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype).expand_as(values)
    total = weight.sum()
    return (values * weight).sum() / total if float(total) > 0 else values.sum() * 0.0


def l1_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error (over ``weight`` > 0 pixels, weighted, when a weight ``[B, 1, H, W]`` is given)."""
    _check_pair(pred, target)
    return weighted_mean((pred - target).abs(), weight)


def sobel_gradients(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3 Sobel derivatives ``(d/dx, d/dy)`` of ``[B, 1, H, W]`` with edge-replicated borders (same shape).

    A horizontal ramp with step s gives d/dx = 8 s inside and 4 s on the left/right border columns.
    """
    kernel_x = torch.tensor(SOBEL_X, dtype=alpha.dtype, device=alpha.device)[None, None]
    padded = F.pad(alpha, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernel_x), F.conv2d(padded, kernel_x.transpose(2, 3))


def gradient_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(|Gx(pred) - Gx(target)| + |Gy(pred) - Gy(target)|)`` with Sobel G (see :func:`sobel_gradients`)."""
    _check_pair(pred, target)
    pred_x, pred_y = sobel_gradients(pred)
    target_x, target_y = sobel_gradients(target)
    return weighted_mean((pred_x - target_x).abs() + (pred_y - target_y).abs(), weight)


def _blur(x: torch.Tensor) -> torch.Tensor:
    taps = torch.tensor(BINOMIAL_5, dtype=x.dtype, device=x.device)
    kernel = (taps[:, None] * taps[None, :] / 256.0)[None, None]
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel)


def laplacian_pyramid(x: torch.Tensor, levels: int = LAPLACIAN_LEVELS) -> list[torch.Tensor]:
    """Band-pass levels of ``[B, 1, H, W]``: ``current - up(down(current))`` for up to ``levels`` octaves.

    ``down`` = 5x5 binomial blur (edge-replicated, as ``cv2.pyrDown`` with ``BORDER_REPLICATE``) then every
    second pixel; ``up`` = bilinear x2 (half-pixel centres). Odd sides are cropped to even first; the pyramid
    stops early once a side would drop below 2. The low-pass residual is not included, so a constant offset
    between two images has an all-zero pyramid (the L1 term sees it).
    """
    bands = []
    current = x
    for _ in range(levels):
        height, width = current.shape[-2:]
        if min(height, width) < 2:
            break
        current = current[..., : height - height % 2, : width - width % 2]
        down = _blur(current)[..., ::2, ::2]
        up = F.interpolate(down, scale_factor=2, mode="bilinear", align_corners=False)
        bands.append(current - up)
        current = down
    return bands


def laplacian_loss(pred: torch.Tensor, target: torch.Tensor, levels: int = LAPLACIAN_LEVELS) -> torch.Tensor:
    """``sum_l 2^l * mean|band_l(pred) - band_l(target)| / levels`` over the Laplacian pyramid levels l."""
    _check_pair(pred, target)
    pred_bands, target_bands = laplacian_pyramid(pred, levels), laplacian_pyramid(target, levels)
    total = pred.new_zeros(())
    for level, (a, b) in enumerate(zip(pred_bands, target_bands)):
        total = total + (2**level) * (a - b).abs().mean()
    return total / levels


def uncertain_band(target: torch.Tensor, band: int) -> torch.Tensor:
    """Bool ``[B, 1, H, W]``: pixels with both a foreground (> 0.5) and a background pixel within ``band`` px."""
    if band < 0:
        raise ValueError(f"band must be >= 0 pixels, got {band}")
    if band == 0:
        return torch.zeros_like(target, dtype=torch.bool)
    foreground = (target > 0.5).to(target.dtype)
    size = 2 * band + 1
    near_foreground = F.max_pool2d(foreground, size, stride=1, padding=band) > 0.5
    near_background = F.max_pool2d(1.0 - foreground, size, stride=1, padding=band) > 0.5
    return near_foreground & near_background


def segmentation_loss(pred: torch.Tensor, target: torch.Tensor, band: int) -> torch.Tensor:
    """L1 over the confident pixels of a binary target (everything outside :func:`uncertain_band`)."""
    _check_pair(pred, target)
    return l1_loss(pred, target, ~uncertain_band(target, band))


def is_binary_alpha(alpha: torch.Tensor) -> bool:
    """True when every value is exactly 0 or 1 (a segmentation mask rather than a matte)."""
    return bool(((alpha == 0) | (alpha == 1)).all())


def sample_losses(
    pred: torch.Tensor, target: torch.Tensor, segmentation: bool, band: int, weights: LossWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted loss of one sample ``[1, 1, S, S]`` and its unweighted terms by name.

    Matting samples give terms ``l1``, ``laplacian``, ``gradient``; segmentation samples give ``segmentation``.
    """
    if segmentation:
        parts = {"segmentation": segmentation_loss(pred, target, band)}
        return weights.segmentation * parts["segmentation"], parts
    parts = {
        "l1": l1_loss(pred, target),
        "laplacian": laplacian_loss(pred, target),
        "gradient": gradient_loss(pred, target),
    }
    total = weights.l1 * parts["l1"] + weights.laplacian * parts["laplacian"] + weights.gradient * parts["gradient"]
    return total, parts
