"""``python -m icm_core matte``: one reference (mask, points or a saved context) -> files and folders of targets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .config import ExtractionConfig
from .context_io import load_context, save_context
from .image_io import read_image, read_mask
from .loader import load_engine
from .matte_job import JobSettings, check_output_folder, collect_targets, run_job
from .outputs import OUTPUT_KINDS, parse_colour
from .pipeline import IconMatting, ReferenceContext, RefinementConfig
from .prompts import ExpansionConfig, parse_points
from .weights.decoder import load_decoder

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
KIND_ALIASES = {"fg": "foreground"}


def add_matte_parser(commands: argparse._SubParsersAction) -> None:
    matte = commands.add_parser(
        "matte",
        help="matte images/folders from one annotated reference",
        description="Outputs go to OUT/<kind>/<path relative to its input folder>.png, written atomically.",
    )
    matte.add_argument("targets", nargs="+", type=Path, help="target image files and/or folders (recursive)")
    matte.add_argument("--sd", required=True, type=Path, help="SD 2.1: diffusers folder or single .safetensors/.ckpt")
    matte.add_argument("--decoder", required=True, type=Path, help="IconMatting decoder (.pth/.ckpt/.safetensors)")
    matte.add_argument("--out", required=True, type=Path, help="output folder (never inside an input folder)")
    prompt = matte.add_argument_group("reference (a mask, points, or a saved context)")
    prompt.add_argument("--reference", type=Path, help="reference image")
    prompt.add_argument("--reference-mask", type=Path, help="RoI mask of the reference (white = the thing)")
    prompt.add_argument("--reference-points", help='clicks on the thing: JSON [{"x": .., "y": ..}, ...] in pixels')
    prompt.add_argument("--negative-points", default="", help="clicks on what is not the thing (same JSON)")
    prompt.add_argument("--top-m", type=int, default=ExpansionConfig().top_m, help="cells added per click")
    prompt.add_argument("--min-coverage", type=float, default=1.0, help="mask cell coverage needed (1.0 = official)")
    prompt.add_argument("--context", type=Path, help="a saved reference context (.safetensors) instead of a reference")
    prompt.add_argument("--save-context", type=Path, help="also save the reference context to this .safetensors file")
    output = matte.add_argument_group("outputs")
    output.add_argument("--save", default="alpha", help=f"comma list of {', '.join(OUTPUT_KINDS)} (fg = foreground)")
    output.add_argument("--resume", action="store_true", help="skip targets whose outputs all exist")
    output.add_argument("--fit", choices=("stretch", "pad", "crop"), default="stretch", help="how images reach 768²")
    output.add_argument("--refine", action="store_true", help="full-resolution guided-filter edge refinement")
    output.add_argument("--background-color", default="#000000", help="composite background, #rrggbb or r,g,b")
    output.add_argument("--no-colour-estimation", action="store_true", help="use image colours for fg/rgba/composite")
    run = matte.add_argument_group("model")
    run.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    run.add_argument("--ensemble", type=int, default=4, help="noisy copies per image (default 4)")
    run.add_argument("--timestep", type=int, default=200, help="diffusion timestep (default 200)")
    run.add_argument("--batch-size", type=int, default=4, help="targets per UNet pass (default 4)")
    run.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    run.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="UNet/VAE weight precision (default fp32)")
    run.add_argument("--autocast", choices=("bf16", "fp16"), default=None,
                     help="run VAE/UNet under autocast in this precision (bf16 runs as fp16; norms, softmax, decoder stay fp32)")
    run.add_argument("--channels-last", action="store_true", help="channels-last UNet (faster convolutions on GPUs)")
    matte.set_defaults(handler=run_matte_command)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(KIND_ALIASES.get(part.strip(), part.strip()) for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise SystemExit(f"error: --save takes a comma list of {', '.join(OUTPUT_KINDS)} (or fg); got {text!r}")
    return kinds


def _reference_context(engine: IconMatting, args: argparse.Namespace) -> ReferenceContext:
    if args.context is not None:
        context = load_context(args.context)
        engine.check_context(context)
        return context
    if args.reference is None or (args.reference_mask is None) == (args.reference_points is None):
        raise SystemExit("error: give --reference with exactly one of --reference-mask / --reference-points, or --context")
    image = read_image(args.reference)
    if args.reference_mask is not None:
        return engine.encode_reference(image, read_mask(args.reference_mask), args.seed, args.min_coverage, args.fit)
    expansion = engine.expand_prompt(
        image,
        positive=parse_points(args.reference_points, "--reference-points"),
        negative=parse_points(args.negative_points, "--negative-points"),
        config=ExpansionConfig(top_m=args.top_m),
        seed=args.seed,
        fit=args.fit,
    )
    return engine.encode_reference_tokens(image, [expansion.token_mask], args.seed, "points", args.fit)


def run_matte_command(args: argparse.Namespace) -> int:
    kinds = _kinds(args.save)
    inputs = [*args.targets, *(p for p in (args.reference, args.reference_mask) if p is not None)]
    try:
        check_output_folder(args.out, inputs)
        targets = collect_targets(args.targets)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from error
    decoder = load_decoder(args.decoder)  # first: its image size fixes the extraction size (768 for the release)
    extraction = ExtractionConfig(timestep=args.timestep, ensemble_size=args.ensemble, image_size=decoder.config.image_size)
    engine = load_engine(
        args.sd, decoder, device=args.device, dtype=DTYPES[args.dtype], extraction=extraction,
        autocast_dtype=DTYPES[args.autocast] if args.autocast else None, channels_last=args.channels_last,
    )
    context = _reference_context(engine, args)
    if args.save_context is not None:
        save_context(context, args.save_context)
    settings = JobSettings(
        kinds=kinds,
        resume=args.resume,
        seed=args.seed,
        batch_size=args.batch_size,
        fit=args.fit,
        refinement=RefinementConfig() if args.refine else None,
        background=parse_colour(args.background_color),
        estimate_colours=not args.no_colour_estimation,
    )
    with tqdm(total=len(targets), unit="image", desc="matting", dynamic_ncols=True) as bar:
        report = run_job(engine, context, targets, args.out, settings, progress=bar.update)
    print(f"wrote {len(report.written)}, skipped {len(report.skipped)} (already done), failed {len(report.failed)}")
    for path, reason in report.failed:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0
