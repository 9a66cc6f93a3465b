"""Reduced-precision policy for the frozen SD UNet and VAE (the decoder always runs in fp32).

Measured on the official golden vectors (``docs/benchmarks.md``, *Precision*): with fp16 the alpha stays within
5e-3 of the fp32 result; with bf16 (8-bit mantissa) the features drift by up to 2.8e-2 and the alpha by 2e-2 or
more, and keeping normalisations, residual sums or the attention softmax in fp32 does not bring it back (what
drifts is the rounding of every convolution's and projection's inputs). So bf16 is not offered: a request for it
runs in fp16, with a logged note.

What stays fp32 in every mode:
    * GroupNorm / LayerNorm (statistics, normalisation and affine) — :func:`fp32_normalisations`;
    * the recorded attention scores and softmax (``attention.py``), head/ensemble/layer sums of the maps;
    * the ensemble average of the feature outputs (``backend.ensemble_features`` casts before summing);
    * the VAE posterior moments.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

REDUCED_PRECISIONS = (torch.float16,)  # lower-precision compute dtypes that keep alpha within 5e-3 of fp32
_NORMALISATIONS = (nn.GroupNorm, nn.LayerNorm)


def resolve_compute_dtype(dtype: torch.dtype | None, what: str) -> torch.dtype | None:
    """The dtype a requested UNet/VAE precision actually runs in: fp32 and fp16 as asked, bf16 as fp16.

    Args:
        dtype: requested dtype (``None``: no autocast).
        what: what the dtype is for, for the log note and errors (e.g. ``"autocast"``).
    """
    if dtype is None or dtype == torch.float32 or dtype in REDUCED_PRECISIONS:
        return dtype
    if dtype == torch.bfloat16:
        logger.warning(
            "%s bf16 runs as fp16: bf16 moves the alpha by up to 2e-2 from the fp32 result, fp16 stays within "
            "5e-3 (see docs/benchmarks.md, Precision).", what
        )
        return torch.float16
    raise ValueError(f"{what} precision must be fp32, fp16 or bf16 (runs as fp16), got {dtype}.")


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A region where a caller's autocast does not apply (fp32 stays fp32).

    Devices without autocast (``meta``, used to count FLOPs) have nothing to disable: a null context there.
    """
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _fp32_forward(module: nn.Module):
    """A forward for a GroupNorm/LayerNorm that computes in fp32 (outside autocast) and returns fp32."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight = None if module.weight is None else module.weight.float()
        bias = None if module.bias is None else module.bias.float()
        with autocast_disabled(x.device.type):
            if isinstance(module, nn.GroupNorm):
                return F.group_norm(x.float(), module.num_groups, weight, bias, module.eps)
            return F.layer_norm(x.float(), module.normalized_shape, weight, bias, module.eps)

    return forward


@contextlib.contextmanager
def fp32_normalisations(*models: nn.Module, enabled: bool = True) -> Iterator[None]:
    """While active, every GroupNorm/LayerNorm inside ``models`` computes in fp32 and returns fp32.

    Each norm's own ``forward`` is restored on exit, so a shared model is left as it was. With ``enabled=False``
    (fp32 weights, no autocast) nothing is touched and results stay bit-identical.
    """
    patched: list[nn.Module] = []
    try:
        if enabled:
            for model in models:
                for module in model.modules():
                    if isinstance(module, _NORMALISATIONS) and "forward" not in module.__dict__:
                        module.forward = _fp32_forward(module)
                        patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward
