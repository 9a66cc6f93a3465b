"""NaN/Inf checks on what the model produced: a non-finite number is an error naming the image, never a black matte."""

from __future__ import annotations

import torch

from ..types import UNetFeatures


class NonFiniteRow(Exception):
    """Row ``row`` of a micro-batch holds NaN/Inf in ``what`` (the engine turns it into a NonFiniteError naming
    the target's index)."""

    def __init__(self, row: int, what: str) -> None:
        super().__init__(row, what)
        self.row, self.what = row, what


def first_non_finite_row(tensor: torch.Tensor) -> int | None:
    """Index of the first row (dim 0) of ``tensor`` holding NaN/Inf, or None."""
    bad = ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def check_features(features: UNetFeatures) -> None:
    """Raise :class:`NonFiniteRow` for the first target whose features or attention maps hold NaN/Inf."""
    for what, tensor in (
        ("UNet features", features.low),
        ("UNet features", features.high),
        ("attention maps", features.attention_low),
        ("attention maps", features.attention_high),
    ):
        row = None if tensor is None else first_non_finite_row(tensor)
        if row is not None:
            raise NonFiniteRow(row, what)


def model_non_finite(source: str, what: str) -> str:
    """The message for NaN/Inf the model produced in ``what`` (e.g. "alpha") for ``source`` (e.g. "target image 3")."""
    return (
        f"{source}: the model produced NaN/Inf in its {what}, so no matte was made (fp16 overflow? run in fp32: "
        "--dtype fp32 without --autocast, or dtype=torch.float32 when loading the engine)."
    )
