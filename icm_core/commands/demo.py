"""``python -m icm_core demo``: the main job end to end -- encode one reference, matte three targets.

* With the real weights in the models folder (see :func:`icm_core.loader.default_models_dir`): IconMatting on
  the sample images shipped in ``assets/samples``.
* Without them: the small demo model (:mod:`icm_core.synthetic.demo_model`, a decoder trained on procedural
  scenes over a tiny SD-layout feature extractor) on procedural scenes of the kind it was trained on, rendered on
  the fly; its inputs and their ground truth are written next to its mattes so the overview can show both. It
  says so plainly: its quality says nothing about IconMatting's.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io.images import read_image, read_mask, save_image_atomic, to_uint8
from ..loader import find_default_weights, load_engine
from ..metrics import compute_all
from ..pipeline import IconMatting, ProgressCallback
from ..synthetic.demo_model import DEMO_NOTICE, load_demo_engine
from ..synthetic.scenes import render_scene
from .checks import CommandError
from .options import Runtime

logger = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "samples"
TARGET_NAMES = ("target_1", "target_2", "target_3")
# The demo model's job: held-out scenes (seeds the training set never uses) of one category, at 2x its 128 px.
DEMO_CATEGORY = "star"
DEMO_SEEDS = (20_000, 20_001, 20_002)
DEMO_REFERENCE_SEED = 20_100
DEMO_SIZE = 256


@dataclass(frozen=True)
class DemoJob:
    """The demo's inputs: ``reference [3, H, W]``, ``mask [H, W]``, targets ``[3, H, W]`` in [0, 1], and the
    targets' true alphas (``[H, W]``) when known."""

    reference: torch.Tensor
    mask: torch.Tensor
    targets: tuple[torch.Tensor, ...]
    truths: tuple[torch.Tensor, ...] | None


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its files and whether it used real weights (else the small demo model)."""

    output_dir: Path
    alpha_paths: tuple[Path, ...]
    overview_path: Path
    used_real_weights: bool


def run_demo(
    output_dir: Path,
    models_dir: Path,
    run: Runtime = Runtime(),
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
) -> DemoResult:
    """Encode the reference once, matte the three targets, write alphas (and, for the demo model, its inputs and
    their ground truth) and an overview image into ``output_dir``.

    Raises:
        CommandError: a file the demo would write already exists and ``overwrite`` is False (checked before
            any model loads; nothing is written).
    """
    weights = find_default_weights(models_dir)
    check_outputs_free(output_dir, demo_model=weights is None, overwrite=overwrite)
    if weights is None:
        logger.warning(DEMO_NOTICE.format(models_dir=models_dir))
        engine: IconMatting = load_demo_engine(device=run.device)
        job = demo_scenes_job()
        _save_inputs(job, output_dir)
    else:
        engine = load_engine(
            weights.stable_diffusion, weights.decoder, device=run.device, dtype=run.dtype,
            autocast_dtype=run.autocast_dtype, channels_last=run.channels_last,
        )
        job = samples_job()
    context = engine.encode_reference(job.reference, job.mask)
    alphas = engine.matte(context, list(job.targets), batch_size=2, progress=progress)
    paths = tuple(
        save_image_atomic(alpha, output_dir / f"{name}_alpha.png") for name, alpha in zip(TARGET_NAMES, alphas)
    )
    caption = "IconMatting" if weights is not None else "small demo model (synthetic scenes), not IconMatting"
    overview = save_image_atomic(overview_image(job, alphas, caption), output_dir / "overview.png")
    return DemoResult(output_dir, paths, overview, weights is not None)


def output_names(demo_model: bool) -> tuple[str, ...]:
    """The files the demo writes into its output folder."""
    names = [f"{name}_alpha.png" for name in TARGET_NAMES] + ["overview.png"]
    if demo_model:
        names += ["reference.png", "reference_mask.png"]
        names += [f"{name}{suffix}.png" for name in TARGET_NAMES for suffix in ("", "_alpha_true")]
    return tuple(names)


def check_outputs_free(output_dir: Path, demo_model: bool, overwrite: bool) -> None:
    """Raise :class:`CommandError` if ``output_dir`` is a file or already holds a file the demo would write."""
    if output_dir.exists() and not output_dir.is_dir():
        raise CommandError(f"--out {output_dir} is a file; expected a folder for the demo's outputs.")
    taken = [name for name in output_names(demo_model) if (output_dir / name).exists()]
    if taken and not overwrite:
        raise CommandError(
            f"{output_dir} already holds {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}; pass --overwrite "
            "to replace the demo's earlier outputs, or choose another --out."
        )


def samples_job() -> DemoJob:
    """The shipped sample images (for the real weights)."""
    return DemoJob(
        read_image(SAMPLES_DIR / "reference.png"),
        read_mask(SAMPLES_DIR / "reference_mask.png"),
        tuple(read_image(SAMPLES_DIR / f"{name}.png") for name in TARGET_NAMES),
        None,
    )


def demo_scenes_job() -> DemoJob:
    """Held-out procedural scenes of :data:`DEMO_CATEGORY` (for the demo model); the mask is the reference's
    true alpha."""
    reference = render_scene(DEMO_CATEGORY, DEMO_REFERENCE_SEED, DEMO_SIZE, reference=True)
    scenes = [render_scene(DEMO_CATEGORY, seed, DEMO_SIZE) for seed in DEMO_SEEDS]
    image = lambda array: torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # noqa: E731
    return DemoJob(
        image(reference.image),
        torch.from_numpy(reference.alpha),
        tuple(image(scene.image) for scene in scenes),
        tuple(torch.from_numpy(scene.alpha) for scene in scenes),
    )


def _save_inputs(job: DemoJob, output_dir: Path) -> None:
    save_image_atomic(job.reference, output_dir / "reference.png")
    save_image_atomic(job.mask, output_dir / "reference_mask.png")
    for name, target, truth in zip(TARGET_NAMES, job.targets, job.truths or ()):
        save_image_atomic(target, output_dir / f"{name}.png")
        save_image_atomic(truth, output_dir / f"{name}_alpha_true.png")


def overview_image(job: DemoJob, alphas: list[torch.Tensor], caption: str, tile: int = 200) -> Image.Image:
    """The job in one picture: the reference with its mask, then each target above its alpha (and its true
    alpha with its SAD, the sum of absolute alpha errors, when known)."""
    shaded = job.reference[:3].clone()
    inside = job.mask > 0.5
    shaded[0] = torch.where(inside, shaded[0] * 0.5 + 0.5, shaded[0] * 0.4)
    shaded[1:] = torch.where(inside, shaded[1:], shaded[1:] * 0.4)
    rows = 3 if job.truths is not None else 2
    gap, label = 10, 24
    columns = 1 + len(job.targets)
    canvas = Image.new("RGB", (tile * columns + gap * (columns - 1), rows * (tile + gap) + label), "white")
    draw = ImageDraw.Draw(canvas)
    canvas.paste(_fit(to_uint8(shaded), tile), (0, 0))
    for index, (image, alpha) in enumerate(zip(job.targets, alphas), start=1):
        left = index * (tile + gap)
        canvas.paste(_fit(to_uint8(image[:3]), tile), (left, 0))
        canvas.paste(_fit(to_uint8(alpha), tile), (left, tile + gap))
        if job.truths is not None:
            truth = job.truths[index - 1]
            canvas.paste(_fit(to_uint8(truth), tile), (left, 2 * (tile + gap)))
            draw.text((left + 4, rows * (tile + gap) + 4), f"SAD {1000 * compute_all(alpha, truth).sad:.0f}", fill="black")
    draw.text((4, tile + 4), "reference + mask", fill="black")
    draw.text((4, tile + gap + 24), "alpha by the", fill="black")
    for line, text in enumerate(textwrap.wrap(caption, width=30)):
        draw.text((4, tile + gap + 40 + 14 * line), text, fill="red")
    if job.truths is not None:
        draw.text((4, 2 * (tile + gap) + 4), "ground truth", fill="black")
    return canvas


def _fit(array: np.ndarray, tile: int) -> Image.Image:
    image = Image.fromarray(array).convert("RGB")
    image.thumbnail((tile, tile))
    framed = Image.new("RGB", (tile, tile), "white")
    framed.paste(image, ((tile - image.width) // 2, (tile - image.height) // 2))
    return framed
