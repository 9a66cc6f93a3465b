"""Foreground/background colour estimation by blur fusion, batched in torch, in bands of rows.

Implements "Approximate Fast Foreground Colour Estimation" (M. Forte, F. Pitie, ICIP 2021), the
two-pass blur-fusion estimator: a first pass with a large box blur (kernel 90 in the paper, i.e.
radius 45 here) estimates smooth foreground/background colour fields from the image, a second pass
with a small box blur (kernel 6 in the paper's reference code, radius 3 here) sharpens them. Each pass
computes, with ``blur`` a normalised box mean (:func:`~icm_core.postprocess.guided_filter.box_filter`)::

    F_blur = blur(F * a) / blur(a)          B_blur = blur(B * (1 - a)) / blur(1 - a)
    F      = F_blur + a * (I - a * F_blur - (1 - a) * B_blur)

so that ``a * F + (1 - a) * B_blur`` reproduces the image where ``a > 0``. Layout NCHW, all values
in ``[0, 1]``; computed in float32 (box sums in float64 where available) for any input float dtype.

Memory: both passes run band by band (a band of output rows reads its rows plus a halo of ``r1 + r2``
rows above and below, and recomputes the first pass on the ``r2`` rows the second needs), so no
full-size intermediate exists: the working memory is a few bands, sized to stay near 16 bytes per
image pixel (about 3 bytes at 8K), instead of ~390 bytes per pixel for whole-image passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .guided_filter import _accum_dtype

__all__ = ["estimate_foreground", "estimate_foreground_into", "BLUR_FUSION_RADII"]

#: Box radii of the two passes (window ``2r+1``): the paper's kernel sizes 90 and 6, halved.
BLUR_FUSION_RADII: tuple[int, int] = (45, 3)
#: Small constant that keeps the normalised blurs finite where a side has no support.
_EPS = 1e-5
#: Band sizing: working bytes per image column ~ ``_BYTES_PER_ROW * rows + _BYTES_PER_HALO_ROW * halo`` (measured
#: from the buffers of one pass: 7 float64 channels read and written, plus image/alpha rows), aimed at
#: ``_TARGET_BYTES_PER_PIXEL`` of the whole image, never fewer than ``_MIN_BAND`` rows.
_BYTES_PER_ROW = 128
_BYTES_PER_HALO_ROW = 75
_TARGET_BYTES_PER_PIXEL = 16
_MIN_BAND = 32


def _window_mean(x: Tensor, dim: int, radius: int, first: int, count: int, offset: int, total: int) -> Tensor:
    """Box means along ``dim`` over ``[i - r, i + r]`` clipped to ``[0, total)``, for ``i`` in ``[first, first+count)``.

    ``x`` holds positions ``[offset, offset + x.shape[dim])`` (covering every window) in the accumulation dtype;
    it is overwritten (cumulative sums in place). Returns a new tensor with ``count`` positions along ``dim``.
    """
    index = torch.arange(first, first + count, device=x.device)
    low = (index - radius).clamp(min=0)
    high = (index + radius + 1).clamp(max=total)
    sums = x.cumsum_(dim)
    shape = list(x.shape)
    shape[dim] = count
    out = sums.new_empty(shape)
    # sum over [offset, high): consecutive positions, then the last one repeated where the window hits the end
    inside = max(0, min(count, total - radius - first))
    if inside:
        out.narrow(dim, 0, inside).copy_(sums.narrow(dim, first + radius - offset, inside))
    if inside < count:
        tail = out.narrow(dim, inside, count - inside)
        tail.copy_(sums.narrow(dim, total - 1 - offset, 1).expand(tail.shape))
    # minus the sum over [offset, low): zero while the window starts at the slab's first position
    skip = max(0, min(count, offset + radius + 1 - first))
    if skip < count:
        out.narrow(dim, skip, count - skip).sub_(sums.narrow(dim, first + skip - radius - 1 - offset, count - skip))
    view = [1] * x.dim()
    view[dim] = count
    return out.div_((high - low).to(out.dtype).view(view))


def _blurred(
    alpha: Tensor, fg: Tensor, bg: Tensor, inv: Tensor, radius: int, rows: tuple[int, int], out_rows: tuple[int, int],
    height: int,
) -> Tensor:
    """Box means of ``[alpha, fg * alpha, bg * inv]`` (``[7, m, W]`` float32) on ``out_rows``, from slabs on ``rows``.

    Same arithmetic as :func:`box_filter` on the whole image (float32 products, float64 sums, rows then columns,
    float32 result), up to the rounding of sums that start at the slab instead of the image's first row. One
    group of channels at a time, so only one float64 slab exists at once.
    """
    width = alpha.shape[-1]
    out = torch.empty((7, out_rows[1] - out_rows[0], width), dtype=torch.float32, device=alpha.device)
    groups = ((0, lambda: alpha), (1, lambda: fg * alpha), (4, lambda: bg * inv))
    for first, make in groups:
        slab = make().to(_accum_dtype(alpha.device))
        vertical = _window_mean(slab, 1, radius, out_rows[0], out_rows[1] - out_rows[0], rows[0], height)
        del slab
        out[first : first + vertical.shape[0]] = _window_mean(vertical, 2, radius, 0, width, 0, width)
    return out


def _fusion_pass(
    image: Tensor, fg: Tensor, bg: Tensor, alpha: Tensor, radius: int,
    rows: tuple[int, int], out_rows: tuple[int, int], height: int, want_bg: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """One blur-fusion pass on slabs covering ``rows`` -> ``(F, B or None, B_blur)`` on ``out_rows``, ``[3, m, W]``.

    ``F`` is the paper's corrected foreground (clamped to ``[0, 1]``); ``B`` the symmetric correction of the
    background (clamped); ``B_blur`` the smooth background field that the paper feeds to the next pass.
    """
    inv = 1.0 - alpha
    blurred = _blurred(alpha, fg, bg, inv, radius, rows, out_rows, height)
    cut = slice(out_rows[0] - rows[0], out_rows[1] - rows[0])
    image, alpha, inv = image[:, cut], alpha[:, cut], inv[:, cut]
    blur_a = blurred[0:1]
    f_blur = blurred[1:4] / (blur_a + _EPS)
    b_blur = blurred[4:7] / ((1.0 - blur_a) + _EPS)
    residual = image - alpha * f_blur - inv * b_blur
    fg_new = (f_blur + alpha * residual).clamp_(0.0, 1.0)
    bg_new = (b_blur + inv * residual).clamp_(0.0, 1.0) if want_bg else None
    return fg_new, bg_new, b_blur


def _band_rows(height: int, width: int, halo: int) -> int:
    budget = _TARGET_BYTES_PER_PIXEL * height - _BYTES_PER_HALO_ROW * 2 * halo
    return max(_MIN_BAND, min(height, budget // _BYTES_PER_ROW))


def estimate_foreground_into(
    image: Tensor,
    alpha: Tensor,
    foreground: Tensor,
    background: Tensor | None = None,
    radii: tuple[int, int] = BLUR_FUSION_RADII,
) -> None:
    """:func:`estimate_foreground` writing into given tensors (e.g. the colour channels of an RGBA output).

    Args:
        image: ``[3, H, W]`` RGB in ``[0, 1]``; alpha: ``[1, H, W]`` in ``[0, 1]`` (any float dtypes).
        foreground: ``[3, H, W]`` output (any float dtype, same device); background: optional ``[3, H, W]`` output.
        radii: box radii of the two passes, checked by :func:`estimate_foreground`.
    """
    _check(image[None], alpha[None], radii)
    for name, out in (("foreground", foreground), ("background", background)):
        if out is not None and tuple(out.shape) != tuple(image.shape):
            raise ValueError(f"estimate_foreground_into: expected {name} {list(image.shape)}, got {tuple(out.shape)}")
    r1, r2 = radii
    height, width = image.shape[-2:]
    band = _band_rows(height, width, r1 + r2)
    for top in range(0, height, band):
        out_rows = (top, min(height, top + band))
        mid = (max(0, out_rows[0] - r2), min(height, out_rows[1] + r2))  # rows of the first pass the second needs
        rows = (max(0, mid[0] - r1), min(height, mid[1] + r1))
        img = image[:, rows[0] : rows[1]].to(torch.float32).clamp(0.0, 1.0)
        a = alpha[:, rows[0] : rows[1]].to(torch.float32).clamp(0.0, 1.0)
        fg1, _, b_blur = _fusion_pass(img, img, img, a, r1, rows, mid, height, want_bg=False)
        cut = slice(mid[0] - rows[0], mid[1] - rows[0])
        fg2, bg2, _ = _fusion_pass(img[:, cut], fg1, b_blur, a[:, cut], r2, mid, out_rows, height, background is not None)
        foreground[:, out_rows[0] : out_rows[1]] = fg2
        if background is not None:
            background[:, out_rows[0] : out_rows[1]] = bg2


def _check(image: Tensor, alpha: Tensor, radii: tuple[int, int]) -> None:
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(
            f"estimate_foreground: expected image [B,3,H,W], got {tuple(image.shape)}; pass RGB in "
            "NCHW (permute(0,3,1,2) for BHWC)."
        )
    expected = (image.shape[0], 1, image.shape[2], image.shape[3])
    if tuple(alpha.shape) != expected:
        raise ValueError(
            f"estimate_foreground: expected alpha {list(expected)}, got {tuple(alpha.shape)}; "
            "upsample the matte to the image size (refine_alpha) and keep one channel."
        )
    if len(radii) != 2 or min(radii) < 1:
        raise ValueError(
            f"estimate_foreground: expected two radii >= 1, got {radii!r}; use the default "
            f"{BLUR_FUSION_RADII}."
        )


def estimate_foreground(
    image: Tensor,
    alpha: Tensor,
    radii: tuple[int, int] = BLUR_FUSION_RADII,
) -> tuple[Tensor, Tensor]:
    """Estimate the foreground and background colours of a matted image (blur fusion, 2 passes).

    Unlike ``image * alpha`` this recovers the *unpremultiplied* object colour in semi-transparent
    regions (hair, motion blur), removing the background colour that bleeds into them, so the
    foreground can be composited on a new background without halos.

    Args:
        image: ``[B, 3, H, W]`` RGB image in ``[0, 1]``, any float dtype.
        alpha: ``[B, 1, H, W]`` alpha in ``[0, 1]`` (same ``B, H, W``; any float dtype).
        radii: box radii of the first (large) and second (small) pass in pixels. The default
            ``(45, 3)`` is the paper's kernel sizes ``(90, 6)``; scale the first one with the image
            size only if the transparent regions are much wider than ~45 px.

    Returns:
        ``(foreground, background)``, each ``[B, 3, H, W]`` in ``[0, 1]``, in ``image``'s dtype and
        device. The foreground is meaningful where ``alpha > 0`` and the background where
        ``alpha < 1``; elsewhere they hold a smooth extrapolation from nearby pixels (the
        foreground) or the image colour blurred from the nearest transparent pixels (background).
    """
    _check(image, alpha, radii)
    alpha = alpha.to(device=image.device)
    foreground, background = torch.empty_like(image), torch.empty_like(image)
    for index in range(image.shape[0]):
        estimate_foreground_into(image[index], alpha[index], foreground[index], background[index], radii)
    return foreground, background
