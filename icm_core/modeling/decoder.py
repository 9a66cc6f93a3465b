"""The in-context decoder: inter/intra-similarity, two-scale fusion, detail capture and matting head.

Our module names are our own; ``key_table.py`` maps them one to one onto the official checkpoint keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from ..types import DecoderOutput, UNetFeatures
from .similarity import guidance_map, guided_attention_volume


class ConvBNReLU(nn.Module):
    """3x3 convolution (no bias) -> BatchNorm -> ReLU; ``[B, in, H, W] -> [B, out, H/stride, W/stride]``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class IntraSimilarity(nn.Module):
    """Guided self-attention volume -> LayerNorm over key tokens -> ReLU -> 3x3 conv.

    ``[B, r, r, r*r]`` (query grid, key token) -> ``[B, attention_channels, r, r]``.
    """

    def __init__(self, grid: int, attention_channels: int) -> None:
        super().__init__()
        self.key_norm = nn.LayerNorm(grid * grid)
        self.conv = nn.Conv2d(grid * grid, attention_channels, 3, 1, 1, bias=False)

    def forward(self, guidance: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        volume = F.relu(self.key_norm(guided_attention_volume(guidance, attention)))
        return self.conv(volume.permute(0, 3, 1, 2))


class MattingHead(nn.Module):
    """conv3x3 (bias) -> BN -> ReLU -> conv1x1 (bias): ``[B, in, S, S] -> [B, 1, S, S]`` logits."""

    def __init__(self, in_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden_channels, 3, 1, 1)
        self.bn = nn.BatchNorm2d(hidden_channels)
        self.out = nn.Conv2d(hidden_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.bn(self.conv(x))))


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class InContextDecoder(nn.Module):
    """IconMatting's decoder. Runs in eval mode (BatchNorm with running statistics).

    Inputs of :meth:`forward`:
        reference_tokens: ``[K, C]`` reference RoI tokens (K >= 1), raw UNet features (not normalised).
        features: :class:`UNetFeatures` of B targets with attention maps.
        images: ``[B, 3, S, S]`` target images in [-1, 1].
    """

    def __init__(self, config: DecoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DecoderConfig()
        grids = config.attention_resolutions
        channels, projected, attn = config.feature_channels, config.projected_channels, config.attention_channels
        self.token_norm = nn.LayerNorm(channels)
        self.intra_similarity = nn.ModuleList(IntraSimilarity(grid, attn) for grid in grids)
        self.feature_projection = nn.ModuleList(ConvBNReLU(channels, projected) for _ in grids)
        self.attention_fusion = nn.ModuleList(ConvBNReLU(projected + attn, projected) for _ in grids)
        self.scale_fusion = ConvBNReLU(2 * projected, projected)
        stream = (3, *config.detail_channels)
        self.detail_stream = nn.ModuleList(
            ConvBNReLU(stream[i], stream[i + 1], stride=2) for i in range(len(stream) - 1)
        )
        widths = (projected, *config.fusion_channels)
        self.detail_fusion = nn.ModuleList(
            ConvBNReLU(widths[j] + stream[-(j + 1)], widths[j + 1]) for j in range(len(config.fusion_channels))
        )
        self.matting_head = MattingHead(config.fusion_channels[-1], config.head_channels)
        self.eval()

    def forward(
        self,
        reference_tokens: torch.Tensor,
        features: UNetFeatures,
        images: torch.Tensor,
        return_intermediates: bool = False,
    ) -> DecoderOutput:
        self._check_inputs(reference_tokens, features, images)
        record: dict[str, torch.Tensor] = {}
        guidance = guidance_map(reference_tokens, features.high, self.token_norm)
        levels = (
            ("low", features.low, features.attention_low),
            ("high", features.high, features.attention_high),
        )
        fused_levels = []
        for index, (name, feature, attention) in enumerate(levels):
            attention_feature = self.intra_similarity[index](guidance, attention.to(feature.dtype))
            projected = self.feature_projection[index](feature)
            fused = self.attention_fusion[index](torch.cat([projected, attention_feature], dim=1))
            fused_levels.append(fused)
            if return_intermediates:
                record[f"attention_feature_{name}"] = attention_feature
                record[f"projected_feature_{name}"] = projected
                record[f"fused_feature_{name}"] = fused
        low, high = fused_levels
        decoded = self.scale_fusion(torch.cat([high, _upsample2(low)], dim=1))
        if return_intermediates:
            record["scale_fused_feature"] = decoded
        details = [images.to(decoded.dtype)]
        for conv in self.detail_stream:
            details.append(conv(details[-1]))
        for step, fusion in enumerate(self.detail_fusion):
            decoded = fusion(torch.cat([details[-(step + 1)], _upsample2(decoded)], dim=1))
        logits = self.matting_head(decoded)
        return DecoderOutput(
            alpha=torch.sigmoid(logits), logits=logits, guidance_map=guidance, intermediates=record
        )

    def _check_inputs(self, tokens: torch.Tensor, features: UNetFeatures, images: torch.Tensor) -> None:
        cfg = self.config
        size = cfg.image_size
        low_grid, high_grid = cfg.attention_resolutions
        batch = features.num_images
        expected = {
            "features.low": (features.low, (batch, cfg.feature_channels, low_grid, low_grid)),
            "features.high": (features.high, (batch, cfg.feature_channels, high_grid, high_grid)),
            "features.attention_low": (features.attention_low, (batch, low_grid, low_grid, low_grid**2)),
            "features.attention_high": (features.attention_high, (batch, high_grid, high_grid, high_grid**2)),
            "images": (images, (batch, 3, size, size)),
        }
        for name, (tensor, shape) in expected.items():
            got = None if tensor is None else tuple(tensor.shape)
            if got != shape:
                raise ValueError(
                    f"In-context decoder input {name}: expected shape {shape}, got {got}. The decoder was built "
                    f"for {size}x{size} images with {cfg.feature_channels}-channel UNet features; check that the "
                    "decoder checkpoint matches the SD model and the image size."
                )
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] != cfg.feature_channels:
            raise ValueError(
                f"expected reference tokens [K >= 1, {cfg.feature_channels}], got {tuple(tokens.shape)}."
            )
