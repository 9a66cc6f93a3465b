"""Box filter and full-resolution alpha refinement by a colour guided filter (He et al., TPAMI 2013) solved on a
coarse grid as in the fast guided filter (He & Sun 2015).

NCHW layout; images are RGB floats in ``[0, 1]``, mattes single-channel floats in ``[0, 1]``. Runs on
the inputs' device (CPU, CUDA, MPS), batched, in float32 whatever the input dtype (float16/bfloat16
are upcast and the result is cast back).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["box_filter", "refine_alpha"]

#: Default regulariser of :func:`refine_alpha` (variance units of a ``[0, 1]`` image).
DEFAULT_EPS = 1e-4


def _accum_dtype(device: torch.device) -> torch.dtype:
    """Dtype for cumulative sums: float64 where the backend has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _box_mean_1d(x: Tensor, radius: int, dim: int) -> Tensor:
    """Mean over ``[i - radius, i + radius]`` along ``dim`` clipped to the borders (cumsum, O(1))."""
    n = x.shape[dim]
    if n == 0:
        return x
    r = min(radius, n)  # a wider window covers the same (whole) line
    csum = torch.cumsum(x, dim=dim)
    # ext[k] = sum(x[: clamp(k - r, 0, n)]): r+1 leading zeros, r trailing copies of the total.
    pad_shape = list(x.shape)
    pad_shape[dim] = r + 1
    zeros = csum.new_zeros(pad_shape)
    last = csum.narrow(dim, n - 1, 1).expand(*[r if d == dim else -1 for d in range(x.dim())])
    ext = torch.cat([zeros, csum, last], dim=dim)
    window_sum = ext.narrow(dim, 2 * r + 1, n) - ext.narrow(dim, 0, n)  # sum(x[i-r : i+r+1])
    idx = torch.arange(n, device=x.device)
    count = (idx + r + 1).clamp(max=n) - (idx - r).clamp(min=0)
    count_shape = [1] * x.dim()
    count_shape[dim] = n
    return window_sum / count.to(x.dtype).view(count_shape)


def box_filter(x: Tensor, radius: int | tuple[int, int]) -> Tensor:
    """Mean filter over a ``(2r+1) x (2r+1)`` window with exact border handling.

    Args:
        x: ``[..., H, W]`` float tensor (any leading dims, e.g. ``[B, C, H, W]``).
        radius: window radius ``r >= 0`` (or ``(r_h, r_w)``); any size, larger than the image too.

    Returns:
        Tensor of the same shape and dtype as ``x``: at each pixel the mean of ``x`` over the window
        clipped to the image (divided by the number of pixels actually inside, not by ``(2r+1)^2``).
        The cumulative sums run in float64 (float32 on MPS) so large images stay accurate; a
        non-finite input value therefore poisons the rest of its row/column.
    """
    r_h, r_w = (radius, radius) if isinstance(radius, int) else radius
    if r_h < 0 or r_w < 0:
        raise ValueError(f"box_filter: expected radius >= 0, got {radius!r}; pass a non-negative int.")
    if x.dim() < 2:
        raise ValueError(f"box_filter: expected [..., H, W], got {tuple(x.shape)}; add spatial dims.")
    out = x.to(_accum_dtype(x.device))
    out = _box_mean_1d(out, r_h, x.dim() - 2)
    out = _box_mean_1d(out, r_w, x.dim() - 1)
    return out.to(x.dtype)


