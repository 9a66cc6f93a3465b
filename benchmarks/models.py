"""Seeded random models with the SD 2.1 architecture (optionally narrowed) and synthetic benchmark inputs.

Both pipelines of the benchmark are built on the *same* module instances built here (same random weights).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

import icm_core
from icm_core.config import DecoderConfig
from icm_core.modeling.decoder import InContextDecoder
from icm_core.tiny import TINY_UNET_CONFIG, TINY_VAE_CONFIG

SD21_CONFIG_DIR = Path(icm_core.__file__).resolve().parent / "weights" / "sd21_configs"
SD21_HEADS = (5, 10, 20, 20)  # diffusers' `attention_head_dim` of SD 2.1 is the number of heads per level


def _read_config(component: str) -> dict:
    config = json.loads((SD21_CONFIG_DIR / component / "config.json").read_text())
    return {key: value for key, value in config.items() if not key.startswith("_")}


def _scaled_widths(widths: list[int], multiplier: float, divisors: tuple[int, ...]) -> list[int]:
    scaled = [round(width * multiplier) for width in widths]
    for width, divisor in zip(scaled, divisors):
        if width < divisor or width % divisor:
            raise ValueError(
                f"width multiplier {multiplier} gives {width} channels, not a multiple of {divisor}; "
                "use a power of two such as 1, 0.5, 0.25, 0.125 or 0.0625."
            )
    return scaled


def _heads_for(channels: int) -> int:
    """SD's head width is 64: as many 64-wide heads as the channels allow (at least 1, dividing the channels)."""
    heads = max(1, channels // 64)
    while channels % heads:
        heads -= 1
    return heads


def scaled_sd21_configs(multiplier: float, keep_heads: bool = False) -> tuple[dict, dict]:
    """SD 2.1 UNet and VAE configs with every channel width times ``multiplier``.

    Head counts: by default as many 64-wide heads as the narrowed widths allow (SD 2.1's own rule: 5, 10, 20, 20
    at multiplier 1), so attention work shrinks with the width like the convolutions do (by m instead of m^2);
    ``keep_heads`` keeps SD 2.1's counts whatever the width (full-size [rows * heads, N, N] maps, but then the
    head-count-bound attention dominates a narrowed model). GroupNorm uses the largest group count <= 32 that
    divides every width.
    """
    unet, vae = _read_config("unet"), _read_config("vae")
    if multiplier != 1.0:
        divisors = SD21_HEADS if keep_heads else (1, 1, 1, 1)
        unet["block_out_channels"] = _scaled_widths(unet["block_out_channels"], multiplier, divisors)
        unet["norm_num_groups"] = math.gcd(32, *unet["block_out_channels"])
        if not keep_heads:
            unet["attention_head_dim"] = [_heads_for(width) for width in unet["block_out_channels"]]
        vae["block_out_channels"] = _scaled_widths(vae["block_out_channels"], multiplier, (1, 1, 1, 1))
        vae["norm_num_groups"] = math.gcd(32, *vae["block_out_channels"])
    return unet, vae


@dataclass
class BenchModels:
    """The shared random models. ``unet``/``vae``/``prompt`` fp32; ``decoder`` eval mode."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    prompt: torch.Tensor
    decoder: InContextDecoder
    unet_config: dict
    vae_config: dict


def build_models(
    multiplier: float, image_size: int, smoke: bool = False, seed: int = 0, device: str = "cpu",
    keep_heads: bool = False,
) -> BenchModels:
    """SD 2.1-architecture UNet + VAE (narrowed by ``multiplier``), a random empty-prompt embedding and a decoder.

    The decoder keeps the released widths except ``feature_channels`` (= the UNet's ``up_blocks[1]`` width);
    in ``smoke`` mode everything is tiny (icm_core.tiny's configs).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if smoke:
        unet_config, vae_config = dict(TINY_UNET_CONFIG), dict(TINY_VAE_CONFIG)
    else:
        unet_config, vae_config = scaled_sd21_configs(multiplier, keep_heads)
    unet_config["sample_size"] = image_size // 8
    feature_channels = unet_config["block_out_channels"][-2]  # up_blocks[1] output width (1280 in SD 2.1)
    if smoke:
        decoder_config = DecoderConfig(
            feature_channels=feature_channels, image_size=image_size, attention_channels=24,
            projected_channels=32, fusion_channels=(32, 16, 16, 8),
        )
    else:
        decoder_config = DecoderConfig(feature_channels=feature_channels, image_size=image_size)
    meta = torch.device("meta") if str(device) == "meta" else contextlib.nullcontext()  # shapes only: FLOP counts
    with torch.random.fork_rng(devices=[]), meta:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(unet_config).eval().requires_grad_(False)
        vae = AutoencoderKL.from_config(vae_config).eval().requires_grad_(False)
        prompt = torch.randn(1, 77, unet_config["cross_attention_dim"])
        decoder = InContextDecoder(decoder_config).eval().requires_grad_(False)
    return BenchModels(unet.to(device), vae.to(device), prompt.to(device), decoder.to(device), unet_config, vae_config)


def synthetic_scene(seed: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``[3, H, W]`` image in [0, 1] (smooth background + a brighter ellipse) and its ``[H, W]`` 0/1 mask."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 8, generator=generator)
    background = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    centre = torch.rand(2, generator=generator) * 0.3 + 0.35
    radius = torch.rand(2, generator=generator) * 0.15 + 0.2
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    mask = (((ys - centre[0]) / radius[0]) ** 2 + ((xs - centre[1]) / radius[1]) ** 2 <= 1.0).float()
    colour = torch.rand(3, 1, 1, generator=generator)
    noise = torch.rand(3, height, width, generator=generator) * 0.1
    image = background * 0.5 * (1 - mask) + (0.4 + 0.5 * colour) * mask + noise
    return image.clamp(0.0, 1.0), mask


@torch.no_grad()
def calibrate_decoder(decoder: InContextDecoder, tokens: torch.Tensor, features, images: torch.Tensor) -> None:
    """Set the decoder's BatchNorm running statistics from one batch so alpha is not saturated at 0/1.

    A freshly initialised decoder on random UNet features gives logits far from 0 (alpha ~ 0 or 1 everywhere),
    where an alpha comparison would be blind; with batch statistics the logits are O(1) and alpha is sensitive.
    """
    batchnorms = [module for module in decoder.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    for module in batchnorms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average: one batch -> exactly its statistics
    decoder.train()
    decoder(tokens, features, images)
    decoder.eval()
    for module in batchnorms:
        module.momentum = 0.1
