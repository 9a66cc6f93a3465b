"""Tiny, seeded, *untrained* models with the real architecture, for tests and the install-check demo.

The UNet has the SD 2.1 block layout (so every attention and feature site exists) with narrow widths; the VAE
and text embedding are random too. Mattes from these models mean nothing: they prove the plumbing works.
"""

from __future__ import annotations

import torch

from .config import DecoderConfig, ExtractionConfig
from .features.diffusers_backend import DiffusersFeatureBackend
from .modeling.decoder import InContextDecoder
from .pipeline import IconMatting

TINY_UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 48, 48, 48],
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 8,
    "norm_eps": 1e-05,
    "cross_attention_dim": 32,
    "attention_head_dim": [2, 3, 3, 3],
    "use_linear_projection": True,
    "upcast_attention": True,
}

TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "scaling_factor": 0.18215,
}


def tiny_decoder_config(image_size: int = 128) -> DecoderConfig:
    """Decoder widths matching the tiny UNet (48-channel features), as in the golden's tiny decoder."""
    return DecoderConfig(
        feature_channels=48,
        image_size=image_size,
        attention_channels=24,
        projected_channels=32,
        fusion_channels=(32, 16, 16, 8),
        head_channels=16,
    )


def build_tiny_backend(seed: int = 0, device: str | torch.device = "cpu") -> DiffusersFeatureBackend:
    """A random tiny SD 2.x-layout diffusers backend (UNet + KL VAE + empty-prompt stand-in)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(TINY_UNET_CONFIG)
        vae = AutoencoderKL.from_config(TINY_VAE_CONFIG)
        prompt = torch.randn(1, 77, TINY_UNET_CONFIG["cross_attention_dim"])
    return DiffusersFeatureBackend(unet.to(device), vae.to(device), prompt)


def build_tiny_decoder(seed: int = 0, image_size: int = 128) -> InContextDecoder:
    """A random tiny decoder with non-trivial BatchNorm statistics."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = InContextDecoder(tiny_decoder_config(image_size))
        for module in decoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return decoder.eval()


def build_tiny_engine(
    seed: int = 0, image_size: int = 128, ensemble_size: int = 2, device: str | torch.device = "cpu"
) -> IconMatting:
    """Tiny untrained end-to-end engine (works at any image size that is a multiple of 32)."""
    return IconMatting(
        build_tiny_backend(seed, device),
        build_tiny_decoder(seed, image_size),
        ExtractionConfig(image_size=image_size, ensemble_size=ensemble_size),
    )
