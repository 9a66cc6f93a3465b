"""The in-context decoder always computes in fp32, whatever dtype the UNet features come in."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import torch

from ..features.precision import autocast_disabled
from ..modeling.decoder import InContextDecoder
from ..types import UNetFeatures

logger = logging.getLogger(__name__)

DECODER_DTYPE = torch.float32  # the decoder always computes in fp32 (see docs/benchmarks.md, Precision)


def decode_alpha(
    decoder: InContextDecoder,
    tokens: torch.Tensor,
    features: UNetFeatures,
    images: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Run the decoder in fp32 on ``device``, whatever dtype the features came in.

    Args:
        decoder: an fp32 :class:`InContextDecoder` already on ``device``.
        tokens: ``[K, C]`` reference tokens.
        features: :class:`UNetFeatures` of n targets with attention maps (any float dtype, any device).
        images: ``[n, 3, S, S]`` targets in [-1, 1].

    Returns:
        ``[n, 1, S, S]`` fp32 alpha in [0, 1].
    """
    features = cast_features(features, device, DECODER_DTYPE)
    tokens, images = tokens.to(device, DECODER_DTYPE), images.to(device, DECODER_DTYPE)
    # On CPUs the decoder runs image by image: same speed, a third of the working memory at 768 px.
    step = 1 if device.type == "cpu" else images.shape[0]
    alphas = []
    with torch.no_grad(), autocast_disabled(device.type):  # fp32 even inside a caller's autocast
        for start in range(0, images.shape[0], step):
            part = slice_features(features, slice(start, start + step))
            alphas.append(decoder(tokens, part, images[start : start + step]).alpha)
    return torch.cat(alphas)


def fp32_decoder(decoder: InContextDecoder) -> InContextDecoder:
    """The decoder in fp32: lower precision moves the alpha by up to 0.11 (released decoder, bf16) for ~2 % of
    the time, so it always runs in fp32; a decoder given in another dtype is converted, with a note."""
    dtypes = {tensor.dtype for tensor in decoder.state_dict().values() if tensor.is_floating_point()}
    if dtypes - {DECODER_DTYPE}:
        logger.warning(
            "the in-context decoder was given in %s; it runs in fp32 (fp16/bf16 visibly change the matte for "
            "about 2%% of the time), converting it.", ", ".join(sorted(str(d) for d in dtypes))
        )
        decoder = decoder.to(DECODER_DTYPE)
    return decoder


def cast_features(features: UNetFeatures, device: torch.device, dtype: torch.dtype) -> UNetFeatures:
    """``features`` with every tensor (features and attention maps) on ``device`` in ``dtype``."""
    return dataclasses.replace(
        features,
        low=features.low.to(device, dtype),
        high=features.high.to(device, dtype),
        attention_low=features.attention_low.to(device, dtype),
        attention_high=features.attention_high.to(device, dtype),
    )


def slice_features(features: UNetFeatures, rows: slice) -> UNetFeatures:
    """The targets ``rows`` (batch dimension) of ``features``."""
    return UNetFeatures(
        low=features.low[rows],
        high=features.high[rows],
        attention_low=features.attention_low[rows],
        attention_high=features.attention_high[rows],
    )


def module_digest(module: torch.nn.Module) -> str:
    """A short digest of a module's weights (names + the first 1024 values of each tensor), for fingerprints."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().flatten()[:1024].to(torch.float16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
