"""``python -m icm_core train``: the CLI face of :func:`~icm_core.training.trainer.train_decoder`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ..io.datasets import load_dataset
from ..modeling.decoder import InContextDecoder
from ..training.state import STATE_JSON, TrainingStateError, read_state_document
from ..training.trainer import StepLog, TrainingConfig, train_decoder
from . import checks
from .checks import CommandError
from .options import add_weight_options, build_engine, check_weight_options


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` on the CLI's subparsers (``set_defaults(handler=run_train)``)."""
    parser = subparsers.add_parser(
        "train",
        help="fine-tune the decoder on a grouped matting dataset (SD stays frozen)",
        description="Fine-tune the in-context decoder on reference/target pairs drawn from the groups of an "
        "ICM-57-layout folder. Writes decoder.safetensors (official key layout), checkpoints/, "
        "training_state.* (for --resume) and loss_log.jsonl into --out.",
    )
    parser.add_argument("dataset", type=Path, help="training root with image/, alpha/ folders and a groups JSON")
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, state, loss log)")
    add_weight_options(
        parser,
        "decoder to start from (.pth/.ckpt/.safetensors); if absent, training starts from a RANDOMLY "
        "initialised decoder (seeded by --seed)",
    )
    parser.add_argument("--steps", type=checks.int_range(1), default=10_000, help="total optimizer steps (default 10000)")
    parser.add_argument("--batch-size", type=checks.int_range(1), default=2, help="targets per step, sharing one reference (default 2)")
    parser.add_argument("--lr", type=checks.positive_float, default=4e-4, help="AdamW learning rate (default 4e-4)")
    parser.add_argument("--weight-decay", type=checks.non_negative_float, default=0.01, help="AdamW weight decay (default 0.01)")
    parser.add_argument("--warmup-steps", type=checks.int_range(0), default=250, help="linear warm-up steps (default 250)")
    parser.add_argument("--cooldown-steps", type=checks.int_range(0), default=0,
                        help="the learning rate falls linearly to ~0 over the last N steps (default 0: constant)")
    parser.add_argument("--seed", type=checks.seed, default=0, help="sampling / noise / init seed, 0..2**64-1")
    parser.add_argument(
        "--fixed-crops", action="store_true",
        help="one crop and noise seed per image for the whole run (needed by --cache-dir)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="cache frozen SD features here (safetensors); requires --fixed-crops",
    )  # fmt: skip
    parser.add_argument("--checkpoint-every", type=checks.int_range(1), default=1000, help="save every N steps (default 1000)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--groups-file", type=Path, default=None, help="groups JSON (default: found next to the root)")
    parser.add_argument(
        "--segmentation-band", type=checks.int_range(0), default=None,
        help="px ignored on each side of binary-mask edges (default: image size / 64)",
    )  # fmt: skip
    parser.add_argument("--validation", type=Path, default=None, help="held-out dataset root for validation losses")
    parser.add_argument("--validate-every", type=checks.int_range(0), default=0, help="validate every N steps (default: never)")
    parser.set_defaults(handler=run_train)
    return parser


def _initial_decoder(args: argparse.Namespace) -> InContextDecoder | None:
    """None = let build_engine load --decoder (or the tiny decoder); else a seeded random SD 2.1 decoder."""
    if args.decoder is not None or args.tiny:
        return None
    from ..config import DecoderConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        return InContextDecoder(DecoderConfig())


def _check_run_folder(args: argparse.Namespace) -> None:
    """Datasets, weight options and the run folder, checked before any model is loaded.

    Raises:
        CommandError, DatasetError, TrainingStateError: with what to fix.
    """
    check_weight_options(args, decoder_required=False)
    load_dataset(args.dataset, args.groups_file)
    if args.validation is not None:
        load_dataset(args.validation)
    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out} is a file; expected a folder for the run.")
    if args.resume:
        read_state_document(args.out)
    elif (args.out / STATE_JSON).exists():
        raise TrainingStateError(
            f"{args.out} already holds a training run ({STATE_JSON}); resume it (--resume) or choose another --out."
        )


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``train``: build the engine, train with a progress bar, print where the results are."""
    try:
        config = TrainingConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
            cooldown_steps=args.cooldown_steps,
            seed=args.seed,
            fixed_crops=args.fixed_crops,
            cache_dir=args.cache_dir,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            groups_file=args.groups_file,
            segmentation_band=args.segmentation_band,
            validation_root=args.validation,
            validate_every=args.validate_every,
        )
    except ValueError as error:
        raise CommandError(str(error)) from error
    _check_run_folder(args)
    engine = build_engine(args, decoder=_initial_decoder(args))
    if args.decoder is None:
        start = "the tiny random decoder (--tiny)" if args.tiny else "a randomly initialised decoder"
        print(f"note: no --decoder given: training starts from {start}", file=sys.stderr)
    with tqdm(total=config.steps, unit="step", desc="training") as bar:

        def progress(record: StepLog) -> None:
            bar.update(record.step - bar.n)
            bar.set_postfix(loss=f"{record.loss:.4f}", lr=f"{record.lr:.2e}")

        result = train_decoder(engine, args.dataset, args.out, config, progress=progress)
    if result.history:
        print(f"trained steps {result.start_step + 1}..{result.steps}; last loss {result.history[-1].loss:.4f}")
    if config.cache_dir is not None:
        print(f"feature cache: {result.cache_hits} hits, {result.cache_misses} misses")
    print(f"wrote {result.checkpoint}, {result.state_file} and {result.log_file}")
    return 0
