"""Inter- and intra-similarity as pure tensor functions (paper §3.3-3.4).

Token grids are always in raster order: token ``p = y * r + x`` of an ``r x r`` grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Guidance is computed for at most this many reference tokens at once, so memory stays bounded for
# contexts built from several references (K can reach a few thousand).
_TOKEN_CHUNK = 1024


def cell_index(length: int, grid: int, device: torch.device | None = None) -> torch.Tensor:
    """Token cell of every pixel along one axis, by pixel centre: ``floor((i + 0.5) * grid / length)``, ``[length]``.

    A cell of the model's square grid covers exactly these pixels of the (stretched) image, whatever its size.
    """
    centres = (torch.arange(length, device=device, dtype=torch.float64) + 0.5) * grid / length
    return centres.floor().long().clamp_(0, grid - 1)


def token_coverage(
    mask: torch.Tensor, grid: int, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of each token cell's pixels that are foreground (mask > 0.5), ``[H, W] -> [grid, grid]``.

    ``rows`` / ``cols`` give the cell of every image row / column (-1: outside the model's square); by default the
    stretch fit's :func:`cell_index`. For an ``S x S`` mask with S divisible by ``grid`` this is the plain block
    average. Cells no pixel falls into have coverage 0.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a [H, W] mask, got shape {tuple(mask.shape)}.")
    rows = cell_index(mask.shape[0], grid, mask.device) if rows is None else rows.to(mask.device)
    cols = cell_index(mask.shape[1], grid, mask.device) if cols is None else cols.to(mask.device)
    binary = (mask > 0.5).to(torch.float64)
    row_onehot = F.one_hot(rows.clamp(min=0), grid).to(torch.float64) * (rows >= 0)[:, None]  # [H, g]
    col_onehot = F.one_hot(cols.clamp(min=0), grid).to(torch.float64) * (cols >= 0)[:, None]  # [W, g]
    counts = row_onehot.sum(0)[:, None] * col_onehot.sum(0)[None, :]
    covered = row_onehot.T @ binary @ col_onehot
    return torch.where(counts > 0, covered / counts.clamp(min=1), torch.zeros_like(covered)).to(torch.float32)


def pool_token_mask(
    mask: torch.Tensor,
    grid: int,
    min_coverage: float = 1.0,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference-token selection from a mask: binarise at > 0.5, keep cells covered at least ``min_coverage``.

    ``min_coverage = 1.0`` is the official rule (min-pooling: a token counts only if its whole cell is
    foreground); smaller values keep thin structures (any coverage: a small positive value).

    Args:
        mask: ``[H, W]`` float in [0, 1] at the reference image's size.
        grid: token grid side (48 at 768 px).
        rows, cols: cell of every image row / column (see :func:`token_coverage`).

    Returns:
        ``[grid, grid]`` bool token mask.
    """
    if not 0.0 < min_coverage <= 1.0:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    coverage = token_coverage(mask, grid, rows, cols)
    return (coverage >= min_coverage - 1e-9) & (coverage > 0)


def token_mask_to_image(
    token_mask: torch.Tensor,
    size: tuple[int, int],
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """The pixels of an image of ``size`` (H, W) that belong to the selected cells: ``[g, g] -> [H, W]`` float.

    Exact inverse of :func:`pool_token_mask` (same ``rows``/``cols``): pooling the result gives ``token_mask`` back
    (cells no pixel falls into excepted).
    """
    grid = token_mask.shape[0]
    rows = cell_index(size[0], grid, token_mask.device) if rows is None else rows.to(token_mask.device)
    cols = cell_index(size[1], grid, token_mask.device) if cols is None else cols.to(token_mask.device)
    picked = token_mask[rows.clamp(min=0)][:, cols.clamp(min=0)] & (rows >= 0)[:, None] & (cols >= 0)[None, :]
    return picked.to(torch.float32)


def select_reference_tokens(feature: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Columns of a reference feature map where the token mask is set, in raster order.

    Args:
        feature: ``[C, r, r]`` reference feature (SD ``up_blocks[1]`` output, ensemble mean).
        token_mask: ``[r, r]`` bool.

    Returns:
        ``[K, C]`` reference tokens, K = number of set cells.
    """
    if feature.ndim != 3 or tuple(feature.shape[1:]) != tuple(token_mask.shape):
        raise ValueError(
            f"select_reference_tokens expects feature [C, r, r] and token_mask [r, r] on the same grid, got "
            f"{tuple(feature.shape)} and {tuple(token_mask.shape)}."
        )
    channels = feature.shape[0]
    return feature.reshape(channels, -1)[:, token_mask.reshape(-1).to(feature.device)].T.contiguous()


def guidance_map(
    reference_tokens: torch.Tensor, target_features: torch.Tensor, token_norm: torch.nn.LayerNorm
) -> torch.Tensor:
    """Inter-similarity: where each reference token's content lies in each target.

    For every reference token p a softmax over all target positions q of
    ``<LN(ref_p), LN(target_q)> / sqrt(C)``; the K maps are summed.

    Args:
        reference_tokens: ``[K, C]`` (K >= 1).
        target_features: ``[B, C, r, r]``.
        token_norm: LayerNorm over the C channels, shared by both sides.

    Returns:
        ``[B, 1, r, r]`` guidance map; each image's map sums to K.
    """
    batch, channels, height, width = target_features.shape
    if reference_tokens.ndim != 2 or reference_tokens.shape[1] != channels:
        raise ValueError(
            f"reference tokens must be [K, {channels}] to match the target features, got "
            f"{tuple(reference_tokens.shape)}."
        )
    queries = token_norm(reference_tokens.to(target_features.dtype))
    keys = token_norm(target_features.flatten(2).transpose(1, 2))  # [B, r*r, C]
    scale = 1.0 / math.sqrt(channels)
    total = target_features.new_zeros(batch, height * width)
    for start in range(0, queries.shape[0], _TOKEN_CHUNK):
        chunk = queries[start : start + _TOKEN_CHUNK]
        logits = torch.einsum("kc,bqc->bkq", chunk, keys) * scale
        total = total + logits.float().softmax(dim=-1).sum(dim=1).to(total.dtype)
    return total.reshape(batch, 1, height, width)


def guided_attention_volume(guidance: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Intra-similarity input: self-attention weights scaled by the guidance at each key token.

    ``V[b, qy, qx, k] = g[b, k] * A[b, qy, qx, k]`` where g is the guidance map resized to the attention grid
    (bilinear, ``align_corners=True``, as the official model does).

    Args:
        guidance: ``[B, 1, R, R]`` guidance map.
        attention: ``[B, r, r, r*r]`` head/ensemble/layer-averaged self-attention (query grid, key token).

    Returns:
        ``[B, r, r, r*r]``.
    """
    batch, side, side_w, tokens = attention.shape
    if side != side_w or tokens != side * side or guidance.shape[0] != batch:
        raise ValueError(
            f"attention must be [B, r, r, r*r] with B = {guidance.shape[0]}, got {tuple(attention.shape)}."
        )
    resized = F.interpolate(guidance, size=(side, side), mode="bilinear", align_corners=True)
    return attention * resized.reshape(batch, 1, 1, tokens).to(attention.dtype)
