"""Matting many files: folders in, folders out, resumable, one broken input never stops the batch.

Outputs go to ``OUT/<kind>/<path relative to its input folder>.png`` (kind: alpha, rgba, foreground, composite),
each written atomically (temp file + rename), so an interrupted run leaves no half-written file and ``resume``
skips targets whose outputs all exist. Nothing is ever written inside an input folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .image_io import read_image, save_image_atomic
from .images import to_rgb
from .outputs import make_outputs
from .pipeline import IconMatting, ReferenceContext, RefinementConfig

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Target:
    """One input file and its output name (relative, without suffix)."""

    path: Path
    relative: Path


@dataclass(frozen=True)
class JobSettings:
    """How a job runs: outputs, resume, and the matting options of :meth:`IconMatting.iter_matte`."""

    kinds: tuple[str, ...] = ("alpha",)
    resume: bool = False
    seed: int = 0
    batch_size: int = 4
    fit: str = "stretch"
    refinement: RefinementConfig | None = None
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    estimate_colours: bool = True


@dataclass
class JobReport:
    """What happened: written, skipped (resume) and failed targets with the reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def collect_targets(inputs: Sequence[Path]) -> list[Target]:
    """Image files given directly, and every image below given folders (recursive, sorted)."""
    targets: list[Target] = []
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            targets += [Target(p, p.relative_to(item).with_suffix("")) for p in files]
        elif item.is_file():
            targets.append(Target(item, Path(item.stem)))
        else:
            raise FileNotFoundError(f"target {item} does not exist (expected an image file or a folder of images)")
    seen: dict[Path, Path] = {}
    for target in targets:
        if target.relative in seen:
            raise ValueError(
                f"{seen[target.relative]} and {target.path} would both write '{target.relative}.png'; matte them in "
                "separate runs or rename one."
            )
        seen[target.relative] = target.path
    return targets


def check_output_folder(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder inside (or equal to) an input folder, or a file's own folder."""
    out = out_dir.resolve()
    for item in inputs:
        folder = item.resolve() if item.is_dir() else item.resolve().parent
        if out == folder or folder in out.parents:
            raise ValueError(f"the output folder {out_dir} lies inside the input folder {folder}; choose another one.")


def output_paths(out_dir: Path, target: Target, kinds: Sequence[str]) -> dict[str, Path]:
    return {kind: out_dir / kind / target.relative.with_suffix(".png") for kind in kinds}


def run_job(
    engine: IconMatting,
    context: ReferenceContext,
    targets: Sequence[Target],
    out_dir: Path,
    settings: JobSettings,
    progress: Callable[[int], None] | None = None,
) -> JobReport:
    """Matte every target and write the requested outputs; failures are collected, not raised."""
    report = JobReport()
    pending = []
    for target in targets:
        if settings.resume and all(path.exists() for path in output_paths(out_dir, target, settings.kinds).values()):
            report.skipped.append(target.path)
            if progress is not None:
                progress(1)
        else:
            pending.append(target)
    readable: list[tuple[Target, torch.Tensor | None]] = []
    images = _readable_images(pending, readable, report, progress)
    for index, alpha in engine.iter_matte(
        context, images, settings.seed, settings.batch_size, fit=settings.fit, refinement=settings.refinement
    ):
        target, image = readable[index]
        readable[index] = (target, None)  # only the current micro-batch's images stay in memory
        try:
            _write_outputs(image, alpha, output_paths(out_dir, target, settings.kinds), settings)
            report.written.append(target.path)
        except (OSError, ValueError) as error:
            report.failed.append((target.path, str(error)))
            logger.warning("could not write the outputs of %s: %s", target.path, error)
        if progress is not None:
            progress(1)
    return report


def _readable_images(
    targets: Sequence[Target],
    readable: list[tuple[Target, torch.Tensor | None]],
    report: JobReport,
    progress: Callable[[int], None] | None,
) -> Iterator[torch.Tensor]:
    """Yield checked images one by one (kept in ``readable`` for writing the outputs); bad files go to the report."""
    for target in targets:
        try:
            image = to_rgb(read_image(target.path), str(target.path))
        except (OSError, ValueError) as error:
            report.failed.append((target.path, str(error)))
            logger.warning("skipping %s: %s", target.path, error)
            if progress is not None:
                progress(1)
            continue
        readable.append((target, image))
        yield image


def _write_outputs(image: torch.Tensor, alpha: torch.Tensor, paths: dict[str, Path], settings: JobSettings) -> None:
    outputs = make_outputs(image, alpha, tuple(paths), settings.background, settings.estimate_colours)
    for kind, path in paths.items():
        save_image_atomic(getattr(outputs, kind), path)
