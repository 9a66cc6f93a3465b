"""Simulated user prompts for evaluation: positive clicks and a scribble derived from a ground-truth alpha.

Everything here is deterministic (no randomness at all): the same alpha always gives the same prompt, so an
evaluation under ``prompt="points"`` or ``prompt="scribble"`` is reproducible and comparable across models.

Coordinates are pixels of the image exactly as it is given to the engine (after the evaluation's centre crop under
the ``official`` resolution): ``x`` is the column (to the right), ``y`` the row (down), both integers, the pixel
``alpha[y, x]``; they are the :class:`~icm_core.prompts.Point` coordinates :meth:`IconMatting.expand_prompt` takes.

Clicks (:func:`simulated_clicks`):

1. The object is ``alpha > 0.5`` (restricted to the pixels the model sees, ``visible``). Its distance transform
   (Euclidean, :func:`cv2.distanceTransform` with the precise mask) gives every object pixel its distance to the
   nearest pixel outside the object; the image frame counts as outside (the alpha is padded with one background
   pixel), so clicks also keep away from the frame.
2. The first click is the pixel deepest inside the object (largest distance; ties: the first in row-major order).
3. Each following click is picked by farthest-point sampling among the *core* pixels, those at least
   ``inner_fraction`` (default 0.5) of the largest distance away from the edge: the core pixel whose distance to
   the nearest click so far, floored to whole pixels, is largest; ties go to the largest sum of distances to all
   clicks so far (so on a compact object the clicks spread around the first one instead of bunching where pixel
   rounding happens to favour), then to the first in row-major order. Sampling stops early when no core pixel is
   left that is not already a click, so a tiny object may get fewer clicks than asked.

Scribble (:func:`simulated_scribble`): the clicks are ordered along the object's principal axis (the first
eigenvector of the covariance of the object pixels' coordinates; ties keep click order) and joined by a polyline
of width ``max(3, min(H, W) // 100)`` px (a single click is a disc of that diameter), drawn with
:func:`cv2.polylines`, then clipped to the object (``alpha > 0.5``, and ``visible``). It contains every click
pixel, so it is never empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ..prompts import Point

DEFAULT_INNER_FRACTION = 0.5


class NoObjectError(ValueError):
    """The ground-truth alpha has no object pixel (alpha > 0.5) the model sees, so no prompt can be simulated."""


def object_mask(alpha: torch.Tensor | np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """``[H, W]`` bool: ``alpha > 0.5`` (and ``visible``, ``[H, W]`` bool, when given)."""
    mask = np.asarray(alpha.detach().cpu().numpy() if isinstance(alpha, torch.Tensor) else alpha) > 0.5
    if mask.ndim != 2:
        raise ValueError(f"expected an [H, W] alpha, got shape {mask.shape}")
    if visible is not None:
        if visible.shape != mask.shape:
            raise ValueError(f"visible mask is {visible.shape}, the alpha {mask.shape}; expected the same shape.")
        mask &= visible
    return mask


def depth_map(mask: np.ndarray) -> np.ndarray:
    """``[H, W]`` float32 Euclidean distance of each object pixel to the nearest non-object pixel or the frame."""
    padded = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def simulated_clicks(
    alpha: torch.Tensor | np.ndarray,
    count: int,
    visible: np.ndarray | None = None,
    inner_fraction: float = DEFAULT_INNER_FRACTION,
) -> tuple[Point, ...]:
    """Up to ``count`` positive clicks well inside the object (see the module docstring).

    Args:
        alpha: ``[H, W]`` ground-truth alpha in [0, 1].
        count: clicks wanted (>= 1).
        visible: ``[H, W]`` bool pixels the model sees (e.g. inside a ``crop`` fit); None = all.
        inner_fraction: core pixels are at least this fraction (0 < f <= 1) of the deepest distance from the edge.

    Raises:
        NoObjectError: no pixel of the alpha is above 0.5 (inside ``visible``).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not 0.0 < inner_fraction <= 1.0:
        raise ValueError(f"inner_fraction must be in (0, 1], got {inner_fraction}")
    mask = object_mask(alpha, visible)
    depth = depth_map(mask)
    deepest = float(depth.max())
    if deepest <= 0.0:
        raise NoObjectError(
            f"the alpha has no pixel above 0.5{' in the part the model sees' if visible is not None else ''}, so no "
            "click can be simulated; give this group another reference."
        )
    ys, xs = np.nonzero(depth >= inner_fraction * deepest)  # row-major order
    first = int(np.argmax(depth))  # first maximum in row-major order
    chosen = [divmod(first, mask.shape[1])]
    gap = np.hypot(ys - chosen[0][0], xs - chosen[0][1])
    total = gap.copy()
    while len(chosen) < count:
        best = _farthest(gap, total)
        if gap[best] <= 0.0:
            break
        chosen.append((int(ys[best]), int(xs[best])))
        step = np.hypot(ys - ys[best], xs - xs[best])
        gap, total = np.minimum(gap, step), total + step
    return tuple(Point(float(x), float(y)) for y, x in chosen)