def _coefficients(guide: Tensor, src: Tensor, radius: tuple[int, int], eps: float) -> tuple[Tensor, Tensor]:
    """Box-averaged linear coefficients ``(mean_a [B,3,C,H,W], mean_b [B,C,H,W])`` (float32)."""
    b, c, h, w = src.shape
    ir, ig, ib = guide[:, 0:1], guide[:, 1:2], guide[:, 2:3]
    ip = (guide.unsqueeze(2) * src.unsqueeze(1)).reshape(b, 3 * c, h, w)
    second = torch.cat([ir * ir, ir * ig, ir * ib, ig * ig, ig * ib, ib * ib], dim=1)
    means = box_filter(torch.cat([guide, src, ip, second], dim=1), radius)
    mean_i = means[:, 0:3]  # [B,3,H,W]
    mean_p = means[:, 3 : 3 + c]  # [B,C,H,W]
    mean_ip = means[:, 3 + c : 3 + 4 * c].reshape(b, 3, c, h, w)
    mr, mg, mb = mean_i[:, 0:1], mean_i[:, 1:2], mean_i[:, 2:3]
    m2 = means[:, 3 + 4 * c :]
    # Covariance of the guide (symmetric 3x3) + eps * identity.
    s_rr = m2[:, 0:1] - mr * mr + eps
    s_rg = m2[:, 1:2] - mr * mg
    s_rb = m2[:, 2:3] - mr * mb
    s_gg = m2[:, 3:4] - mg * mg + eps
    s_gb = m2[:, 4:5] - mg * mb
    s_bb = m2[:, 5:6] - mb * mb + eps
    cov = mean_ip - mean_i.unsqueeze(2) * mean_p.unsqueeze(1)  # [B,3,C,H,W]
    # Closed-form inverse of the symmetric 3x3 matrix via its adjugate.
    inv_rr = s_gg * s_bb - s_gb * s_gb
    inv_rg = s_rb * s_gb - s_rg * s_bb
    inv_rb = s_rg * s_gb - s_rb * s_gg
    inv_gg = s_rr * s_bb - s_rb * s_rb
    inv_gb = s_rg * s_rb - s_rr * s_gb
    inv_bb = s_rr * s_gg - s_rg * s_rg
    det = s_rr * inv_rr + s_rg * inv_rg + s_rb * inv_rb  # >= eps^3 > 0 (SPD)
    cr, cg, cb = cov[:, 0], cov[:, 1], cov[:, 2]  # each [B,C,H,W]
    a_r = (inv_rr * cr + inv_rg * cg + inv_rb * cb) / det
    a_g = (inv_rg * cr + inv_gg * cg + inv_gb * cb) / det
    a_b = (inv_rb * cr + inv_gb * cg + inv_bb * cb) / det
    b_coef = mean_p - a_r * mr - a_g * mg - a_b * mb
    smooth = box_filter(torch.cat([a_r, a_g, a_b, b_coef], dim=1), radius)
    return smooth[:, : 3 * c].reshape(b, 3, c, h, w), smooth[:, 3 * c :]


def _apply(mean_a: Tensor, mean_b: Tensor, guide: Tensor) -> Tensor:
    return (mean_a * guide.unsqueeze(2)).sum(dim=1) + mean_b


def _joint_upsample(guide: Tensor, src_low: Tensor, radius: tuple[int, int], eps: float) -> Tensor:
    """Guided-filter coefficients on ``src_low``'s grid, applied to the full-resolution guide.

    ``guide`` is ``[B,3,H,W]`` float32, ``src_low`` is ``[B,C,h,w]`` float32 with ``h <= H, w <= W``;
    ``radius`` is ``(r_h, r_w)`` in low-resolution pixels. Returns ``[B,C,H,W]`` float32.
    """
    full, size = tuple(guide.shape[-2:]), tuple(src_low.shape[-2:])
    g_low = guide if size == full else F.interpolate(guide, size=size, mode="area")
    mean_a, mean_b = _coefficients(g_low, src_low, radius, eps)
    if size == full:
        return _apply(mean_a, mean_b, guide)
    bsz, _, c = mean_a.shape[:3]
    coef = torch.cat([mean_a.reshape(bsz, 3 * c, *size), mean_b], dim=1)
    coef = F.interpolate(coef, size=full, mode="bilinear", align_corners=False)
    h, w = full
    return _apply(coef[:, : 3 * c].reshape(bsz, 3, c, h, w), coef[:, 3 * c :], guide)


