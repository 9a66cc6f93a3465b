"""Save and load reference contexts as ``.safetensors`` (tensors + metadata; never pickle).

A saved context can be reused across sessions and machines with the same model: matting with it on another
model or configuration is refused (its fingerprint is stored and checked).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .pipeline import ReferenceContext
from .weights.checkpoint_io import read_checkpoint, write_safetensors_atomic

FORMAT_TAG = "icm-context"
FORMAT_VERSION = "1"


def save_context(context: ReferenceContext, path: str | Path, description: str = "") -> Path:
    """Write a context atomically; ``description`` is free text stored in the metadata."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a reference context is saved as .safetensors, got {path.name}")
    tensors = {
        "tokens": context.tokens.float().cpu(),
        "token_masks": context.token_masks.to(torch.uint8).cpu(),
        "reference_sizes": torch.tensor(context.reference_sizes, dtype=torch.int64),
    }
    metadata = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "fingerprint": context.fingerprint,
        "prompt_kind": context.prompt_kind,
        "num_tokens": str(context.num_tokens),
        "description": description,
    }
    write_safetensors_atomic(tensors, path, metadata)
    return path


def load_context(path: str | Path) -> ReferenceContext:
    """Read a context written by :func:`save_context`."""
    contents = read_checkpoint(path)
    metadata = contents.metadata
    if metadata.get("format") != FORMAT_TAG:
        raise ValueError(
            f"{path} is not a saved IconMatting reference context (format {metadata.get('format')!r}, expected "
            f"{FORMAT_TAG!r}); save one with Save Reference Context or `python -m icm_core matte --save-context`."
        )
    if metadata.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: context format version {metadata.get('version')!r} is not supported (expected 1).")
    tensors = contents.tensors
    missing = {"tokens", "token_masks", "reference_sizes"} - set(tensors)
    if missing:
        raise ValueError(f"{path}: saved context lacks {sorted(missing)}; the file is damaged, save it again.")
    return ReferenceContext(
        tokens=tensors["tokens"].float(),
        token_masks=tensors["token_masks"].bool(),
        reference_sizes=tuple(tuple(int(v) for v in size) for size in tensors["reference_sizes"].tolist()),
        fingerprint=metadata["fingerprint"],
        prompt_kind=metadata.get("prompt_kind", "mask"),
    )


def describe_context(path: str | Path) -> dict[str, str]:
    """The metadata of a saved context (fingerprint, prompt kind, token count, description)."""
    return dict(read_checkpoint(path).metadata)


__all__ = ["save_context", "load_context", "describe_context", "FORMAT_TAG"]
