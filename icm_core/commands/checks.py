"""Checking command-line values before anything heavy runs: option types, devices, one-line errors.

A user mistake ends the command with exactly one line ``error: ...`` on stderr and exit code 2 (``--debug`` shows
the traceback instead). Option values are checked by argparse types here, the files they name by the commands
before any model is loaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn

import torch

SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed accepts 0 .. 2**64 - 1
USAGE_EXIT = 2


class CommandError(ValueError):
    """A user error found by a command (bad option value, unusable file); the message is shown as is."""


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) folded into one space."""
    return " ".join(str(text).split())


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with code 2."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line gives one ``error: ...`` line (pointing at ``--help``), not the usage."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (see '{self.prog} --help')")


class DeprecatedFlag(argparse.Action):
    """A former spelling of a flag: hidden from ``--help``, sets the new flag's value, prints a warning."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs) -> None:  # noqa: ANN001 - argparse's
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's
        print(f"warning: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, True)


def _integer(text: str, what: str) -> int:
    try:
        return int(text.strip().replace("_", ""), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def seed(text: str) -> int:
    """A noise seed: an integer in 0 .. 2**64 - 1."""
    value = _integer(text, f"an integer seed in 0..{SEED_MAX}")
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed must be in 0..{SEED_MAX} (0 .. 2**64 - 1), got {text}")
    return value


def int_range(low: int, high: int | None = None) -> argparse._ActionType:
    """An argparse type: an integer in ``low .. high`` (no upper bound when ``high`` is None)."""
    span = f">= {low}" if high is None else f"in {low}..{high}"

    def parse(text: str) -> int:
        value = _integer(text, f"an integer {span}")
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected an integer {span}, got {text}")
        return value

    parse.__name__ = f"integer {span}"
    return parse


def _number(name: str, doc: str, accepts: Callable[[float], bool], wanted: str, checked: str) -> Callable[[str], float]:
    """An argparse type named ``name``: a float for which ``accepts`` holds. Errors read ``expected a number
    <wanted>, got 'text'`` (not a number) and ``expected <checked>, got text`` (out of range, NaN, Inf)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {wanted}, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {checked}, got {text}")
        return value

    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = doc
    return parse


# Every comparison with NaN is False, so each of these refuses NaN.
unit_fraction = _number("unit_fraction", "A fraction in (0, 1].", lambda value: 0.0 < value <= 1.0,
                        "in (0, 1]", "a number in (0, 1]")  # fmt: skip
positive_float = _number("positive_float", "A finite number > 0.", lambda value: 0.0 < value < math.inf,
                         "> 0", "a finite number > 0")  # fmt: skip
non_negative_float = _number("non_negative_float", "A finite number >= 0.", lambda value: 0.0 <= value < math.inf,
                             ">= 0", "a finite number >= 0")  # fmt: skip


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device(text: str) -> str:
    """A torch device this machine has: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``xpu[:N]``."""
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; expected cpu, cuda, cuda:N (N = GPU index), mps or xpu"
        ) from None
    if parsed.type == "cpu":
        return text
    if parsed.type == "cuda":
        count = _cuda_devices()
        if count == 0:
            raise argparse.ArgumentTypeError(
                f"device {text!r} was requested but torch sees no CUDA GPU on this machine (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(
                f"device {text!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}"
            )
        return text
    if parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"device {text!r}: Apple MPS is not available here; use --device cpu")
        return text
    if parsed.type == "xpu":
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            raise argparse.ArgumentTypeError(f"device {text!r}: no Intel XPU is available here; use --device cpu")
        return text
    raise argparse.ArgumentTypeError(f"device {text!r} is not supported; expected cpu, cuda, cuda:N, mps or xpu")
