"""Head-averaged self-attention probabilities, computed in query chunks, and their accumulation.

Never holds ``[batch * heads, N, N]``: each chunk of queries computes its scores, softmax (in fp32), the
attention output and the head mean, then is dropped. Memory per chunk is bounded by ``chunk_bytes``.
"""

from __future__ import annotations

import torch

from .precision import autocast_disabled
from .sites import LEVELS, sites_at

DEFAULT_CHUNK_BYTES = 256 * 1024**2  # accelerators: one chunk spans the whole batch
CPU_QUERY_ROWS = 128


def chunked_attention_with_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    per_row: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention that also returns the head-averaged probabilities.

    Args:
        query, key, value: ``[B, H, N, d]`` (same N: self-attention).
        scale: logit scale (``d ** -0.5``).
        chunk_bytes: upper bound on the fp32 score buffer of one chunk (a chunk holds at least one query).
        per_row: one batch row and at most ``CPU_QUERY_ROWS`` queries per step (cache-friendly); default: on CPUs.

    Returns:
        ``(output [B, H, N, d] in value's dtype, probabilities [B, N, N] fp32)`` where
        ``probabilities[b, q, k]`` is the mean over heads of ``softmax_k(q . k * scale)``.
    """
    batch, heads, tokens, _ = query.shape
    output = torch.empty_like(value)
    probabilities = torch.empty(batch, tokens, tokens, dtype=torch.float32, device=query.device)
    key_t = key.float().transpose(-1, -2)
    if per_row if per_row is not None else query.device.type == "cpu":
        # Cache-sized steps (one batch row, CPU_QUERY_ROWS queries) run ~2.5x faster on CPUs than big chunks.
        row_groups = [slice(row, row + 1) for row in range(batch)]
        rows_per_chunk = max(1, min(CPU_QUERY_ROWS, chunk_bytes // (4 * heads * tokens)))
    else:
        row_groups = [slice(0, batch)]
        rows_per_chunk = max(1, chunk_bytes // (4 * batch * heads * tokens))
    for rows in row_groups:
        for start in range(0, tokens, rows_per_chunk):
            stop = min(start + rows_per_chunk, tokens)
            with autocast_disabled(query.device.type):  # scores and softmax in fp32, also under autocast
                scores = torch.matmul(query[rows, :, start:stop].float(), key_t[rows]) * scale
                weights = scores.softmax(dim=-1)
            probabilities[rows, start:stop] = weights.mean(dim=1)
            output[rows, :, start:stop] = torch.matmul(weights.to(value.dtype), value[rows])
    return output, probabilities


class AttentionAccumulator:
    """Sums head-averaged attention maps over ensemble copies and layers, per image and level.

    Rows of the UNet batch are image-major: row ``i * E + e`` is ensemble copy e of image i.
    """

    def __init__(self, num_images: int, ensemble_size: int) -> None:
        self.num_images = num_images
        self.ensemble_size = ensemble_size
        self._sums: dict[str, torch.Tensor] = {}
        self._layers: dict[str, int] = {level: 0 for level in LEVELS}

    def add(self, level: str, probabilities: torch.Tensor) -> None:
        """Add one layer's ``[n * E, N, N]`` head-averaged probabilities (summed in fp32, whatever their dtype)."""
        rows, tokens, _ = probabilities.shape
        if rows != self.num_images * self.ensemble_size:
            raise ValueError(
                f"attention batch has {rows} rows, expected {self.num_images} images x {self.ensemble_size} "
                "ensemble copies"
            )
        # fp32 before summing: a backend computing in fp16 must not round the ensemble/layer sums.
        per_image = probabilities.float().view(self.num_images, self.ensemble_size, tokens, tokens).sum(dim=1)
        if level in self._sums:
            self._sums[level] += per_image
        else:
            self._sums[level] = per_image
        self._layers[level] += 1

    def maps(self) -> dict[str, torch.Tensor]:
        """Mean maps per level as ``[n, r, r, r*r]`` (query grid, key token)."""
        result = {}
        for level in LEVELS:
            expected = len(sites_at(level))
            if self._layers[level] != expected:
                raise RuntimeError(
                    f"recorded {self._layers[level]} attention layers at the {level} level, expected {expected}; "
                    "the UNet does not have the SD 2.x layout the attention-site table describes"
                )
            summed = self._sums[level]
            side = round(summed.shape[-1] ** 0.5)
            mean = summed / (self.ensemble_size * expected)
            result[level] = mean.view(self.num_images, side, side, side * side)
        return result
