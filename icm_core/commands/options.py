"""The one place where command-line options become an engine: weights, device, precision, extraction settings.

Every command that runs the model (``matte``, ``evaluate``, ``train``, ``demo``) declares its options with
:func:`add_runtime_options` (and, where weights are named on the command line, :func:`add_weight_options`) and
builds its engine with :func:`build_engine`, so a precision, device or weights option means the same everywhere.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ExtractionConfig
from ..loader import load_engine
from ..modeling.decoder import InContextDecoder
from ..pipeline import IconMatting
from ..weights.decoder import load_decoder
from . import checks
from .checks import CommandError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
AUTOCAST_DTYPES = ("bf16", "fp16")
DEFAULT_ENSEMBLE = 4
TINY_ENSEMBLE = 2
TINY_IMAGE_SIZE = 128
TINY_EXTRACTORS = ("random", "demo")
TINY_HELP = (
    "FOR TESTING ONLY: use a tiny random untrained SD + decoder (icm_core.tiny, 128 px) instead of real weights; "
    "--sd is ignored and the numbers mean nothing"
)


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision the frozen UNet/VAE run (the decoder is always fp32).

    Attributes:
        device: torch device string, e.g. ``"cpu"``, ``"cuda:1"``.
        dtype: UNet/VAE weight dtype (bf16 runs as fp16, see :mod:`icm_core.features.precision`).
        autocast_dtype: run the UNet/VAE under autocast in this dtype, or None.
        channels_last: channels-last UNet memory layout.
    """

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False


def add_runtime_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``, ``--dtype``, ``--autocast``, ``--channels-last``."""
    parser.add_argument("--device", type=checks.device, default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    add_precision_options(parser)


def add_precision_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--dtype``, ``--autocast``, ``--channels-last`` (commands that place models themselves add their own device)."""
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="UNet/VAE weight precision (default fp32)")
    parser.add_argument("--autocast", choices=AUTOCAST_DTYPES, default=None,
                        help="run VAE/UNet under autocast in this precision (bf16 runs as fp16; norms, softmax, decoder stay fp32)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last UNet (faster convolutions on GPUs)")


def add_extraction_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, ensemble_default: int | None) -> None:
    """``--ensemble`` and ``--timestep`` (``ensemble_default`` None: 4, or 2 with ``--tiny``)."""
    shown = "4; 2 with --tiny" if ensemble_default is None else str(ensemble_default)
    parser.add_argument("--ensemble", type=checks.int_range(1), default=ensemble_default,
                        help=f"noisy copies per image (default {shown})")
    parser.add_argument("--timestep", type=checks.int_range(0, 999), default=200, help="diffusion timestep 0..999 (default 200)")


def add_weight_options(parser: argparse.ArgumentParser, decoder_help: str) -> None:
    """Which weights to load (``--sd``, ``--decoder``, testing-only ``--tiny``), where and how to run them."""
    parser.add_argument("--sd", type=Path, default=None, help="SD 2.1: diffusers folder or single .safetensors/.ckpt")
    parser.add_argument("--decoder", type=Path, default=None, help=decoder_help)
    add_runtime_options(parser)
    add_extraction_options(parser, None)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    testing = parser.add_argument_group("testing")
    testing.add_argument("--tiny", action="store_true", help=TINY_HELP)
    testing.add_argument("--tiny-extractor", choices=TINY_EXTRACTORS, default=None,
                         help="with --tiny: 'random' (default) seeded random weights; 'demo' the demo model's constructed "
                              "feature extractor (icm_core.synthetic.demo_extractor) the shipped demo decoder is trained on")


def runtime(args: argparse.Namespace) -> Runtime:
    """The :class:`Runtime` the parsed options describe."""
    autocast = getattr(args, "autocast", None)
    return Runtime(args.device, DTYPES[args.dtype], DTYPES[autocast] if autocast else None,
                   getattr(args, "channels_last", False))


def check_weight_options(args: argparse.Namespace, decoder_required: bool = True) -> None:
    """The weight options a run needs are there (checked before anything is loaded).

    Raises:
        CommandError: --sd (or a required --decoder) is missing.
    """
    extractor = getattr(args, "tiny_extractor", None)
    if getattr(args, "tiny", False):
        return
    if extractor is not None:
        raise CommandError(f"--tiny-extractor {extractor} chooses the weights of --tiny's model; add --tiny.")
    if args.sd is None:
        raise CommandError("--sd is required (SD 2.1 diffusers folder or single checkpoint file).")
    if decoder_required and args.decoder is None:
        raise CommandError("--decoder is required (IconMatting decoder .pth/.ckpt/.safetensors).")


def build_engine(args: argparse.Namespace, decoder: InContextDecoder | None = None) -> IconMatting:
    """The engine the options describe; ``decoder`` (already built) wins over ``--decoder``.

    The decoder is loaded first: its image size fixes the extraction size (768 for the release).

    Raises:
        CommandError: a needed option is missing, or the weights cannot be loaded.
    """
    try:
        return _build_engine(args, decoder)
    except (ValueError, FileNotFoundError) as error:  # weights missing, damaged or of another model
        raise CommandError(str(error)) from error


def _tiny_engine(args: argparse.Namespace, decoder: InContextDecoder | None, ensemble: int) -> IconMatting:
    """``--tiny``: the seeded tiny backend (random or the demo's constructed one) + ``decoder`` or the tiny one."""
    from ..tiny import build_tiny_backend, build_tiny_decoder

    if getattr(args, "tiny_extractor", None) == "demo":
        from ..synthetic.demo_extractor import build_demo_backend

        backend = build_demo_backend(seed=0, device=args.device)
    else:
        backend = build_tiny_backend(seed=0, device=args.device)
    decoder = decoder if decoder is not None else build_tiny_decoder(seed=0, image_size=TINY_IMAGE_SIZE)
    return IconMatting(backend, decoder, ExtractionConfig(args.timestep, ensemble, decoder.config.image_size))


def _build_engine(args: argparse.Namespace, decoder: InContextDecoder | None) -> IconMatting:
    tiny = getattr(args, "tiny", False)
    ensemble = args.ensemble if args.ensemble is not None else (TINY_ENSEMBLE if tiny else DEFAULT_ENSEMBLE)
    if decoder is None and args.decoder is not None:
        decoder = load_decoder(args.decoder)
    if tiny:
        return _tiny_engine(args, decoder, ensemble)
    check_weight_options(args, decoder_required=decoder is None)
    extraction = ExtractionConfig(args.timestep, ensemble, decoder.config.image_size)
    run = runtime(args)
    return load_engine(
        args.sd, decoder, device=run.device, dtype=run.dtype, extraction=extraction,
        autocast_dtype=run.autocast_dtype, channels_last=run.channels_last,
    )
