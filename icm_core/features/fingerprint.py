"""A backend-independent identity of the SD weights that features come from.

Both feature backends hash the same tensors (:data:`~icm_core.features.sites.IDENTITY_WEIGHTS`, named in each
layout), rounded to float16 first, so the fingerprint depends on the weights, not on the backend or on whether the
UNet was loaded in float32 or float16. (A UNet loaded in bfloat16 has other weights and another fingerprint.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

VALUES_PER_TENSOR = 65536  # enough to tell models apart; cheap even for 1280x1280x3x3 kernels


def weights_fingerprint(tensors: Sequence[torch.Tensor]) -> str:
    """16 hex digits identifying ``tensors`` (shapes + their first values rounded to float16)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(repr(tuple(tensor.shape)).encode())
        values = tensor.detach().flatten()[:VALUES_PER_TENSOR].to(torch.float16).cpu()
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]
