"""``python -m icm_core demo``: the main job end to end on the sample images shipped in ``assets/samples``.

Uses the real weights when they are in the models folder (see :func:`icm_core.loader.default_models_dir`);
otherwise a tiny *untrained* model, which proves the installation works but produces meaningless mattes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io.images import read_image, read_mask, save_image_atomic, to_uint8
from ..loader import find_default_weights, load_engine
from ..pipeline import IconMatting, ProgressCallback
from ..tiny import build_tiny_engine
from .options import Runtime

logger = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "samples"
TARGET_NAMES = ("target_1", "target_2", "target_3")
UNTRAINED_WARNING = (
    "NO REAL WEIGHTS FOUND in {models_dir}: running a tiny UNTRAINED random model. The mattes below are NOT real "
    "mattes; they only prove that the installation works. Put SD 2.1 and the IconMatting decoder there (see the "
    "README, 'Weights') for real results."
)


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its files and whether it used real weights."""

    output_dir: Path
    alpha_paths: tuple[Path, ...]
    overview_path: Path
    used_real_weights: bool


def run_demo(
    output_dir: Path,
    models_dir: Path,
    run: Runtime = Runtime(),
    progress: ProgressCallback | None = None,
) -> DemoResult:
    """Encode the sample reference once, matte the three sample targets, write alphas and an overview image."""
    weights = find_default_weights(models_dir)
    if weights is None:
        logger.warning(UNTRAINED_WARNING.format(models_dir=models_dir))
        engine: IconMatting = build_tiny_engine(image_size=256, device=run.device)
    else:
        engine = load_engine(
            weights.stable_diffusion, weights.decoder, device=run.device, dtype=run.dtype,
            autocast_dtype=run.autocast_dtype, channels_last=run.channels_last,
        )
    reference = read_image(SAMPLES_DIR / "reference.png")
    mask = read_mask(SAMPLES_DIR / "reference_mask.png")
    targets = [read_image(SAMPLES_DIR / f"{name}.png") for name in TARGET_NAMES]
    context = engine.encode_reference(reference, mask)
    alphas = engine.matte(context, targets, batch_size=2, progress=progress)
    paths = tuple(
        save_image_atomic(alpha, output_dir / f"{name}_alpha.png") for name, alpha in zip(TARGET_NAMES, alphas)
    )
    overview = save_image_atomic(
        overview_image(reference, mask, targets, alphas, untrained=weights is None), output_dir / "overview.png"
    )
    return DemoResult(output_dir, paths, overview, weights is not None)


def overview_image(
    reference: torch.Tensor,
    mask: torch.Tensor,
    targets: list[torch.Tensor],
    alphas: list[torch.Tensor],
    untrained: bool,
    tile: int = 200,
) -> Image.Image:
    """A picture of the job: the reference with its mask, then each target above its alpha."""
    shaded = reference[:3].clone()
    shaded[0] = torch.where(mask > 0.5, shaded[0] * 0.5 + 0.5, shaded[0] * 0.4)
    shaded[1:] = torch.where(mask > 0.5, shaded[1:], shaded[1:] * 0.4)
    columns = [(shaded, None)] + [(image[:3], alpha) for image, alpha in zip(targets, alphas)]
    gap = 10
    canvas = Image.new("RGB", (tile * len(columns) + gap * (len(columns) - 1), 2 * tile + gap + 24), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (image, alpha) in enumerate(columns):
        canvas.paste(_fit(to_uint8(image), tile), (index * (tile + gap), 0))
        if alpha is not None:
            canvas.paste(_fit(to_uint8(alpha), tile), (index * (tile + gap), tile + gap))
    draw.text((4, tile + gap + 4), "reference + mask", fill="black")
    draw.text((4, 2 * tile + gap + 6), "UNTRAINED MODEL: not a real matte" if untrained else "IconMatting", fill="red")
    return canvas


def _fit(array: np.ndarray, tile: int) -> Image.Image:
    image = Image.fromarray(array).convert("RGB")
    image.thumbnail((tile, tile))
    framed = Image.new("RGB", (tile, tile), "white")
    framed.paste(image, ((tile - image.width) // 2, (tile - image.height) // 2))
    return framed
