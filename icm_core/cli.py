"""Command line: ``python -m icm_core {matte,convert,demo,evaluate,train}``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from .config import ExtractionConfig
from .errors import WeightsNotFoundError
from .evaluation.commands import add_evaluate_parser
from .image_io import read_image, read_mask, save_image_atomic
from .loader import MODELS_DIR_VARIABLE, default_models_dir, load_engine
from .pipeline import EmptyReferenceError
from .training.commands import add_train_parser
from .weights.checkpoint_io import CheckpointError
from .weights.decoder import DecoderCheckpointError, load_decoder

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="UNet/VAE precision (default fp32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m icm_core", description="In-Context Matting (IconMatting).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    matte = commands.add_parser("matte", help="matte target images from one annotated reference")
    matte.add_argument("targets", nargs="+", type=Path, help="target image files")
    matte.add_argument("--sd", required=True, type=Path, help="SD 2.1: diffusers folder or single .safetensors/.ckpt")
    matte.add_argument("--decoder", required=True, type=Path, help="IconMatting decoder (.pth/.ckpt/.safetensors)")
    matte.add_argument("--reference", required=True, type=Path, help="reference image")
    matte.add_argument("--reference-mask", required=True, type=Path, help="RoI mask of the reference (white = RoI)")
    matte.add_argument("--out", required=True, type=Path, help="output folder for <target name>.png alphas")
    matte.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    matte.add_argument("--ensemble", type=int, default=4, help="noisy copies per image (default 4)")
    matte.add_argument("--timestep", type=int, default=200, help="diffusion timestep (default 200)")
    matte.add_argument("--batch-size", type=int, default=4, help="targets per UNet pass (default 4)")
    _add_runtime_options(matte)

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


def _check_outputs(targets: Sequence[Path], inputs: Sequence[Path], out: Path) -> list[Path]:
    input_dirs = {path.resolve().parent for path in inputs}
    if out.resolve() in input_dirs:
        raise SystemExit(f"error: --out {out} is an input folder; choose a separate output folder.")
    names = [out / f"{path.stem}.png" for path in targets]
    duplicates = sorted({n.name for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"error: several targets would write the same output file(s): {', '.join(duplicates)}")
    missing = [str(path) for path in inputs if not path.is_file()]
    if missing:
        raise SystemExit("error: input file(s) not found: " + ", ".join(missing))
    return names


def _run_matte(args: argparse.Namespace) -> int:
    outputs = _check_outputs(args.targets, [*args.targets, args.reference, args.reference_mask], args.out)
    decoder = load_decoder(args.decoder)  # first: its image size fixes the extraction size (768 for the release)
    extraction = ExtractionConfig(
        timestep=args.timestep, ensemble_size=args.ensemble, image_size=decoder.config.image_size
    )
    engine = load_engine(args.sd, decoder, device=args.device, dtype=DTYPES[args.dtype], extraction=extraction)
    context = engine.encode_reference(read_image(args.reference), read_mask(args.reference_mask), seed=args.seed)
    images = [read_image(path) for path in args.targets]
    with tqdm(total=len(images), unit="image", desc="matting") as bar:
        for index, alpha in engine.iter_matte(context, images, seed=args.seed, batch_size=args.batch_size):
            save_image_atomic(alpha, outputs[index])
            bar.update(1)
    print(f"wrote {len(outputs)} alpha mattes to {args.out}")
    return 0


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
    handlers = {"matte": _run_matte, "convert": _run_convert, "demo": _run_demo}
    handler = getattr(args, "handler", None) or handlers[args.command]  # evaluate/train register args.handler
    try:
        return handler(args)
    except (WeightsNotFoundError, CheckpointError, DecoderCheckpointError, EmptyReferenceError) as error:
        # Bad or missing user files: one clear line, not a traceback.
        raise SystemExit(f"error: {error}") from error
