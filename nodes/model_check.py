"""Is the graph's MODEL an SD 2.x UNet IconMatting can read? (plain Python; ComfyUI objects passed in)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_FAMILY_NAMES = {
    "SD15": "SD 1.x",
    "SD15_instructpix2pix": "SD 1.x InstructPix2Pix",
    "SD20": "SD 2.x",
    "SD21UnclipL": "SD 2.1 unCLIP",
    "SD21UnclipH": "SD 2.1 unCLIP",
    "SDXL": "SDXL",
    "SDXLRefiner": "SDXL refiner",
    "SSD1B": "SSD-1B (SDXL family)",
    "SD3": "SD 3",
    "Flux": "Flux",
    "FluxSchnell": "Flux schnell",
    "StableCascade_C": "Stable Cascade",
    "AuraFlow": "AuraFlow",
    "HunyuanDiT": "Hunyuan-DiT",
}


def describe_model(unet_config: Mapping[str, Any], model_class: str) -> str:
    """A human name for what was found, e.g. ``"SDXL (context_dim 2048, model_channels 320)"``."""
    family = _FAMILY_NAMES.get(model_class, model_class)
    details = [f"{key} {unet_config[key]}" for key in ("context_dim", "model_channels") if key in unet_config]
    return f"{family} ({', '.join(details)})" if details else family


def check_sd2_unet(unet_config: Mapping[str, Any], model_class: str) -> None:
    """Raise ValueError unless the config is an SD 2.x UNet (context 1024, 320 base channels, linear transformers)."""
    problems = []
    if unet_config.get("context_dim") != 1024:
        problems.append(f"context_dim {unet_config.get('context_dim')} (SD 2.x: 1024)")
    if unet_config.get("model_channels") != 320:
        problems.append(f"model_channels {unet_config.get('model_channels')} (SD 2.x: 320)")
    if not unet_config.get("use_linear_in_transformer", False):
        problems.append("convolutional transformer projections (SD 2.x: linear)")
    if unet_config.get("adm_in_channels") is not None:
        problems.append(f"extra conditioning input adm_in_channels {unet_config['adm_in_channels']}")
    if unet_config.get("in_channels", 4) != 4:
        problems.append(f"{unet_config.get('in_channels')} input channels (inpainting/depth models are not supported)")
    if problems:
        raise ValueError(
            f"Load IconMatting needs an SD 2.x MODEL (SD 2.1 768-v, or SD 2.x base), but the MODEL is "
            f"{describe_model(unet_config, model_class)}: " + "; ".join(problems) + ". Load "
            "v2-1_768-ema-pruned.safetensors with Load Checkpoint and connect its MODEL, VAE and CLIP."
        )


def check_kl_vae(first_stage_model: Any) -> None:
    """Raise ValueError unless the VAE has a KL posterior (encoder + quant_conv giving mean and log-variance)."""
    if not (hasattr(first_stage_model, "encoder") and hasattr(first_stage_model, "quant_conv")):
        raise ValueError(
            f"IconMatting samples the VAE posterior, but this VAE is a {type(first_stage_model).__name__} without "
            "one (TAESD-style VAEs are deterministic). Connect the SD 2.x checkpoint's own KL VAE."
        )
