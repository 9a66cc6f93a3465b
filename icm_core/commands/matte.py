"""``python -m icm_core matte``: one reference (mask, points or a saved context) -> files and folders of targets.

Every option and every file it names is checked by :func:`plan_matte` before a model is loaded; a mistake is one
``error:`` line (see :mod:`icm_core.commands.checks`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..io.context_files import FORMAT_TAG, describe_context, load_context, save_context
from ..io.file_safety import check_new_file, is_within, publish, staged
from ..fit import placement
from ..io.images import DEFAULT_MAX_IMAGE_PIXELS, read_image, read_mask, set_max_image_pixels, to_mask, to_rgb
from .matte_job import (
    IMAGE_READ_ERRORS,
    JobSettings,
    Target,
    check_output_folder,
    collect_targets,
    existing_outputs,
    output_folder,
    run_job,
)
from ..outputs import OUTPUT_KINDS, parse_color
from ..pipeline import IconMatting, ReferenceContext, RefinementConfig
from ..prompts import ExpansionConfig, Point, parse_points, point_cells
from . import checks
from .checks import CommandError
from .options import add_extraction_options, add_runtime_options, build_engine

KIND_ALIASES = {"fg": "foreground"}
NOMINAL_GRID = 48  # token grid used to check points against a crop before the model (and its size) is known


def add_matte_parser(commands: argparse._SubParsersAction) -> None:
    matte = commands.add_parser(
        "matte",
        help="matte images/folders from one annotated reference",
        description="Outputs go to OUT/<kind>/<path relative to its input folder> (+ .png unless it ends in .png), "
        "written atomically.",
    )
    matte.add_argument("targets", nargs="+", type=Path, help="target image files and/or folders (recursive)")
    matte.add_argument("--sd", required=True, type=Path, help="SD 2.1: diffusers folder or single .safetensors/.ckpt")
    matte.add_argument("--decoder", required=True, type=Path, help="IconMatting decoder (.pth/.ckpt/.safetensors)")
    matte.add_argument("--out", required=True, type=Path, help="output folder (never inside an input folder)")
    add_reference_options(matte)
    add_output_options(matte)
    run = matte.add_argument_group("model")
    run.add_argument("--seed", type=checks.seed, default=0, help="noise seed in 0..2**64-1 (default 0)")
    add_extraction_options(run, ensemble_default=4)
    run.add_argument("--batch-size", type=checks.int_range(1), default=4, help="targets per UNet pass (default 4)")
    add_runtime_options(run)
    matte.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    matte.set_defaults(handler=run_matte_command)


def add_reference_options(parser: argparse.ArgumentParser) -> None:
    """The reference group: a mask, points or a saved context (shared with ``matte-dataset``)."""
    prompt = parser.add_argument_group("reference (a mask, points, or a saved context)")
    prompt.add_argument("--reference", type=Path, help="reference image")
    prompt.add_argument("--reference-mask", type=Path, help="RoI mask of the reference (white = the thing)")
    prompt.add_argument("--reference-points", help='clicks on the thing: JSON [{"x": .., "y": ..}, ...] in pixels')
    prompt.add_argument("--negative-points", default="", help="clicks on what is not the thing (same JSON)")
    prompt.add_argument("--top-m", type=checks.int_range(0), default=ExpansionConfig().top_m, help="cells added per click")
    prompt.add_argument("--min-coverage", type=checks.unit_fraction, default=1.0,
                        help="mask cell coverage needed, in (0, 1] (1.0 = official)")
    prompt.add_argument("--context", type=Path, help="a saved reference context (.safetensors) instead of a reference")
    prompt.add_argument("--save-context", type=Path, help="also save the reference context to this new .safetensors file")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """The outputs group: kinds, size limit, resume/overwrite, fit, refinement, composite colour (shared with
    ``matte-dataset``)."""
    output = parser.add_argument_group("outputs")
    output.add_argument("--save", default="alpha", help=f"comma list of {', '.join(OUTPUT_KINDS)} (fg = foreground)")
    output.add_argument("--max-image-pixels", type=checks.int_range(1), default=None,
                        help=f"largest image read, in pixels (default {DEFAULT_MAX_IMAGE_PIXELS:,} or $ICM_MAX_IMAGE_PIXELS)")
    output.add_argument("--resume", action="store_true", help="skip targets whose outputs are all complete; redo the rest")
    output.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (and an existing --save-context file); never an input")
    output.add_argument("--fit", choices=("stretch", "pad", "crop"), default="stretch", help="how images reach 768²")
    output.add_argument("--refine", action="store_true", help="full-resolution guided-filter edge refinement")
    output.add_argument("--background-color", default="#000000", help="composite background, #rrggbb or r,g,b")
    output.add_argument("--no-color-estimation", action="store_true", help="use image colors for fg/rgba/composite")
    output.add_argument("--no-colour-estimation", action=checks.DeprecatedFlag, dest="no_color_estimation",
                        replacement="--no-color-estimation", help=argparse.SUPPRESS)


@dataclass(frozen=True)
class MattePlan:
    """Everything :func:`plan_matte` checked, ready for the models.

    Attributes:
        reference: ``[3, H, W]`` reference image, or None with ``context``.
        mask: ``[H, W]`` reference mask (mask prompts), else None.
        positive, negative: click prompts (point prompts), else empty.
        context: a loaded saved context (not yet checked against the model), else None.
    """

    kinds: tuple[str, ...]
    targets: tuple[Target, ...]
    settings: JobSettings
    reference: torch.Tensor | None
    mask: torch.Tensor | None
    positive: tuple[Point, ...]
    negative: tuple[Point, ...]
    context: ReferenceContext | None


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(KIND_ALIASES.get(part.strip(), part.strip()) for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise CommandError(f"--save takes a comma list of {', '.join(OUTPUT_KINDS)} (or fg); got {text!r}")
    return tuple(dict.fromkeys(kinds))


def _value(parse, text: str, option: str):  # noqa: ANN001, ANN202 - a parser of one option value
    try:
        return parse(text)
    except ValueError as error:
        raise CommandError(f"{option}: {error}" if option else str(error)) from error


def _read_reference(path: Path, option: str) -> torch.Tensor:
    if not path.is_file():
        raise CommandError(f"{option} {path} does not exist or is not a file; expected an image file.")
    try:
        return to_rgb(read_image(path), f"{option} {path}")
    except IMAGE_READ_ERRORS as error:
        raise CommandError(f"{option} {path} cannot be used: {error or type(error).__name__}") from error


def _read_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    if not path.is_file():
        raise CommandError(f"--reference-mask {path} does not exist or is not a file; expected an image file.")
    try:
        return to_mask(read_mask(path), size, f"--reference-mask {path}")
    except IMAGE_READ_ERRORS as error:
        raise CommandError(f"--reference-mask {path} cannot be used: {error or type(error).__name__}") from error


def _read_context(path: Path) -> ReferenceContext:
    try:
        metadata = describe_context(path)
        absent = [key for key in ("format", "version", "fingerprint") if not metadata.get(key)]
        if metadata.get("format") == FORMAT_TAG and absent:
            raise CommandError(
                f"--context {path}: the saved context lacks its {', '.join(absent)} metadata (damaged or edited); "
                "save the context again with --save-context."
            )
        return load_context(path)
    except ValueError as error:  # CheckpointError too: unreadable, truncated, wrong format or version
        raise CommandError(f"--context {path}: {error}") from error


def _check_points(points: tuple[Point, ...], image: torch.Tensor, fit: str, option: str) -> None:
    height, width = image.shape[1:]
    where = placement(height, width, NOMINAL_GRID * 16, fit)
    try:
        point_cells(points, (height, width), NOMINAL_GRID, option, where.cell_rows(NOMINAL_GRID),
                    where.cell_cols(NOMINAL_GRID))
    except ValueError as error:
        raise CommandError(str(error)) from error


def _prompt(args: argparse.Namespace) -> tuple:
    """(reference, mask, positive, negative, context) from the reference options; every file read and checked."""
    if args.context is not None:
        if args.reference is not None or args.reference_mask is not None or args.reference_points is not None:
            raise CommandError("give either --context or --reference with a mask or points, not both.")
        return None, None, (), (), _read_context(args.context)
    if args.reference is None or (args.reference_mask is None) == (args.reference_points is None):
        raise CommandError("give --reference with exactly one of --reference-mask / --reference-points, or --context")
    positive = _value(lambda text: parse_points(text, "--reference-points"), args.reference_points or "", "")
    negative = _value(lambda text: parse_points(text, "--negative-points"), args.negative_points, "")
    if args.reference_points is not None and not positive:
        raise CommandError('--reference-points holds no point; expected e.g. [{"x": 120, "y": 88}].')
    reference = _read_reference(args.reference, "--reference")
    if args.reference_mask is not None:
        return reference, _read_mask(args.reference_mask, tuple(reference.shape[1:])), (), (), None
    _check_points(positive, reference, args.fit, "--reference-points point")
    _check_points(negative, reference, args.fit, "--negative-points point")
    return reference, None, positive, negative, None


def _check_files(args: argparse.Namespace, kinds: tuple[str, ...]) -> tuple[Target, ...]:
    """Output safety: no input inside OUT, OUT inside no input folder, no collision, nothing replaced unasked."""
    content = [*args.targets, *(p for p in (args.reference, args.reference_mask) if p is not None)]
    weights = [p for p in (args.sd, args.decoder, args.context) if p is not None]
    check_output_folder(args.out, content)
    check_weights_outside(weights, args.out)
    targets = tuple(collect_targets(args.targets))
    if not targets:
        raise CommandError(f"no image found in {', '.join(map(str, args.targets))} (looked for .png/.jpg/... files).")
    check_replacements(existing_outputs(args.out, targets, kinds), args, [*content, *weights])
    return targets


def check_weights_outside(weights: list[Path], out: Path) -> None:
    """Weights and contexts of the run neither lie inside the output folder nor contain it."""
    for item in weights:
        if is_within(item, out) or (item.is_dir() and is_within(out, item)):
            raise CommandError(
                f"{item} (an input of this run) and the output folder {out} overlap; choose an output folder "
                "that holds none of the inputs and lies inside none."
            )


def check_replacements(existing: list[Path], args: argparse.Namespace, inputs: list[Path]) -> None:
    """Existing outputs need --resume or --overwrite; --save-context never replaces an input of the run."""
    if existing and not (args.resume or args.overwrite):
        shown = ", ".join(map(str, existing[:3])) + (", ..." if len(existing) > 3 else "")
        raise CommandError(
            f"{len(existing)} output file(s) already exist ({shown}); pass --resume to keep the complete ones and "
            "redo the rest, or --overwrite to replace them, or choose another --out."
        )
    if args.save_context is not None:
        if args.save_context.suffix != ".safetensors":
            raise CommandError(f"--save-context must name a .safetensors file, got {args.save_context.name}")
        check_new_file(args.save_context, inputs, args.overwrite, "--save-context")


def plan_matte(args: argparse.Namespace) -> MattePlan:
    """Check every option and every file named, read the reference, find the targets; loads no model.

    Raises:
        CommandError, UnsafeOutputError, OutputCollisionError: a user mistake, with how to fix it.
    """
    kinds = _kinds(args.save)
    background = _value(parse_color, args.background_color, "--background-color")
    if args.max_image_pixels is not None:
        set_max_image_pixels(args.max_image_pixels)
    reference, mask, positive, negative, context = _prompt(args)
    try:
        targets = _check_files(args, kinds)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from error
    settings = JobSettings(
        kinds=kinds,
        resume=args.resume,
        seed=args.seed,
        batch_size=args.batch_size,
        fit=args.fit,
        refinement=RefinementConfig() if args.refine else None,
        background=background,
        estimate_colors=not args.no_color_estimation,
    )
    return MattePlan(kinds, targets, settings, reference, mask, positive, negative, context)


def _reference_context(engine: IconMatting, plan: MattePlan, args: argparse.Namespace) -> ReferenceContext:
    try:
        if plan.context is not None:
            engine.check_context(plan.context)
            return plan.context
        if plan.mask is not None:
            return engine.encode_reference(plan.reference, plan.mask, args.seed, args.min_coverage, args.fit)
        expansion = engine.expand_prompt(
            plan.reference, positive=plan.positive, negative=plan.negative,
            config=ExpansionConfig(top_m=args.top_m), seed=args.seed, fit=args.fit,
        )
        return engine.encode_reference_tokens(plan.reference, [expansion.token_mask], args.seed, "points", args.fit)
    except ValueError as error:  # empty RoI, a context of another model, a point outside the crop
        raise CommandError(f"{args.context or args.reference}: {error}") from error


def _save_context(context: ReferenceContext, target: Path, overwrite: bool) -> None:
    with staged(target) as temp:
        save_context(context, temp)
        publish(temp, target, overwrite)


def run_matte_command(args: argparse.Namespace) -> int:
    plan = plan_matte(args)
    with output_folder(args.out):  # locked before any model loads: a second run on OUT is refused at once
        engine = build_engine(args)
        context = _reference_context(engine, plan, args)
        if args.save_context is not None:
            _save_context(context, args.save_context, args.overwrite)
        with tqdm(total=len(plan.targets), unit="image", desc="matting", dynamic_ncols=True) as bar:
            report = run_job(engine, context, plan.targets, args.out, plan.settings, progress=bar.update, lock=False)
    print(f"wrote {len(report.written)}, skipped {len(report.skipped)} (already done), failed {len(report.failed)}")
    if report.removed_partials:
        print(f"removed {len(report.removed_partials)} partial file(s) left by an interrupted run", file=sys.stderr)
    for path, reason in report.failed:
        print(f"  failed: {path}: {checks.one_line(reason)}", file=sys.stderr)
    return 1 if report.failed else 0
