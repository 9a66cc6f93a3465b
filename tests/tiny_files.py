"""Tiny weight files on disk for end-to-end CLI tests (a diffusers SD folder + a 128-px decoder), no network."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_tiny_weights(root: Path) -> tuple[Path, Path]:
    """Write a tiny diffusers SD folder (as ``save_pretrained`` writes it) and a tiny decoder; returns their paths."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from icm_core.tiny import TINY_UNET_CONFIG, TINY_VAE_CONFIG, build_tiny_decoder
    from icm_core.weights.decoder import save_decoder

    sd = root / "stable-diffusion-tiny"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        UNet2DConditionModel.from_config(TINY_UNET_CONFIG).save_pretrained(sd / "unet")
        AutoencoderKL.from_config(TINY_VAE_CONFIG).save_pretrained(sd / "vae")
        text_config = CLIPTextConfig(
            hidden_size=TINY_UNET_CONFIG["cross_attention_dim"],
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=77,
        )
        CLIPTextModel(text_config).save_pretrained(sd / "text_encoder")
    (sd / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
    }))  # fmt: skip
    decoder = root / "tiny-decoder.safetensors"
    save_decoder(build_tiny_decoder(image_size=128), decoder)
    return sd, decoder
