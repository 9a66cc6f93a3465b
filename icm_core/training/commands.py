"""``python -m icm_core train``: the CLI face of :func:`~icm_core.training.trainer.train_decoder`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ..evaluation.commands import add_engine_options, build_engine
from ..evaluation.dataset import DatasetError
from ..modeling.decoder import InContextDecoder
from .state import TrainingStateError
from .trainer import StepLog, TrainingConfig, train_decoder


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
    add_engine_options(
        parser,
        "decoder to start from (.pth/.ckpt/.safetensors); if absent, training starts from a RANDOMLY "
        "initialised decoder (seeded by --seed)",
    )
    parser.add_argument("--steps", type=int, default=10_000, help="total optimizer steps (default 10000)")
    parser.add_argument("--batch-size", type=int, default=2, help="targets per step, sharing one reference (default 2)")
    parser.add_argument("--lr", type=float, default=4e-4, help="AdamW learning rate (default 4e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    parser.add_argument("--warmup-steps", type=int, default=250, help="linear warm-up steps (default 250)")
    parser.add_argument("--seed", type=int, default=0, help="sampling / noise / init seed (default 0)")
    parser.add_argument(
        "--fixed-crops", action="store_true",
        help="one crop and noise seed per image for the whole run (needed by --cache-dir)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="cache frozen SD features here (safetensors); requires --fixed-crops",
    )  # fmt: skip
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="save every N steps (default 1000)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--groups-file", type=Path, default=None, help="groups JSON (default: found next to the root)")
    parser.add_argument(
        "--segmentation-band", type=int, default=None,
        help="px ignored on each side of binary-mask edges (default: image size / 64)",
    )  # fmt: skip
    parser.add_argument("--validation", type=Path, default=None, help="held-out dataset root for validation losses")
    parser.add_argument("--validate-every", type=int, default=0, help="validate every N steps (default: never)")
    parser.set_defaults(handler=run_train)
    return parser


def _initial_decoder(args: argparse.Namespace) -> InContextDecoder | None:
    """None = let build_engine load --decoder (or the tiny decoder); else a seeded random SD 2.1 decoder."""
    if args.decoder is not None or args.tiny:
        return None
    from ..config import DecoderConfig

    print("note: no --decoder given: training starts from a randomly initialised decoder", file=sys.stderr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        return InContextDecoder(DecoderConfig())


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``train``: build the engine, train with a progress bar, print where the results are."""
    try:
        config = TrainingConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
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
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.tiny and args.decoder is None:
        print("note: --tiny without --decoder: training starts from the tiny random decoder", file=sys.stderr)
    engine = build_engine(args, decoder=_initial_decoder(args))
    with tqdm(total=config.steps, unit="step", desc="training") as bar:

        def progress(record: StepLog) -> None:
            bar.update(record.step - bar.n)
            bar.set_postfix(loss=f"{record.loss:.4f}", lr=f"{record.lr:.2e}")

        try:
            result = train_decoder(engine, args.dataset, args.out, config, progress=progress)
        except (DatasetError, TrainingStateError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if result.history:
        print(f"trained steps {result.start_step + 1}..{result.steps}; last loss {result.history[-1].loss:.4f}")
    if config.cache_dir is not None:
        print(f"feature cache: {result.cache_hits} hits, {result.cache_misses} misses")
    print(f"wrote {result.checkpoint}, {result.state_file} and {result.log_file}")
    return 0
