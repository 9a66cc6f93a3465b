"""``python -m icm_core evaluate``: the CLI face of :func:`~icm_core.evaluation.evaluate.evaluate_dataset`.

Also holds the engine options shared with ``train`` (``--sd``, ``--decoder``, ``--device``, ``--dtype``,
``--ensemble``, ``--timestep`` and the testing-only ``--tiny``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .. import cli_checks as checks
from ..cli_checks import CommandError
from ..config import ExtractionConfig
from ..modeling.decoder import InContextDecoder
from ..pipeline import IconMatting
from .evaluate import EvaluationProtocol, evaluate_dataset, plan_evaluation

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TINY_IMAGE_SIZE = 128
TINY_HELP = (
    "FOR TESTING ONLY: use a tiny random untrained SD + decoder (icm_core.tiny, 128 px) instead of real weights; "
    "--sd is ignored and the numbers mean nothing"
)


def add_engine_options(parser: argparse.ArgumentParser, decoder_help: str) -> None:
    """Options that say which weights to load and where to run them."""
    parser.add_argument("--sd", type=Path, default=None, help="SD 2.1: diffusers folder or single .safetensors/.ckpt")
    parser.add_argument("--decoder", type=Path, default=None, help=decoder_help)
    parser.add_argument("--device", type=checks.device, default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="UNet/VAE precision (default fp32)")
    parser.add_argument(
        "--ensemble", type=checks.int_range(1), default=None, help="noisy copies per image (default 4; 2 with --tiny)"
    )
    parser.add_argument("--timestep", type=checks.int_range(0, 999), default=200, help="diffusion timestep (default 200)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    testing = parser.add_argument_group("testing")
    testing.add_argument("--tiny", action="store_true", help=TINY_HELP)


def check_engine_options(args: argparse.Namespace, decoder_required: bool = True) -> None:
    """The weight options a run needs are there (checked before anything is loaded).

    Raises:
        CommandError: --sd (or a required --decoder) is missing.
    """
    if args.tiny:
        return
    if args.sd is None:
        raise CommandError("--sd is required (SD 2.1 diffusers folder or single checkpoint file).")
    if decoder_required and args.decoder is None:
        raise CommandError("--decoder is required (IconMatting decoder .pth/.ckpt/.safetensors).")


def build_engine(args: argparse.Namespace, decoder: InContextDecoder | None = None) -> IconMatting:
    """The engine the options describe; ``decoder`` (already built) wins over ``--decoder``.

    Raises:
        CommandError: a needed option is missing, or the weights cannot be loaded.
    """
    try:
        return _build_engine(args, decoder)
    except (ValueError, FileNotFoundError) as error:  # weights missing, damaged or of another model
        raise CommandError(str(error)) from error


def _build_engine(args: argparse.Namespace, decoder: InContextDecoder | None) -> IconMatting:
    from ..loader import load_engine
    from ..tiny import build_tiny_engine
    from ..weights.decoder import load_decoder

    ensemble = args.ensemble if args.ensemble is not None else (2 if args.tiny else 4)
    if decoder is None and args.decoder is not None:
        decoder = load_decoder(args.decoder)
    if args.tiny:
        engine = build_tiny_engine(seed=0, image_size=TINY_IMAGE_SIZE, ensemble_size=ensemble, device=args.device)
        if decoder is None:
            return engine
        extraction = ExtractionConfig(args.timestep, ensemble, decoder.config.image_size)
        return IconMatting(engine.backend, decoder, extraction)
    check_engine_options(args, decoder_required=decoder is None)
    extraction = ExtractionConfig(args.timestep, ensemble, decoder.config.image_size)
    return load_engine(args.sd, decoder, device=args.device, dtype=DTYPES[args.dtype], extraction=extraction)


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the CLI's subparsers (``set_defaults(handler=run_evaluate)``)."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate on a grouped matting dataset (ICM-57 layout): per-image CSV + per-group tables",
        description="Matte every group of an ICM-57-layout dataset from a fixed reference and report SAD/MSE/Grad/"
        "Conn per image, per group and overall (mean over images and mean over groups).",
    )
    parser.add_argument("dataset", type=Path, help="dataset root with image/, alpha/ (and trimap/) folders")
    parser.add_argument("--out", required=True, type=Path, help="report folder (per_image.csv, summary.md/.json)")
    add_engine_options(parser, "IconMatting decoder (.pth/.ckpt/.safetensors); required unless --tiny")
    parser.add_argument(
        "--resolution", choices=("official", "original"), default="official",
        help="official: centre-crop to a square, metrics on the crop (default); original: whole image, metrics at "
        "the original size",
    )  # fmt: skip
    parser.add_argument(
        "--region", choices=("whole", "unknown"), default="whole",
        help="pixels evaluated: whole image (default) or trimap unknown (=128; needs trimaps)",
    )  # fmt: skip
    parser.add_argument(
        "--references", type=Path, default=None,
        help='JSON {"group": "image" | ["image", ...]}; default: first image of each group by name',
    )  # fmt: skip
    parser.add_argument("--groups-file", type=Path, default=None, help="groups JSON (default: found next to the root)")
    parser.add_argument("--seed", type=checks.seed, default=0, help="noise seed in 0..2**64-1 (default 0)")
    parser.add_argument("--batch-size", type=checks.int_range(1), default=1, help="targets per UNet pass (default 1)")
    parser.add_argument("--save-alphas", action="store_true", help="also write alphas/<group>/<image>.png")
    parser.set_defaults(handler=run_evaluate)
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``evaluate``: check the dataset, build the engine, evaluate with a progress bar, print the
    overall rows and the targets that could not be evaluated (exit code 1 if any)."""
    protocol = EvaluationProtocol(
        resolution=args.resolution,
        region=args.region,
        references_file=args.references,
        groups_file=args.groups_file,
        seed=args.seed,
        batch_size=args.batch_size,
        save_alphas=args.save_alphas,
    )
    check_engine_options(args)
    plan_evaluation(args.dataset, protocol)  # dataset, groups and references: DatasetError before any model loads
    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out} is a file; expected a folder for the reports.")
    engine = build_engine(args)
    with tqdm(unit="image", desc="evaluating") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = evaluate_dataset(engine, args.dataset, args.out, protocol, progress=progress)
    overall = (("mean over images", summary.overall_over_images), ("mean over groups", summary.overall_over_groups))
    for label, errors in overall:
        if errors is not None:
            print(f"{label}: SAD {errors.sad:.4f}  MSE {errors.mse:.6f}  Grad {errors.grad:.4f}  Conn {errors.conn:.4f}")
    print("wrote " + ", ".join(str(path) for path in summary.files.values()))
    if summary.failures:
        print(f"{len(summary.failures)} target(s) not evaluated:", file=sys.stderr)
        for failure in summary.failures:
            print(f"  skipped: {failure.group}/{failure.image}: {failure.reason}", file=sys.stderr)
        return 1
    return 0
