"""Exceptions shared across icm_core (kept import-light: no diffusers/transformers here)."""

from __future__ import annotations


class WeightsNotFoundError(FileNotFoundError):
    """Model weights (or one of their parts) are not where they were expected; the message says where to put them."""


class NonFiniteError(ValueError):
    """NaN or Inf where finite numbers are required (an input, the model's features or alpha); the message names
    the source and the likely fix."""


def image_read_errors() -> tuple[type[BaseException], ...]:
    """What reading one damaged or hostile image file can raise: PIL parsers raise a few kinds besides OSError
    (``SyntaxError``, ``EOFError``, ``DecompressionBombError``); checks on the pixels raise ``ValueError``.
    Long jobs catch exactly these per item, list the item with the reason and go on."""
    from PIL import Image

    return (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
