"""The demo model's feature extractor: the tiny SD 2.x-layout UNet + KL VAE with *constructed* weights.

A seeded random tiny UNet and VAE (:func:`icm_core.tiny.build_tiny_backend`) mix colour and position so thoroughly
that their features cannot tell the scenes' categories apart (``docs/quality.md``, *Feature extractor*: reference-token
ROC AUC 0.68), so a decoder trained on them mattes "the objects", never "this thing" (constructed: 0.88). A real SD 2.1 UNet learned
features where "the same thing" looks alike; the tiny demo model cannot learn them, so it gets them by construction,
in the unchanged architecture (same modules, same sites, same code path as the real model):

* **VAE encoder** = a colour transform and 8x8 average pooling. Latent channels (in UNet units, RGB in [0, 1]):
  ``GAIN * (luma - 1/2)``, ``GAIN * (red - green)``, ``GAIN * ((red + green) / 2 - blue)`` and
  ``GAIN * contrast`` (how far the luma departs from its 3x3 mean, relative to the image's typical departure);
  posterior std ~ 0.
  Residual branches are zero except the one that measures the contrast; every GroupNorm that the signal passes
  sees each signal channel next to its own negative and a pair of large constants, so it neither shifts the signal
  nor rescales it per image.
* **UNet** = the latent embedded in the 32/48 channels by seeded orthonormal matrices (inner products kept), 2x2
  average pooling at every downsampler, copies at the upsamplers, each up block passing its skip connection on
  (so every level holds the pooled latent of its own resolution), and residual branches zero. Self-attention
  layers keep their place and are recorded as usual, with query = key = the normalised tokens: attention
  probabilities are a softmax of colour/contrast similarity (what IconMatting's intra-similarity propagates).
  The t = 200 noise of the recipe still goes through it, averaged by the ensemble.

What remains random (seeded): the embedding matrices, values, cross-attention and the empty-prompt stand-in, none
of which reaches a recorded output. It is a feature extractor for the demo scenes, not a diffusion model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..features.diffusers_backend import DiffusersFeatureBackend
from ..tiny import build_tiny_backend

# Latent units per unit of colour difference: category colours differ by ~0.3, so ~1 latent unit, against the
# sqrt(1 - alpha_bar_200) ~ 0.57 of noise per latent pixel (pooled 4x4 at the guidance level: ~0.14).
GAIN = 3.0
# Large constants that make GroupNorm's per-image statistics independent of the signal (see module docstring).
_ANCHOR = 100.0
# Shift that keeps SiLU in its linear range after the VAE's last GroupNorm.
_SILU_SHIFT = 20.0
# Weight of the constant direction in the UNet embedding (keeps grey, zero-latent tokens away from the origin).
_CONSTANT = 1.0
# Relative contrast: SiLU(k d) + SiLU(-k d) with d normalised per image; weight brings it to ~colour scale.
_CONTRAST_SHARPNESS = 3.0
_CONTRAST_WEIGHT = 0.15
_SIGNALS = 4  # luma, red-green, yellow-blue, contrast


def build_demo_backend(seed: int = 0, device: str | torch.device = "cpu") -> DiffusersFeatureBackend:
    """The demo feature extractor (see the module docstring): tiny SD 2.x layout, constructed weights, fp32."""
    backend = build_tiny_backend(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        _construct_vae(backend.vae.encoder, backend.vae.quant_conv, backend.vae.config.scaling_factor)
        _construct_unet(backend.unet, generator)
    return DiffusersFeatureBackend(backend.unet.to(device), backend.vae.to(device), backend.prompt.to(device))


# ------------------------------------------------------------------------------------------------------ helpers


def _set_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Set a convolution to the ``[out, in]`` channel map ``weight`` at its centre tap (a per-pixel linear map)."""
    conv.weight.zero_()
    k_h, k_w = conv.weight.shape[2:]
    conv.weight[:, :, k_h // 2, k_w // 2] = weight
    if conv.bias is not None:
        conv.bias.copy_(bias if bias is not None else torch.zeros(conv.out_channels))


def _set_average_pool(conv: nn.Conv2d, first_tap: int) -> None:
    """A stride-2 3x3 convolution -> per-channel 2x2 average (taps ``first_tap`` and ``first_tap + 1``)."""
    conv.weight.zero_()
    channels = torch.arange(conv.out_channels)
    for y in (first_tap, first_tap + 1):
        for x in (first_tap, first_tap + 1):
            conv.weight[channels, channels, y, x] = 0.25
    conv.bias.zero_()


def _silence(layer: nn.Module) -> None:
    """Zero a linear or convolution layer's weight and bias: the branch it ends adds nothing."""
    layer.weight.zero_()
    if layer.bias is not None:
        layer.bias.zero_()


def _zero_residual(block: nn.Module) -> None:
    """A ResnetBlock2D whose residual branch adds nothing: output = shortcut(input)."""
    _silence(block.conv2)


# ---------------------------------------------------------------------------------------------------------- VAE

# Channel layout of the VAE encoder's 8-channel stage: +/-luma, +/-(r-g), +/-(yellow-blue), +/-anchor; the first
# resnet's residual branch adds the contrast to channel 6 (the +anchor).


def _colour_rows() -> torch.Tensor:
    """``[3, 3]`` colour transform of RGB in [0, 1]: luma, red - green, (red + green) / 2 - blue."""
    third = 1.0 / 3.0
    return torch.tensor([[third, third, third], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])


def _construct_vae(encoder: nn.Module, quant_conv: nn.Conv2d, scaling_factor: float) -> None:
    # conv_in: images in [-1, 1] -> rgb = (x + 1) / 2 -> [luma, -luma, rg, -rg, yb, -yb, A, -A].
    colour = _colour_rows() * 0.5  # of x in [-1, 1]
    offset = _colour_rows().sum(dim=1) * 0.5  # rgb = x/2 + 1/2
    offset[0] -= 0.5  # luma centred on mid-grey
    weight, bias = torch.zeros(8, 3), torch.zeros(8)
    for index in range(3):
        weight[2 * index], bias[2 * index] = colour[index], offset[index]
        weight[2 * index + 1], bias[2 * index + 1] = -colour[index], -offset[index]
    bias[6], bias[7] = _ANCHOR, -_ANCHOR
    _set_conv(encoder.conv_in, weight, bias)
    _construct_contrast(encoder.down_blocks[0].resnets[0])
    for block in encoder.down_blocks:
        for resnet in block.resnets:
            if resnet is not encoder.down_blocks[0].resnets[0]:
                _zero_residual(resnet)
        for down in block.downsamplers or ():
            _set_average_pool(down.conv, first_tap=0)  # Downsample2D pads right/bottom; taps 0-1 never reach it
    # 8 -> 16 -> 32 channels: four GroupNorm groups of [s, -s, A, -A] for s in luma, rg, yb, contrast.
    _set_conv(encoder.down_blocks[1].resnets[0].conv_shortcut, _grouped_layout(8, 16))
    _set_conv(encoder.down_blocks[2].resnets[0].conv_shortcut, _grouped_layout(16, 32))
    for resnet in encoder.mid_block.resnets:
        _zero_residual(resnet)
    for attention in encoder.mid_block.attentions:
        _silence(attention.to_out[0])
    # GroupNorm of [s, -s, A, -A]: mean 0, std ~ A / sqrt(2) -> weight A / sqrt(2) gives s back; shift for SiLU.
    norm = encoder.conv_norm_out
    norm.weight.fill_(_ANCHOR / 2**0.5)
    norm.bias.fill_(_SILU_SHIFT)
    # conv_out -> [mean(4), logvar(4)] in VAE units (the backend multiplies the mean by scaling_factor).
    weight, bias = torch.zeros(8, 32), torch.zeros(8)
    for signal in range(_SIGNALS):
        weight[signal, 4 * signal] = GAIN / scaling_factor
        bias[signal] = -_SILU_SHIFT * GAIN / scaling_factor
    bias[_SIGNALS:] = -30.0  # log-variance at diffusers' lower clamp: std ~ 3e-7
    _set_conv(encoder.conv_out, weight, bias)
    _set_conv(quant_conv, torch.eye(8))


def _grouped_layout(in_channels: int, out_channels: int) -> torch.Tensor:
    """``[out, in]`` map from the previous layout to ``[s0, -s0, A, -A, s1, -s1, A, -A, ...]`` (zeros after).

    8-channel input: ``[luma, -luma, rg, -rg, yb, -yb, A + contrast, -A]`` (the first resnet adds the contrast to
    channel 6, see :func:`_construct_contrast`). 16/32-channel input: already grouped, copied.
    """
    weight = torch.zeros(out_channels, in_channels)
    if in_channels == 8:
        for signal in range(3):
            weight[4 * signal, 2 * signal], weight[4 * signal + 1, 2 * signal + 1] = 1.0, 1.0
        # contrast group: (ch6 - ch6') ... ch6 = A + c, ch7 = -A: c = ch6 + ch7.
        weight[12, 6], weight[12, 7] = 1.0, 1.0
        weight[13, 6], weight[13, 7] = -1.0, -1.0
        for group in range(4):  # anchors: A = -ch7, -A = ch7
            weight[4 * group + 2, 7], weight[4 * group + 3, 7] = -1.0, 1.0
    else:
        weight[: min(in_channels, out_channels), : min(in_channels, out_channels)] = torch.eye(
            min(in_channels, out_channels)
        )
    return weight


def _construct_contrast(resnet: nn.Module) -> None:
    """First VAE resnet: add the luma's relative local contrast to channel 6 (next to the anchor).

    norm1 (one channel per group) gives the luma normalised per image, ``n``; a small weight keeps SiLU in its
    linear range (SiLU(e n) ~ e n / 2), conv1 undoes the scale and computes ``d = n - mean3x3(n)`` and ``-d``;
    norm2 normalises ``d`` per image and SiLU(k d) + SiLU(-k d) = k d tanh(k d / 2) ~ |k d| measures how much
    rougher a pixel is than the image's average; conv2 adds it to channel 6.
    """
    small = 0.01
    resnet.norm1.weight.fill_(small)
    resnet.norm1.bias.zero_()
    weight = torch.zeros_like(resnet.conv1.weight)
    weight[0, 0] = -1.0 / 9.0
    weight[0, 0, 1, 1] += 1.0
    weight[0, 0] *= 2.0 / small
    weight[1, 0] = -weight[0, 0]
    resnet.conv1.weight.copy_(weight)
    resnet.conv1.bias.zero_()
    resnet.norm2.weight.fill_(_CONTRAST_SHARPNESS)
    resnet.norm2.bias.zero_()
    conv2 = torch.zeros_like(resnet.conv2.weight)
    conv2[6, 0, 1, 1] = conv2[6, 1, 1, 1] = _CONTRAST_WEIGHT
    resnet.conv2.weight.copy_(conv2)
    resnet.conv2.bias.zero_()


# --------------------------------------------------------------------------------------------------------- UNet


def _orthonormal_columns(rows: int, columns: int, generator: torch.Generator) -> torch.Tensor:
    """A seeded ``[rows, columns]`` matrix with orthonormal columns."""
    q, r = torch.linalg.qr(torch.randn(rows, columns, generator=generator))
    return q * torch.sign(torch.diagonal(r))[None, :]


def _construct_unet(unet: nn.Module, generator: torch.Generator) -> None:
    widths = unet.config.block_out_channels  # (32, 48, 48, 48)
    latent = unet.config.in_channels
    # The signal lives in a (latent + 1)-dimensional subspace: the latent and one constant direction.
    embed_first = _orthonormal_columns(widths[0], latent + 1, generator)
    _set_conv(unet.conv_in, embed_first[:, :latent], embed_first[:, latent] * _CONSTANT)
    lift = {width: _orthonormal_columns(width, widths[0], generator) for width in set(widths[1:]) if width != widths[0]}

    def shortcut_map(in_width: int, out_width: int) -> torch.Tensor:
        if in_width == out_width:
            return torch.eye(out_width)
        if in_width != widths[0]:
            raise ValueError(f"the demo extractor expects width changes from {widths[0]} only, got {in_width} -> {out_width}")
        return lift[out_width]

    for block in unet.down_blocks:
        for resnet in block.resnets:
            _zero_residual(resnet)
            if resnet.conv_shortcut is not None:
                _set_conv(resnet.conv_shortcut, shortcut_map(resnet.in_channels, resnet.out_channels))
        for down in block.downsamplers or ():
            _set_average_pool(down.conv, first_tap=1)  # padding 1 on every side; taps 1-2 cover rows 2i, 2i+1
        for transformer in getattr(block, "attentions", None) or ():
            _construct_transformer(transformer)
    for resnet in unet.mid_block.resnets:
        _zero_residual(resnet)
    for transformer in unet.mid_block.attentions:
        _construct_transformer(transformer)
    skip_widths = _skip_widths(unet)
    for block in unet.up_blocks:
        for resnet in block.resnets:
            _zero_residual(resnet)
            skip = skip_widths.pop()
            hidden = resnet.in_channels - skip
            weight = torch.zeros(resnet.out_channels, resnet.in_channels)
            weight[:, hidden:] = shortcut_map(skip, resnet.out_channels)  # pass the skip connection on
            _set_conv(resnet.conv_shortcut, weight)
        for up in block.upsamplers or ():
            _set_conv(up.conv, torch.eye(up.conv.out_channels))  # nearest 2x, then a copy
        for transformer in getattr(block, "attentions", None) or ():
            _construct_transformer(transformer)


def _skip_widths(unet: nn.Module) -> list[int]:
    """Channel widths of the skip connections in the order the down path stores them (the up path pops)."""
    widths = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        widths += [resnet.out_channels for resnet in block.resnets]
        widths += [down.conv.out_channels for down in block.downsamplers or ()]
    return widths


def _construct_transformer(transformer: nn.Module) -> None:
    """Identity block (output projection zero) whose self-attention compares normalised tokens (query = key)."""
    _silence(transformer.proj_out)
    channels = transformer.proj_in.in_features
    transformer.proj_in.weight.copy_(torch.eye(channels))
    transformer.proj_in.bias.zero_()
    for block in transformer.transformer_blocks:
        attention = block.attn1
        for projection in (attention.to_q, attention.to_k):
            projection.weight.copy_(torch.eye(projection.out_features, projection.in_features))
            if projection.bias is not None:
                projection.bias.zero_()
