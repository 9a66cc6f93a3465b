"""Frozen configuration objects.

The defaults are the values of the released IconMatting model (``config/eval.yaml`` of the official code):
768x768 images, SD 2.1 features with 1280 channels, attention maps at 24x24 and 48x48 tokens, timestep 200 and an
ensemble of 4 noisy copies per image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

# Attention maps and matting features come at two token grids: the image side divided by these factors.
# At 768 px: 768 / 32 = 24 (SD ``up_blocks[0]`` output) and 768 / 16 = 48 (``up_blocks[1]`` output).
LOW_LEVEL_STRIDE = 32
HIGH_LEVEL_STRIDE = 16


@dataclass(frozen=True)
class DecoderConfig:
    """Widths of the in-context decoder (official field names in brackets).

    Attributes:
        feature_channels: channels C of the UNet features (``in_ft_dim``, ``use_norm``); 1280 for SD 2.1.
        image_size: side S of the square image the decoder works at; fixes the attention grids
            (S/32 and S/16) and therefore the LayerNorm widths (S/32)^2 and (S/16)^2 (``in_attn_dim``).
        attention_channels: output channels of the intra-similarity convolutions (``attn_out_dim``).
        projected_channels: width F of the projected UNet features (``ft_out_dim``).
        detail_channels: widths of the image conv stream at S/2, S/4, S/8. Fixed at (48, 96, 192) in the
            released model (the official constructor ignores its argument for this).
        fusion_channels: output widths of the four detail-fusion steps (``fusion_out``).
        head_channels: hidden width of the matting head.
    """

    feature_channels: int = 1280
    image_size: int = 768
    attention_channels: int = 256
    projected_channels: int = 320
    detail_channels: tuple[int, int, int] = (48, 96, 192)
    fusion_channels: tuple[int, int, int, int] = (256, 128, 64, 32)
    head_channels: int = 16

    def __post_init__(self) -> None:
        if self.image_size % LOW_LEVEL_STRIDE != 0 or self.image_size < 2 * LOW_LEVEL_STRIDE:
            raise ValueError(
                f"DecoderConfig.image_size must be a multiple of {LOW_LEVEL_STRIDE} and at least "
                f"{2 * LOW_LEVEL_STRIDE}, got {self.image_size}. The released model uses 768."
            )
        object.__setattr__(self, "detail_channels", tuple(self.detail_channels))
        object.__setattr__(self, "fusion_channels", tuple(self.fusion_channels))
        if len(self.detail_channels) != 3 or len(self.fusion_channels) != 4:
            raise ValueError(
                "DecoderConfig expects 3 detail_channels and 4 fusion_channels, got "
                f"{self.detail_channels} and {self.fusion_channels}."
            )

    @property
    def attention_resolutions(self) -> tuple[int, int]:
        """Token grid sides (low, high): (24, 48) at 768 px."""
        return (self.image_size // LOW_LEVEL_STRIDE, self.image_size // HIGH_LEVEL_STRIDE)


@dataclass(frozen=True)
class ExtractionConfig:
    """How the frozen SD UNet is run to get features (paper: one noisy pass, t=200, ensemble of 4).

    Attributes:
        timestep: DDPM timestep t of the single noisy pass (0 <= t < 1000).
        ensemble_size: E noisy copies per image (independent VAE posterior sample and noise each);
            features and attention maps are averaged over them.
        image_size: side of the square the images are resized to; must equal the decoder's image_size.
    """

    timestep: int = 200
    ensemble_size: int = 4
    image_size: int = 768

    def __post_init__(self) -> None:
        if not 0 <= self.timestep < 1000:
            raise ValueError(f"timestep must be in [0, 999], got {self.timestep}. The paper uses 200.")
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {self.ensemble_size}. The paper uses 4.")
        if self.image_size % LOW_LEVEL_STRIDE != 0:
            raise ValueError(
                f"image_size must be a multiple of {LOW_LEVEL_STRIDE}, got {self.image_size}."
            )

    @property
    def attention_resolutions(self) -> tuple[int, int]:
        return (self.image_size // LOW_LEVEL_STRIDE, self.image_size // HIGH_LEVEL_STRIDE)


def config_fingerprint(*parts: object) -> str:
    """A short stable hash of dataclasses / strings, used to tie a reference context to its model."""
    payload = []
    for part in parts:
        payload.append(dataclasses.asdict(part) if dataclasses.is_dataclass(part) else str(part))
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