def _low_radius(radius: int, full: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Convert a full-resolution radius to ``(r_h, r_w)`` on a ``size`` grid (at least 1)."""
    return (max(1, round(radius * size[0] / full[0])), max(1, round(radius * size[1] / full[1])))


def refine_alpha(
    alpha_lowres: Tensor,
    image: Tensor,
    radius: int | None = None,
    eps: float = DEFAULT_EPS,
    subsample: int | None = None,
) -> Tensor:
    """Upsample a coarse alpha matte to the image size, snapping it to the image's edges.

    Fast-guided-filter joint upsampling: the image is area-downsampled to the grid on which the
    coefficients are solved, the per-window affine model ``alpha ~ a . rgb + b`` is fitted there
    against the alpha, and the (box-averaged) ``a, b`` are bilinearly upsampled and applied to the
    full-resolution image. Fitting on the alpha's own grid is both cheapest and most accurate: a
    bilinearly upsampled alpha is blurrier than the image, which biases the fit towards soft edges.

    Args:
        alpha_lowres: ``[B, 1, h, w]`` alpha in ``[0, 1]`` (any float dtype, any ``h, w``; ``h, w``
            may equal ``H, W``, then this is an edge-aware clean-up at full resolution).
        image: ``[B, 3, H, W]`` RGB image in ``[0, 1]`` (any float dtype).
        radius: window radius in *full-resolution* pixels, scaled to the coefficient grid (at
            least 1 there). ``None`` (default) means radius 1 on the coefficient grid (a 3x3 window,
            about ``H/h`` full-res pixels). Measured on synthetic x2/x4 scenes (clean and noisy
            alphas): lowest error on textured colours; radius 2-3 only won on perfectly smooth
            colour fields (by <=30% MSE, ~2% SAD), where every setting is far below bilinear.
        eps: covariance regulariser, default ``1e-4`` (colour std ~0.01): edges with more contrast
            than that are followed; flat regions fall back to a local mean of the alpha.
        subsample: ``None`` (default) solves the coefficients on the coarse alpha's own ``h x w``
            grid (non-integer ratios are fine). An int ``s`` solves them on ``ceil(H/s) x ceil(W/s)``
            instead (the alpha is resampled to that grid); ``1`` is the exact full-res filter of
            the bilinearly upsampled alpha, which measured 2-200x worse in MSE than the default.

    Returns:
        ``[B, 1, H, W]`` refined alpha, clamped to ``[0, 1]``, in ``alpha_lowres``'s dtype and on
        the image's device. Computation is float32 whatever the input dtypes.
    """
    _check_refine_args(alpha_lowres, image, radius, eps, subsample)
    full = (image.shape[2], image.shape[3])
    coarse = (alpha_lowres.shape[2], alpha_lowres.shape[3])
    if subsample is None:
        size = (min(coarse[0], full[0]), min(coarse[1], full[1]))
    else:
        size = (math.ceil(full[0] / subsample), math.ceil(full[1] / subsample))
    guide = image.float().clamp(0.0, 1.0)
    alpha = alpha_lowres.to(device=image.device, dtype=torch.float32)
    if size != coarse:  # only when subsample is given or the alpha is larger than the image
        up = size[0] > coarse[0] or size[1] > coarse[1]
        mode = "bilinear" if up else "area"
        alpha = F.interpolate(alpha, size=size, mode=mode, **({"align_corners": False} if up else {}))
    r_hw = (1, 1) if radius is None else _low_radius(radius, full, size)
    out = _joint_upsample(guide, alpha, r_hw, eps)
    return out.clamp(0.0, 1.0).to(alpha_lowres.dtype)


def _check_refine_args(
    alpha_lowres: Tensor, image: Tensor, radius: int | None, eps: float, subsample: int | None
) -> None:
    """Raise a ValueError naming what :func:`refine_alpha` expected when its arguments do not fit."""
    if alpha_lowres.dim() != 4 or alpha_lowres.shape[1] != 1:
        raise ValueError(
            f"refine_alpha: expected alpha_lowres [B,1,h,w], got {tuple(alpha_lowres.shape)}; "
            "add batch/channel dims (alpha[None, None] for an [h,w] matte)."
        )
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(
            f"refine_alpha: expected image [B,3,H,W], got {tuple(image.shape)}; pass RGB in NCHW "
            "(permute(0,3,1,2) for BHWC)."
        )
    if alpha_lowres.shape[0] != image.shape[0]:
        raise ValueError(
            f"refine_alpha: expected alpha batch == image batch, got {alpha_lowres.shape[0]} vs "
            f"{image.shape[0]}; pass one alpha per image."
        )
    if (radius is not None and radius < 1) or eps <= 0 or (subsample is not None and subsample < 1):
        raise ValueError(
            f"refine_alpha: expected radius None or >= 1, eps > 0, subsample None or >= 1, got "
            f"radius={radius}, eps={eps}, subsample={subsample}; use the defaults "
            f"radius=None, eps={DEFAULT_EPS}, subsample=None."
        )
