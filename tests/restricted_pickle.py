"""Test helper: a ``pickle``-like object (``loads``) over the core's :class:`RestrictedUnpickler`, to feed it plain
pickles (the product reads pickles only inside torch checkpoint archives, see ``icm_core.weights.torch_archive``)."""

from __future__ import annotations

import io
from typing import Any

from icm_core.weights.restricted_unpickler import RestrictedUnpickler


class RestrictedPickle:
    """``loads(data)`` unpickles with the restricted unpickler (no persistent ids, lengths bounded by the data);
    ``placeholders`` collects the qualified names of every global replaced by a placeholder."""

    def __init__(self) -> None:
        self.placeholders: set[str] = set()

    def loads(self, data: bytes) -> Any:
        return RestrictedUnpickler(io.BytesIO(data), max_bytes=len(data), placeholders=self.placeholders).load()
