"""``python -m icm_core evaluate``: the CLI face of :func:`~icm_core.evaluation.evaluate.evaluate_dataset`.

Weights, device and precision options come from :mod:`icm_core.commands.options`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from ..evaluation.evaluate import EvaluationProtocol, evaluate_dataset, plan_evaluation
from ..evaluation.results import PROMPT_KINDS
from ..fit import FITS
from ..prompts import DEFAULT_TOP_M
from . import checks
from .checks import CommandError
from .options import add_weight_options, build_engine, check_weight_options

logger = logging.getLogger(__name__)

DEFAULT_POINTS = EvaluationProtocol().num_points


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
    add_weight_options(parser, "IconMatting decoder (.pth/.ckpt/.safetensors); required unless --tiny")
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
    add_protocol_options(parser)
    parser.set_defaults(handler=run_evaluate)
    return parser


def add_protocol_options(parser: argparse.ArgumentParser) -> None:
    """``--prompt``, ``--points``, ``--top-m``, ``--num-references``, ``--fit``, ``--refine``."""
    group = parser.add_argument_group("reference prompt and output")
    group.add_argument(
        "--prompt", choices=PROMPT_KINDS, default="mask",
        help="reference RoI: its ground-truth alpha (mask, default), or simulated clicks (points) or a simulated "
        "scribble derived from that alpha and expanded by self-attention",
    )  # fmt: skip
    group.add_argument("--points", type=checks.int_range(1), default=None,
                       help=f"simulated clicks per reference for --prompt points|scribble (default {DEFAULT_POINTS})")
    group.add_argument("--top-m", type=checks.int_range(0), default=None,
                       help=f"cells added per prompt cell for --prompt points|scribble (default {DEFAULT_TOP_M})")
    group.add_argument("--num-references", type=checks.int_range(1), default=1,
                       help="the first N images of each group by name are its references (default 1)")
    group.add_argument("--fit", choices=FITS, default="stretch", help="how images reach the model's square")
    group.add_argument("--refine", action="store_true", help="full-resolution guided-filter edge refinement")


def protocol_from_args(args: argparse.Namespace) -> EvaluationProtocol:
    """The protocol the parsed options describe.

    Raises:
        CommandError: options that do not go together (e.g. --points with --prompt mask).
    """
    sparse_only = [flag for flag, value in (("--points", args.points), ("--top-m", args.top_m)) if value is not None]
    if sparse_only and args.prompt == "mask":
        raise CommandError(
            f"{' and '.join(sparse_only)} only apply to --prompt points or scribble, got --prompt mask; drop "
            f"{' and '.join(sparse_only)} or choose --prompt points|scribble."
        )
    if args.num_references > 1 and args.references is not None:
        raise CommandError(
            f"--num-references {args.num_references} and --references {args.references} both choose the references; "
            "give one of them (the references file names each group's references itself)."
        )
    try:
        return EvaluationProtocol(
            resolution=args.resolution, region=args.region, references_file=args.references,
            groups_file=args.groups_file, seed=args.seed, batch_size=args.batch_size, save_alphas=args.save_alphas,
            prompt=args.prompt, num_points=DEFAULT_POINTS if args.points is None else args.points,
            top_m=DEFAULT_TOP_M if args.top_m is None else args.top_m, num_references=args.num_references,
            fit=args.fit, refine=args.refine,
        )  # fmt: skip
    except ValueError as error:
        raise CommandError(str(error)) from error


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``evaluate``: check the dataset, build the engine, evaluate with a progress bar, print the
    overall rows and the targets that could not be evaluated (exit code 1 if any)."""
    protocol = protocol_from_args(args)
    check_weight_options(args)
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
