"""The feature-backend contract and the feature-extraction recipe built on it.

A backend wraps a frozen SD 2.x model (diffusers here; ComfyUI's ModelPatcher in the node pack) and exposes the
three things IconMatting needs: the VAE posterior, the noise schedule and the UNet pass with recording at the
sites of :mod:`icm_core.features.sites`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..config import ExtractionConfig
from ..types import UNetFeatures
from .attention import AttentionAccumulator
from .noise import LatentDistribution, ensemble_noisy_latents


@runtime_checkable
class FeatureBackend(Protocol):
    """A frozen SD 2.x feature extractor.

    Attributes:
        device: where tensors are computed.
        dtype: compute dtype of the UNet.
        feature_channels: channels of the recorded UNet features (1280 for SD 2.1).
    """

    device: torch.device
    dtype: torch.dtype
    feature_channels: int

    def latent_distribution(self, images: torch.Tensor) -> LatentDistribution:
        """VAE posterior of ``[n, 3, S, S]`` images in [-1, 1], scaled to UNet latent units."""

    def alpha_bar(self, timestep: int) -> float:
        """ᾱ_t of the model's noise schedule."""

    def unet_features(
        self, noisy_latents: torch.Tensor, timestep: int, ensemble_size: int, record_attention: bool
    ) -> UNetFeatures:
        """Run the UNet once on ``[n * E, 4, h, w]`` image-major rows; ensemble-averaged outputs of n images."""

    def fingerprint(self) -> str:
        """A short string identifying the weights (contexts from another model are refused)."""

    def place_decoder(self, decoder: torch.nn.Module) -> torch.device:
        """Make the decoder ready to run next to the features (move or load it); return its device."""


def extract_features(
    backend: FeatureBackend,
    images: torch.Tensor,
    config: ExtractionConfig,
    seed: int,
    record_attention: bool,
) -> UNetFeatures:
    """Images -> VAE posterior -> E noisy latents each at t -> one UNet pass -> averaged features.

    Args:
        images: ``[n, 3, S, S]`` in [-1, 1], S = ``config.image_size``.
        record_attention: also return the attention maps (needed for targets, not for references).
    """
    with torch.no_grad():
        distribution = backend.latent_distribution(images.to(backend.device))
        noisy = ensemble_noisy_latents(
            distribution, backend.alpha_bar(config.timestep), config.ensemble_size, seed
        )
        return backend.unet_features(
            noisy.to(backend.dtype), config.timestep, config.ensemble_size, record_attention
        )


def ensemble_features(
    outputs: dict[str, torch.Tensor], accumulator: AttentionAccumulator, record_attention: bool
) -> UNetFeatures:
    """Recorded per-row block outputs (``{"low": [n*E, C, r, r], "high": ...}``, image-major) and attention sums ->
    the ensemble-averaged :class:`UNetFeatures` of the n images, fp32 (both backends end their UNet pass with this)."""
    images, ensemble = accumulator.num_images, accumulator.ensemble_size

    def mean(level: str) -> torch.Tensor:
        value = outputs[level].float()  # fp32 before averaging, whatever dtype the UNet computed in
        return value.view(images, ensemble, *value.shape[1:]).mean(dim=1)

    maps = accumulator.maps() if record_attention else {}
    return UNetFeatures(
        low=mean("low"), high=mean("high"), attention_low=maps.get("low"), attention_high=maps.get("high")
    )
