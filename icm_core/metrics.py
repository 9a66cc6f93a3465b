"""Standard alpha-matting error metrics: SAD, MSE, Grad and Conn.

Definitions follow Rhemann et al., "A perceptually motivated online benchmark for image matting" (CVPR 2009),
with the conventions of the evaluation code used by matting papers (DIM / GCA / MatteFormer / ViTMatte):

* alphas are compared as floats in [0, 1] (``uint8`` inputs are divided by 255);
* SAD, Grad and Conn are sums over the evaluated pixels divided by 1000;
* MSE is the mean over the evaluated pixels (not scaled);
* the evaluated pixels are the whole image, or a boolean ``region`` mask such as :func:`unknown_region` of a
  trimap (value 128 of 0/128/255). Filters and connected components always see the whole image; the region only
  selects which per-pixel errors are summed.

Everything is vectorised with numpy and OpenCV (separable filtering and ``connectedComponentsWithStats``), in float64.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Union

import cv2
import numpy as np
import torch

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = [
    "MattingErrors", "compute_all", "compute_conn", "compute_grad", "compute_mse", "compute_sad", "unknown_region",
]

GRAD_SIGMA = 1.4
GRAD_EPSILON = 1e-2
CONN_STEP = 0.1
CONN_THETA = 0.15
CONN_P = 1.0
CONN_CONNECTIVITY = 4
TRIMAP_UNKNOWN = 128


@dataclass(frozen=True)
class MattingErrors:
    """The four standard errors of one prediction (all >= 0, lower is better).

    Attributes:
        sad: sum of absolute differences / 1000.
        mse: mean squared error over the evaluated pixels (alphas in [0, 1]).
        grad: gradient error / 1000 (sigma 1.4).
        conn: connectivity error / 1000 (step 0.1, theta 0.15, p 1, 4-connectivity).
    """

    sad: float
    mse: float
    grad: float
    conn: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- input handling


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.to(torch.float32)
        return x.numpy()
    return np.asarray(x)


def _check_2d(a: np.ndarray, name: str) -> None:
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name}: expected a non-empty 2-D (H, W) array, got shape {tuple(a.shape)}")


def _check_unit_range(a: np.ndarray, name: str) -> None:
    lo, hi = float(a.min()), float(a.max())  # NaN propagates through min/max
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name}: expected finite values in [0, 1], got NaN")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name}: expected float values in [0, 1], got range [{lo:g}, {hi:g}]")


def _as_alpha(x: ArrayLike, name: str) -> np.ndarray:
    """HxW ``uint8`` 0..255 (divided by 255) or float in [0, 1] -> C-contiguous float64 HxW in [0, 1]."""
    a = _to_numpy(x)
    _check_2d(a, name)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected dtype uint8 (0..255) or a float dtype (0..1), got {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    _check_unit_range(a, name)
    return a


def _as_region(region: ArrayLike | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Boolean HxW mask (or a numeric one holding only 0/1) -> bool ndarray; ``None`` means the whole image."""
    if region is None:
        return None
    r = _to_numpy(region)
    if r.shape != shape:
        raise ValueError(f"region: expected shape {shape} (same as pred/gt), got {tuple(r.shape)}")
    if r.dtype == np.bool_:
        return r
    if not (np.issubdtype(r.dtype, np.integer) or np.issubdtype(r.dtype, np.floating)):
        raise ValueError(f"region: expected a bool mask, got dtype {r.dtype}")
    if not bool(((r == 0) | (r == 1)).all()):
        raise ValueError(
            "region: expected a bool mask (or numeric with only 0/1), got other values; "
            "for a trimap use unknown_region(trimap)"
        )
    return r != 0


