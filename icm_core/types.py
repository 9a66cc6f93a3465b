"""Frozen data passed between the layers of icm_core (features -> decoder -> pipeline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class UNetFeatures:
    """Ensemble-averaged SD UNet outputs for ``n`` images of side S (float, on the compute device).

    Attributes:
        low: ``up_blocks[0]`` output after its upsampler, ``[n, C, S/32, S/32]`` (C = 1280 for SD 2.1).
        high: ``up_blocks[1]`` output after its upsampler, ``[n, C, S/16, S/16]``.
        attention_low: self-attention probabilities averaged over heads, ensemble copies and the layers of the
            S/32 token grid, ``[n, r, r, r*r]`` with r = S/32: ``[i, qy, qx, k]`` is the weight of key token
            ``k`` (raster order ``y*r + x``) for query position (qy, qx); each ``[i, qy, qx, :]`` sums to 1.
            ``None`` when attention was not recorded (reference images).
        attention_high: the same for the S/16 grid, ``[n, R, R, R*R]`` with R = S/16.
    """

    low: torch.Tensor
    high: torch.Tensor
    attention_low: torch.Tensor | None = None
    attention_high: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        return self.high.shape[0]


@dataclass(frozen=True)
class DecoderOutput:
    """What the in-context decoder returns for a batch of B targets at side S.

    Attributes:
        alpha: matte in [0, 1], ``[B, 1, S, S]``.
        logits: pre-sigmoid alpha, ``[B, 1, S, S]``.
        guidance_map: inter-similarity map, ``[B, 1, S/16, S/16]``; the sum over the K reference tokens of a
            softmax over target positions, so it sums to K per image (not a probability map).
        intermediates: named intermediate tensors (only filled when asked for, for debugging and parity tests).
    """

    alpha: torch.Tensor
    logits: torch.Tensor
    guidance_map: torch.Tensor
    intermediates: dict[str, torch.Tensor]