def _farthest(gap: np.ndarray, total: np.ndarray) -> int:
    """Index of the candidate farthest from the clicks: largest whole-pixel distance to the nearest click, then
    largest sum of distances to all clicks, then first in row-major order (so pixel rounding does not decide)."""
    whole = np.floor(gap + 1e-9)
    tied = whole == whole.max()
    return int(np.argmax(np.where(tied, total, -np.inf)))


def scribble_width(height: int, width: int) -> int:
    """Stroke width in pixels: ``max(3, min(H, W) // 100)``."""
    return max(3, min(height, width) // 100)


def principal_order(mask: np.ndarray, points: Sequence[Point]) -> list[Point]:
    """``points`` sorted by their projection on the principal axis of the object pixels (stable sort)."""
    ys, xs = np.nonzero(mask)
    coords = np.stack([xs, ys], axis=1).astype(np.float64)
    centred = coords - coords.mean(axis=0)
    if len(coords) < 2:
        return list(points)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    axis = vectors[:, -1]  # eigenvector of the largest eigenvalue
    axis = axis if (axis[0], axis[1]) >= (0, 0) else -axis  # fixed sign: the order does not depend on the solver
    projections = [float(np.dot([p.x, p.y], axis)) for p in points]
    return [points[i] for i in sorted(range(len(points)), key=lambda i: projections[i])]


def simulated_scribble(
    alpha: torch.Tensor | np.ndarray,
    clicks: Sequence[Point],
    visible: np.ndarray | None = None,
) -> torch.Tensor:
    """A stroke through ``clicks`` inside the object: ``[H, W]`` float32 0/1 at the alpha's size (see module doc).

    Args:
        alpha: ``[H, W]`` ground-truth alpha in [0, 1].
        clicks: at least one point inside the object (e.g. from :func:`simulated_clicks`).
        visible: as in :func:`simulated_clicks`.
    """
    if not clicks:
        raise ValueError("a simulated scribble needs at least one click to go through.")
    mask = object_mask(alpha, visible)
    height, width = mask.shape
    thickness = scribble_width(height, width)
    canvas = np.zeros((height, width), np.uint8)
    ordered = principal_order(mask, clicks)
    if len(ordered) == 1:
        centre = (int(ordered[0].x), int(ordered[0].y))
        cv2.circle(canvas, centre, thickness // 2, 1, thickness=-1)
    else:
        line = np.array([[int(p.x), int(p.y)] for p in ordered], np.int32)[:, None, :]
        cv2.polylines(canvas, [line], isClosed=False, color=1, thickness=thickness)
    canvas = canvas.astype(bool) & mask
    return torch.from_numpy(canvas.astype(np.float32))
