"""Build a ready :class:`~icm_core.pipeline.IconMatting` engine from local weight files (standalone use)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ExtractionConfig
from .features.diffusers_backend import DiffusersFeatureBackend
from .features.precision import resolve_compute_dtype
from .modeling.decoder import InContextDecoder
from .pipeline import IconMatting
from .weights.decoder import OFFICIAL_DECODER_FILE, load_decoder
from .weights.stable_diffusion import load_stable_diffusion

logger = logging.getLogger(__name__)

MODELS_DIR_VARIABLE = "ICM_MODELS_DIR"
SD_CANDIDATES = ("stable-diffusion-2-1", "v2-1_768-ema-pruned.safetensors", "v2-1_768-ema-pruned.ckpt")
DECODER_CANDIDATES = ("12-0.00800-mat.safetensors", OFFICIAL_DECODER_FILE)


def default_models_dir() -> Path:
    """Where the CLI and the demo look for weights: ``$ICM_MODELS_DIR``, else ``~/.cache/icm_models``."""
    configured = os.environ.get(MODELS_DIR_VARIABLE)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "icm_models"


@dataclass(frozen=True)
class WeightPaths:
    """Local weight locations: an SD 2.1 diffusers folder or single file, and a decoder checkpoint."""

    stable_diffusion: Path
    decoder: Path


def find_default_weights(models_dir: Path | None = None) -> WeightPaths | None:
    """The first SD and decoder candidates present in the models folder, or None when either is missing."""
    root = models_dir or default_models_dir()
    sd = next((root / name for name in SD_CANDIDATES if (root / name).exists()), None)
    decoder = next((root / name for name in DECODER_CANDIDATES if (root / name).is_file()), None)
    if sd is None or decoder is None:
        return None
    return WeightPaths(sd, decoder)


def load_engine(
    stable_diffusion: str | Path,
    decoder: str | Path | InContextDecoder,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    extraction: ExtractionConfig | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> IconMatting:
    """SD 2.1 (diffusers folder or single file) + decoder checkpoint -> engine on ``device``.

    The UNet and VAE are loaded in ``dtype`` (fp32, or fp16 on GPUs; bf16 is loaded as fp16, with a note) and
    optionally run under ``autocast_dtype`` (fp16; bf16 runs as fp16); normalisations, attention softmax and the
    ensemble averages stay fp32, and the decoder always runs in fp32 (see :mod:`icm_core.features.precision`).
    ``decoder`` may also be an already loaded :class:`InContextDecoder` (e.g. to read its image size first).
    """
    device = torch.device(device)
    dtype = resolve_compute_dtype(dtype, "UNet/VAE dtype")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device; pass --device cpu.")
    decoder_model = decoder if isinstance(decoder, InContextDecoder) else load_decoder(decoder)
    parts = load_stable_diffusion(stable_diffusion, device=device, dtype=dtype)
    backend = DiffusersFeatureBackend(
        parts.unet, parts.vae, parts.empty_prompt_embedding, autocast_dtype=autocast_dtype, channels_last=channels_last
    )
    engine = IconMatting(backend, decoder_model, extraction)
    source = "an in-memory decoder" if isinstance(decoder, InContextDecoder) else decoder
    logger.info("loaded IconMatting: SD from %s, decoder from %s, on %s/%s", parts.source, source, device, dtype)
    return engine
