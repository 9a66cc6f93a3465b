"""Exceptions shared across icm_core (kept import-light: no diffusers/transformers here)."""

from __future__ import annotations


class WeightsNotFoundError(FileNotFoundError):
    """Model weights (or one of their parts) are not where they were expected; the message says where to put them."""


class NonFiniteError(ValueError):
    """NaN or Inf where finite numbers are required (an input, the model's features or alpha); the message names
    the source and the likely fix."""
