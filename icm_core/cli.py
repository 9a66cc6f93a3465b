"""Command line: ``python -m icm_core {matte,convert,demo,evaluate,train}`` (matte: see matte_command.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .errors import NonFiniteError, WeightsNotFoundError
from .image_io import ImageReadError
from .evaluation.commands import add_evaluate_parser
from .matte_command import DTYPES, add_matte_parser
from .loader import MODELS_DIR_VARIABLE, default_models_dir
from .pipeline import EmptyReferenceError
from .training.commands import add_train_parser
from .weights.checkpoint_io import CheckpointError
from .weights.decoder import DecoderCheckpointError



def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="UNet/VAE precision (default fp32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m icm_core", description="In-Context Matting (IconMatting).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    add_matte_parser(commands)

    convert = commands.add_parser("convert", help="convert a decoder checkpoint to .safetensors (checked)")
    convert.add_argument("source", type=Path, help="decoder checkpoint (.pth/.ckpt/.safetensors)")
    convert.add_argument("target", type=Path, help="output .safetensors file")

    demo = commands.add_parser("demo", help="run the shipped sample job (real weights if found, else untrained)")
    demo.add_argument("--out", type=Path, default=Path("icm_demo_output"), help="output folder")
    demo.add_argument(
        "--models-dir", type=Path, default=None, help=f"weights folder (default ${MODELS_DIR_VARIABLE} or ~/.cache/icm_models)"
    )
    _add_runtime_options(demo)
    add_evaluate_parser(commands)
    add_train_parser(commands)
    return parser


def _run_convert(args: argparse.Namespace) -> int:
    from .weights.decoder import convert_decoder

    if args.target.suffix != ".safetensors":
        raise SystemExit(f"error: the converted file must end in .safetensors, got {args.target.name}")
    convert_decoder(args.source, args.target)
    print(f"wrote {args.target} (reloaded and checked: identical outputs)")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import UNTRAINED_WARNING, run_demo

    models_dir = args.models_dir or default_models_dir()
    with tqdm(total=3, unit="image", desc="demo") as bar:
        result = run_demo(
            args.out, models_dir, args.device, DTYPES[args.dtype], progress=lambda done, total: bar.update(done - bar.n)
        )
    if not result.used_real_weights:
        banner = "!" * 100
        print(f"{banner}\n{UNTRAINED_WARNING.format(models_dir=models_dir)}\n{banner}", file=sys.stderr)
    print(f"demo: wrote {len(result.alpha_paths)} alphas and {result.overview_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"convert": _run_convert, "demo": _run_demo}
    handler = getattr(args, "handler", None) or handlers[args.command]  # evaluate/train register args.handler
    try:
        return handler(args)
    except (WeightsNotFoundError, CheckpointError, DecoderCheckpointError, EmptyReferenceError, NonFiniteError,
            ImageReadError) as error:
        # Bad or missing user files: one clear line, not a traceback.
        raise SystemExit(f"error: {error}") from error
