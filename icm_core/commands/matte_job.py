"""Matting many files: folders in, folders out, resumable, one broken input never stops the batch.

Output names: ``OUT/<kind>/<path relative to its input folder>`` with ``.png`` appended unless the file name
already ends in ``.png`` (``shot/0001.png`` -> ``shot/0001.png``, ``a.jpg`` -> ``a.jpg.png``,
``frame.001.tif`` -> ``frame.001.tif.png``), so two files of one folder never share an output. A file given
directly is relative to its own folder. Names that would still meet (the same relative path under two input
folders, names differing only in letter case, a file whose output is another output's folder) are all listed
as an error before anything is loaded or written.

Each output is written to a partial file and renamed into place (:mod:`icm_core.file_safety`); ``resume`` counts a
target as done only when every output decodes as a complete PNG of the input's size, and each run first removes
the partial files an interrupted run left in ``OUT/<kind>/``. Nothing is ever written inside an input folder, and
no input may lie inside ``OUT``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..io.file_safety import (
    UnsafeOutputError,
    folder_lock,
    is_within,
    png_is_complete,
    remove_stale_partials,
    resolved,
    write_png_atomic,
)
from ..errors import image_read_errors
from ..io.images import read_image, to_uint8
from ..io.images import to_rgb
from ..outputs import make_outputs
from ..pipeline import IconMatting, ReferenceContext, RefinementConfig

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
KIND_MODES = {"alpha": "L", "rgba": "RGBA", "foreground": "RGB", "composite": "RGB"}  # PNG mode of each output
EXIF_ORIENTATION = 0x0112
IMAGE_READ_ERRORS = image_read_errors()


class OutputCollisionError(ValueError):
    """Two inputs would write the same output file (or one output would be another's folder)."""


@dataclass(frozen=True)
class Target:
    """One input file and its output name (relative to ``OUT/<kind>/``, ending in ``.png``)."""

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
    estimate_colors: bool = True


@dataclass
class JobReport:
    """What happened: written, skipped (resume) and failed targets with the reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    removed_partials: list[Path] = field(default_factory=list)


def output_name(relative_input: Path) -> Path:
    """The output path (relative) of an input path (relative): the whole name kept, ``.png`` appended if needed."""
    name = relative_input.name
    return relative_input.with_name(name if name.endswith(".png") else f"{name}.png")


def _image_files(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, symlinked folders not followed, sorted)."""
    found = []
    for root, _, files in os.walk(folder):
        found += [Path(root) / name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(p for p in found if p.is_file())


def collect_targets(inputs: Sequence[Path]) -> list[Target]:
    """Image files given directly, and every image below given folders (recursive, sorted).

    Raises:
        FileNotFoundError: an input does not exist.
        OutputCollisionError: two inputs would share an output (all such pairs are listed).
    """
    targets: list[Target] = []
    for item in inputs:
        if item.is_dir():
            targets += [Target(p, output_name(p.relative_to(item))) for p in _image_files(item)]
        elif item.is_file():
            targets.append(Target(item, output_name(Path(item.name))))
        else:
            raise FileNotFoundError(f"target {item} does not exist (expected an image file or a folder of images)")
    check_collisions(targets)
    return targets


def _key(relative: Path) -> str:
    """Comparison key of an output path: case-insensitive and Unicode-normalised (as macOS/Windows compare)."""
    return unicodedata.normalize("NFC", relative.as_posix()).casefold()


def check_collisions(targets: Sequence[Target]) -> None:
    """Raise :class:`OutputCollisionError` listing every pair of targets whose outputs would meet."""
    seen: dict[str, Target] = {}
    problems: list[str] = []
    for target in targets:
        key = _key(target.relative)
        if key in seen:
            first = seen[key]
            how = "the same input given twice" if resolved(first.path) == resolved(target.path) else "both"
            problems.append(f"{first.path} and {target.path} ({how}) -> {first.relative} / {target.relative}")
        else:
            seen[key] = target
    folders = {_key(parent): target for target in targets for parent in target.relative.parents if parent.parts}
    problems += [
        f"{target.path} -> {target.relative} is also the output folder of {folders[key].path}"
        for key, target in seen.items()
        if key in folders
    ]
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... ({len(problems)} in all)" if len(problems) > 10 else "")
        raise OutputCollisionError(
            f"{len(problems)} output name collision(s) (outputs are OUT/<kind>/<path relative to its input "
            f"folder>, compared ignoring letter case): {shown}. Rename the files or matte them in separate runs."
        )


def check_output_folder(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder inside (or equal to) an input folder, a file's own folder, or one holding an input.

    Raises:
        UnsafeOutputError: with the offending input.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UnsafeOutputError(f"--out {out_dir} is a file; expected a folder (new or existing).")
    for item in inputs:
        folder = item if item.is_dir() else item.parent
        if is_within(out_dir, folder):
            raise UnsafeOutputError(
                f"the output folder {out_dir} lies inside the input folder {resolved(folder)}; choose another one."
            )
        if is_within(item, out_dir):
            raise UnsafeOutputError(
                f"the input {item} lies inside the output folder {out_dir}; outputs could overwrite it. Choose an "
                "output folder that holds none of the inputs."
            )


@contextlib.contextmanager
def output_folder(out_dir: Path) -> Iterator[None]:
    """Create ``out_dir`` if needed and hold its lock; if it was created here and is still empty at the end (the
    run stopped before writing anything), remove it again."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(out_dir):
            yield
    finally:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()


def output_paths(out_dir: Path, target: Target, kinds: Sequence[str]) -> dict[str, Path]:
    return {kind: out_dir / kind / target.relative for kind in kinds}


def existing_outputs(out_dir: Path, targets: Sequence[Target], kinds: Sequence[str]) -> list[Path]:
    """Output files (or anything else) already present where this job would write."""
    paths = (path for target in targets for path in output_paths(out_dir, target, kinds).values())
    return [path for path in paths if path.exists() or path.is_symlink()]


def input_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file as :func:`~icm_core.image_io.read_image` returns it (EXIF rotation applied),
    from the header only."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8):  # transposed or rotated by 90 degrees
            width, height = height, width
    return height, width


def is_done(out_dir: Path, target: Target, kinds: Sequence[str]) -> bool:
    """True when every output of ``target`` is a complete PNG of the input's size and the kind's mode."""
    try:
        size = input_size(target.path)
    except IMAGE_READ_ERRORS:
        return False  # unreadable input: it is retried (and reported) with the others
    return all(
        png_is_complete(path, size, KIND_MODES[kind]) for kind, path in output_paths(out_dir, target, kinds).items()
    )


def run_job(
    engine: IconMatting,
    context: ReferenceContext,
    targets: Sequence[Target],
    out_dir: Path,
    settings: JobSettings,
    progress: Callable[[int], None] | None = None,
    lock: bool = True,
) -> JobReport:
    """Matte every target and write the requested outputs; failures are collected, not raised.

    Holds a lock on ``out_dir`` for the whole job (a second job on the same folder is refused; ``lock=False``
    when the caller already holds it, see :func:`output_folder`), removes the partial files an interrupted job
    left under ``out_dir/<kind>/``, and with ``settings.resume`` skips targets whose outputs are all complete
    (see :func:`is_done`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(out_dir) if lock else contextlib.nullcontext():
        report = JobReport()
        for kind in KIND_MODES:  # every output folder of ours, also of kinds this run does not write
            report.removed_partials += remove_stale_partials(out_dir / kind)
        pending = []
        for target in targets:
            if settings.resume and is_done(out_dir, target, settings.kinds):
                report.skipped.append(target.path)
                if progress is not None:
                    progress(1)
            else:
                pending.append(target)
        _matte_pending(engine, context, pending, out_dir, settings, report, progress)
    return report


def _matte_pending(
    engine: IconMatting,
    context: ReferenceContext,
    pending: Sequence[Target],
    out_dir: Path,
    settings: JobSettings,
    report: JobReport,
    progress: Callable[[int], None] | None,
) -> None:
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
        except IMAGE_READ_ERRORS as error:
            report.failed.append((target.path, str(error) or type(error).__name__))
            logger.warning("skipping %s: %s", target.path, error)
            if progress is not None:
                progress(1)
            continue
        readable.append((target, image))
        yield image


def _write_outputs(image: torch.Tensor, alpha: torch.Tensor, paths: dict[str, Path], settings: JobSettings) -> None:
    outputs = make_outputs(image, alpha, tuple(paths), settings.background, settings.estimate_colors)
    for kind, path in paths.items():
        write_png_atomic(to_uint8(getattr(outputs, kind)), path)