def _prepare(
    pred: ArrayLike, gt: ArrayLike, region: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    p = _as_alpha(pred, "pred")
    g = _as_alpha(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred/gt shape mismatch: expected pred shape == gt shape {g.shape}, got {p.shape}")
    return p, g, _as_region(region, p.shape)


def _region_sum(err: np.ndarray, region: np.ndarray | None) -> float:
    return float(err.sum() if region is None else (err * region).sum())  # faster than err[region]


def unknown_region(trimap: ArrayLike) -> np.ndarray:
    """Unknown-region mask of a trimap.

    Args:
        trimap: HxW, ``uint8`` 0/128/255 (unknown = exactly 128, as in the standard evaluation code) or float
            in [0, 1] (unknown = values that round to 128 on the 0..255 scale, so both 0.5 and 128/255 count).

    Returns:
        bool ndarray HxW, True on unknown pixels.
    """
    t = _to_numpy(trimap)
    _check_2d(t, "trimap")
    if t.dtype == np.uint8:
        return t == TRIMAP_UNKNOWN
    if not np.issubdtype(t.dtype, np.floating):
        raise ValueError(f"trimap: expected dtype uint8 (0..255) or a float dtype (0..1), got {t.dtype}")
    t = t.astype(np.float64)
    _check_unit_range(t, "trimap")
    return np.rint(t * 255.0) == TRIMAP_UNKNOWN


# ----------------------------------------------------------------------------------------------- SAD / MSE


def _sad(p: np.ndarray, g: np.ndarray, region: np.ndarray | None) -> float:
    return _region_sum(np.abs(p - g), region) / 1000.0


def _mse(p: np.ndarray, g: np.ndarray, region: np.ndarray | None) -> float:
    n = p.size if region is None else int(np.count_nonzero(region))
    if n == 0:
        logger.warning("MSE over an empty region: returning 0.0")
        return 0.0
    d = p - g
    return _region_sum(d * d, region) / n


def compute_sad(pred: ArrayLike, gt: ArrayLike, region: ArrayLike | None = None) -> float:
    """Sum of absolute differences / 1000.

    Args:
        pred, gt: HxW alphas, ``uint8`` 0..255 (divided by 255) or float in [0, 1]; numpy or torch.
        region: optional HxW bool mask of the evaluated pixels (default: all).

    Returns:
        ``sum_region |pred - gt| / 1000`` (>= 0).
    """
    return _sad(*_prepare(pred, gt, region))


def compute_mse(pred: ArrayLike, gt: ArrayLike, region: ArrayLike | None = None) -> float:
    """Mean squared error over the evaluated pixels (alphas in [0, 1], not scaled by 1000).

    Same arguments as :func:`compute_sad`. Returns ``sum_region (pred - gt)^2 / |region|``; 0.0 (with a warning)
    when the region is empty.
    """
    return _mse(*_prepare(pred, gt, region))


# ----------------------------------------------------------------------------------------------- Grad


@functools.lru_cache(maxsize=8)
def _gauss_deriv_kernels(sigma: float, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """1-D factors ``(smooth, deriv)`` of the normalised 2-D first-order Gaussian-derivative kernel.

    The evaluation code builds ``h[i, j] = G(i) * G'(j)`` on ``[-r, r]^2`` with
    ``r = ceil(sigma * sqrt(-2 log(sqrt(2 pi) sigma epsilon)))`` (r = 4 for sigma 1.4) and divides it by its
    Frobenius norm; that kernel is the outer product of the two L2-normalised 1-D factors returned here.
    """
    arg = math.sqrt(2.0 * math.pi) * sigma * epsilon
    if sigma <= 0 or not 0 < arg < 1:
        raise ValueError(f"expected sigma > 0 with sqrt(2*pi)*sigma*epsilon in (0, 1), got sigma={sigma}")
    half = int(math.ceil(sigma * math.sqrt(-2.0 * math.log(arg))))
    x = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(x**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))
    dgauss = -x * gauss / sigma**2
    smooth, deriv = gauss / np.linalg.norm(gauss), dgauss / np.linalg.norm(dgauss)
    smooth.flags.writeable = False
    deriv.flags.writeable = False
    return smooth, deriv


def _gradient_magnitude(a: np.ndarray, sigma: float, epsilon: float = GRAD_EPSILON) -> np.ndarray:
    """|grad a| of a float64 HxW image with edge-replicated borders (scipy ``mode='nearest'``)."""
    smooth, deriv = _gauss_deriv_kernels(float(sigma), float(epsilon))
    # cv2 correlates while the reference convolves: the derivative factor is odd, so only the sign changes.
    gx = cv2.sepFilter2D(a, cv2.CV_64F, deriv, smooth, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(a, cv2.CV_64F, smooth, deriv, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx * gx + gy * gy)


def _grad(p: np.ndarray, g: np.ndarray, region: np.ndarray | None, sigma: float) -> float:
    d = _gradient_magnitude(p, sigma) - _gradient_magnitude(g, sigma)
    return _region_sum(d * d, region) / 1000.0


def compute_grad(
    pred: ArrayLike, gt: ArrayLike, region: ArrayLike | None = None, *, sigma: float = GRAD_SIGMA
) -> float:
    """Gradient error / 1000: ``sum_region (|grad pred| - |grad gt|)^2 / 1000``.

    Gradients come from first-order Gaussian-derivative filters (``sigma`` 1.4, epsilon 1e-2, i.e. 9x9
    normalised kernels, edge-replicated borders) applied to the whole image. Same inputs as
    :func:`compute_sad`.
    """
    return _grad(*_prepare(pred, gt, region), sigma)


# ----------------------------------------------------------------------------------------------- Conn


def _largest_foreground_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of the True pixels of a bool HxW mask (all False if there are none).

    Ties are broken by the component whose first pixel comes first in row-major order.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.view(np.uint8), connectivity=CONN_CONNECTIVITY, ltype=cv2.CV_32S
    )
    if n <= 1:
        return np.zeros(mask.shape, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]  # label 0 (the background) is never a candidate
    tied = np.flatnonzero(areas == areas.max()) + 1
    best = int(tied[0])
    if tied.size > 1:
        tops = stats[tied, cv2.CC_STAT_TOP]
        candidates = tied[tops == tops.min()]
        if candidates.size > 1:
            row = labels[int(tops.min())]
            best = int(row[np.flatnonzero(np.isin(row, candidates))[0]])
        else:
            best = int(candidates[0])
        logger.debug("Conn: %d components tie at area %d; picked label %d", tied.size, areas.max(), best)
    return labels == best


def _threshold_levels(step: float) -> int:
    n = int(round(1.0 / step)) if step > 0 else 0
    if n < 1 or abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"step: expected 1/step to be a positive integer (e.g. 0.1), got {step}")
    return n


def _connectivity_level(p: np.ndarray, g: np.ndarray, step: float) -> np.ndarray:
    """``l_map``: for each pixel, the last threshold before it first leaves the source component (1 if never).

    A pixel that is in the source component at levels ``1..k`` and not at ``k + 1`` gets ``k / n``, i.e. the number
    of consecutive levels it survives divided by n (pixels that leave and later re-enter stay at ``k / n``).
    """
    n = _threshold_levels(step)
    both = np.minimum(p, g)  # (p >= t) & (g >= t)  <=>  min(p, g) >= t
    survived = np.zeros(p.shape, dtype=np.uint16)
    alive = np.ones(p.shape, dtype=bool)
    for i in range(1, n + 1):
        alive &= _largest_foreground_component(both >= i / n)
        if not alive.any():
            break
        survived += alive
    return survived / float(n)


def _conn(
    p: np.ndarray, g: np.ndarray, region: np.ndarray | None, step: float, theta: float, power: float
) -> float:
    if power <= 0:
        raise ValueError(f"p: expected > 0, got {power}")
    level = _connectivity_level(p, g, step)

    def penalty(a: np.ndarray) -> np.ndarray:  # 1 - phi = (d * [d >= theta])^p
        d = a - level
        d = np.where(d >= theta, d, 0.0)
        return d if power == 1 else d**power

    return _region_sum(np.abs(penalty(g) - penalty(p)), region) / 1000.0


def compute_conn(
    pred: ArrayLike,
    gt: ArrayLike,
    region: ArrayLike | None = None,
    *,
    step: float = CONN_STEP,
    theta: float = CONN_THETA,
    p: float = CONN_P,
) -> float:
    """Connectivity error / 1000 (Rhemann et al. 2009).

    For thresholds ``t = step, 2*step, ..., 1`` the source region is the largest 4-connected FOREGROUND component
    of ``(pred >= t) & (gt >= t)`` (computed on the whole image). ``l_i`` is the threshold just below the first
    ``t`` at which pixel i is no longer in the source region (0 if it is not at ``t = step``, 1 if it stays at
    ``t = 1``). With ``d = alpha - l`` and ``phi = 1 - (d * [d >= theta])^p`` the error is
    ``sum_region |phi(pred) - phi(gt)| / 1000``.

    Difference from the widely copied Python evaluation code (GCA / MatteFormer / ViTMatte ``getLargestCC``):
    that code labels the mask and takes ``argmax(bincount(labels))`` *including label 0*, so whenever the
    background outnumbers every foreground component it picks the background as the "source region" (inverting
    ``l``). Here label 0 is excluded, which is the paper's definition and what the original MATLAB code
    (``bwconncomp``) does; results therefore differ from those scripts on images with small foregrounds.
    Ties between equal-area components go to the one whose first pixel comes first in row-major order (MATLAB
    scans column-major). Thresholds are ``i / n`` (exact decimals) rather than accumulated ``np.arange`` steps.

    Args:
        pred, gt: HxW alphas, ``uint8`` 0..255 (divided by 255) or float in [0, 1]; numpy or torch.
        region: optional HxW bool mask of the evaluated pixels (default: all).
        step: threshold step; 1/step must be an integer.
        theta: ``d`` below theta is ignored (counts as fully connected).
        p: exponent of the penalty (1 in the paper's benchmark).
    """
    return _conn(*_prepare(pred, gt, region), step, theta, p)


# ----------------------------------------------------------------------------------------------- all


def compute_all(pred: ArrayLike, gt: ArrayLike, region: ArrayLike | None = None) -> MattingErrors:
    """All four errors with the standard settings; inputs are validated and converted once.

    Args:
        pred, gt: HxW alphas, ``uint8`` 0..255 (divided by 255) or float in [0, 1]; numpy or torch.
        region: optional HxW bool mask of the evaluated pixels, e.g. ``unknown_region(trimap)`` (default: all).
    """
    p, g, r = _prepare(pred, gt, region)
    return MattingErrors(
        sad=_sad(p, g, r),
        mse=_mse(p, g, r),
        grad=_grad(p, g, r, GRAD_SIGMA),
        conn=_conn(p, g, r, CONN_STEP, CONN_THETA, CONN_P),
    )
