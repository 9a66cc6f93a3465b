"""Command line: ``python -m icm_core {matte,matte-dataset,convert,demo,evaluate,train}`` (one module per command
in this package; ``matte-dataset`` lives in :mod:`icm_core.scale`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from . import checks
from .checks import CommandError, OneLineArgumentParser
from ..errors import NonFiniteError, WeightsNotFoundError
from ..io.images import ImageReadError
from ..io.datasets import DatasetError
from ..io.file_safety import UnsafeOutputError
from ..loader import MODELS_DIR_VARIABLE, default_models_dir
from .matte_job import OutputCollisionError
from ..pipeline import EmptyReferenceError
from ..synthetic.demo_model import DemoModelError
from ..training.state import TrainingStateError
from ..weights.checkpoint_io import CheckpointError
from ..weights.decoder import DecoderCheckpointError
from .evaluate import add_evaluate_parser
from .matte import add_matte_parser
from ..scale.command import add_dataset_parser
from .options import add_runtime_options, runtime
from .train import add_train_parser

# User mistakes: one ``error:`` line, no traceback (``--debug`` shows it).
USER_ERRORS: tuple[type[BaseException], ...] = (
    CommandError, UnsafeOutputError, OutputCollisionError, WeightsNotFoundError, CheckpointError,
    DecoderCheckpointError, EmptyReferenceError, DatasetError, TrainingStateError, NonFiniteError, ImageReadError,
    DemoModelError,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m icm_core", description="In-Context Matting (IconMatting).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    add_matte_parser(commands)
    add_dataset_parser(commands)

    convert = commands.add_parser("convert", help="convert a decoder checkpoint to .safetensors (checked)")
    convert.add_argument("source", type=Path, help="decoder checkpoint (.pth/.ckpt/.safetensors)")
    convert.add_argument("target", type=Path, help="new .safetensors file (written, reloaded and checked, then renamed)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing target (never the source)")
    convert.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    demo = commands.add_parser("demo", help="run the sample job (real weights if found, else the small demo model on synthetic scenes)")
    demo.add_argument("--out", type=Path, default=Path("icm_demo_output"), help="output folder")
    demo.add_argument(
        "--models-dir", type=Path, default=None, help=f"weights folder (default ${MODELS_DIR_VARIABLE} or ~/.cache/icm_models)"
    )
    demo.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo run in --out")
    add_runtime_options(demo)
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    add_evaluate_parser(commands)
    add_train_parser(commands)
    return parser


def _run_convert(args: argparse.Namespace) -> int:
    from ..weights.decoder import convert_decoder

    if args.target.suffix != ".safetensors":
        raise CommandError(f"the converted file must end in .safetensors, got {args.target.name}")
    try:
        convert_decoder(args.source, args.target, overwrite=args.overwrite)
    except RuntimeError as error:  # the reloaded file differs: nothing was written
        raise CommandError(str(error)) from error
    print(f"wrote {args.target} (reloaded and checked: identical outputs)")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from ..synthetic.demo_model import DEMO_NOTICE
    from ..loader import find_default_weights
    from .demo import check_outputs_free, run_demo

    models_dir = args.models_dir or default_models_dir()
    check_outputs_free(args.out, demo_model=find_default_weights(models_dir) is None, overwrite=args.overwrite)
    with tqdm(total=3, unit="image", desc="demo") as bar:
        result = run_demo(
            args.out, models_dir, runtime(args), progress=lambda done, total: bar.update(done - bar.n),
            overwrite=args.overwrite,
        )
    if not result.used_real_weights:
        banner = "!" * 100
        print(f"{banner}\n{DEMO_NOTICE.format(models_dir=models_dir)}\n{banner}", file=sys.stderr)
    print(f"demo: wrote {len(result.alpha_paths)} alphas and {result.overview_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a user mistake prints one ``error: ...`` line on stderr and exits with code 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"convert": _run_convert, "demo": _run_demo}
    handler = getattr(args, "handler", None) or handlers[args.command]  # matte/evaluate/train register args.handler
    try:
        return handler(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        checks.fail(str(error))
