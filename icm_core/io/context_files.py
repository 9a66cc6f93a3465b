"""Save and load reference contexts as ``.safetensors`` (tensors + metadata; never pickle).

A saved context can be reused across sessions and machines with the same model: matting with it on another
model or configuration is refused (its fingerprint is stored and checked).

File layout (format ``icm-context``, version 1):
    tensors: ``tokens`` ``[K, C]`` float32; ``token_masks`` ``[R, g, g]`` uint8 0/1 (K = number of ones, every
    reference at least one); ``reference_sizes`` ``[R, 2]`` int64 (H, W >= 1).
    metadata: ``format``, ``version``, ``fingerprint``, ``prompt_kind``, ``num_tokens`` (= K), ``description``;
    newer files also ``token_channels`` (= C) and ``token_grid`` (= g), checked when present.
Loading checks all of this (and that the tokens are finite) before building the context.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..pipeline import ReferenceContext
from ..weights.checkpoint_io import CheckpointError, read_checkpoint, write_safetensors_atomic
from ..weights.finite import first_non_finite

FORMAT_TAG = "icm-context"
FORMAT_VERSION = "1"
PROMPT_KINDS = ("mask", "points", "scribble", "mixed")
TENSOR_NAMES = ("tokens", "token_masks", "reference_sizes")
_FINGERPRINT = re.compile(r"[0-9A-Za-z_.:+-]{1,128}")
_FIX = "save the context again (Save Reference Context or `python -m icm_core matte --save-context`)"


class ContextFileError(CheckpointError):
    """A file is not a valid saved reference context; the message names the file, the problem and the fix."""


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
        "token_channels": str(int(context.tokens.shape[1])),
        "token_grid": str(int(context.token_masks.shape[-1])),
        "description": description,
    }
    write_safetensors_atomic(tensors, path, metadata)
    return path


def load_context(path: str | Path) -> ReferenceContext:
    """Read and validate a context written by :func:`save_context`.

    Raises:
        CheckpointError: the file is missing, unreadable or claims more data than it holds.
        ContextFileError: it is not a saved context, has another format version, inconsistent metadata or
            shapes, or NaN/Inf tokens.
    """
    contents = read_checkpoint(path)
    metadata, tensors = contents.metadata, contents.tensors
    _check_metadata(path, metadata)
    names = set(tensors)
    if names != set(TENSOR_NAMES):
        raise ContextFileError(
            f"{path}: expected exactly the tensors {list(TENSOR_NAMES)}, found {sorted(names)}; the file is "
            f"damaged, {_FIX}."
        )
    tokens, masks, sizes = (tensors[name] for name in TENSOR_NAMES)
    _check_shapes(path, metadata, tokens, masks, sizes)
    report = first_non_finite([("tokens", tokens)])
    if report is not None:
        raise ContextFileError(
            f"{path}: tensor 'tokens' holds {report.describe()}; expected finite features. The context was saved "
            f"from a model that produced NaN/Inf; check the model's precision settings and {_FIX}."
        )
    return ReferenceContext(
        tokens=tokens.float(),
        token_masks=masks.bool(),
        reference_sizes=tuple((int(h), int(w)) for h, w in sizes.tolist()),
        fingerprint=metadata["fingerprint"],
        prompt_kind=metadata["prompt_kind"],
    )


def _check_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FORMAT_TAG:
        raise ContextFileError(
            f"{path} is not a saved IconMatting reference context (format {metadata.get('format')!r}, expected "
            f"{FORMAT_TAG!r}); save one with Save Reference Context or `python -m icm_core matte --save-context`."
        )
    if metadata.get("version") != FORMAT_VERSION:
        raise ContextFileError(
            f"{path}: context format version {metadata.get('version')!r} is not supported (expected "
            f"{FORMAT_VERSION!r}); {_FIX} with this version."
        )
    fingerprint = metadata.get("fingerprint", "")
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise ContextFileError(
            f"{path}: metadata 'fingerprint' must be 1-128 letters, digits or _.:+-, got {fingerprint[:40]!r}; "
            f"the file is damaged, {_FIX}."
        )
    kind = metadata.get("prompt_kind")
    if kind not in PROMPT_KINDS:
        raise ContextFileError(
            f"{path}: metadata 'prompt_kind' must be one of {list(PROMPT_KINDS)}, got {kind!r}; {_FIX}."
        )
    for key in ("num_tokens", "token_channels", "token_grid"):
        value = metadata.get(key)
        if (value is not None or key == "num_tokens") and not (value or "").isdigit():
            raise ContextFileError(f"{path}: metadata '{key}' must be a positive integer, got {value!r}; {_FIX}.")


def _check_shapes(
    path: str | Path, metadata: dict[str, str], tokens: torch.Tensor, masks: torch.Tensor, sizes: torch.Tensor
) -> None:
    problems = []
    if tokens.ndim != 2 or not tokens.is_floating_point() or 0 in tokens.shape:
        problems.append(f"tokens must be a float [K >= 1, C >= 1] tensor, got {tokens.dtype} {list(tokens.shape)}")
    if masks.ndim != 3 or masks.shape[0] == 0 or masks.shape[1] != masks.shape[2] or masks.shape[1] == 0:
        problems.append(f"token_masks must be [R >= 1, g, g], got {list(masks.shape)}")
    elif masks.dtype not in (torch.uint8, torch.bool) or bool((masks.to(torch.uint8) > 1).any()):
        problems.append(f"token_masks must hold 0/1 (uint8 or bool), got {masks.dtype}")
    if sizes.ndim != 2 or sizes.shape[1:] != (2,) or sizes.dtype != torch.int64 or bool((sizes < 1).any()):
        problems.append(f"reference_sizes must be int64 [R, 2] with sizes >= 1, got {sizes.dtype} {list(sizes.shape)}")
    if problems:
        raise ContextFileError(f"{path}: " + "; ".join(problems) + f". The file is damaged; {_FIX}.")
    per_reference = masks.to(torch.int64).sum(dim=(1, 2))
    expected = {
        "reference_sizes rows (= references)": (int(sizes.shape[0]), int(masks.shape[0])),
        "tokens rows K (= ones in token_masks)": (int(tokens.shape[0]), int(per_reference.sum())),
        "metadata num_tokens (= K)": (int(metadata["num_tokens"]), int(tokens.shape[0])),
    }
    if "token_channels" in metadata:
        expected["tokens columns C (= metadata token_channels)"] = (int(tokens.shape[1]), int(metadata["token_channels"]))
    if "token_grid" in metadata:
        expected["token_masks grid g (= metadata token_grid)"] = (int(masks.shape[1]), int(metadata["token_grid"]))
    wrong = [f"{what}: {got} vs {want}" for what, (got, want) in expected.items() if got != want]
    if bool((per_reference == 0).any()):
        wrong.append(f"reference {int((per_reference == 0).nonzero()[0])} has an empty token mask")
    if wrong:
        raise ContextFileError(f"{path}: inconsistent context: " + "; ".join(wrong) + f". {_FIX[0].upper()}{_FIX[1:]}.")


def describe_context(path: str | Path) -> dict[str, str]:
    """The metadata of a saved context (fingerprint, prompt kind, token count, description)."""
    return dict(read_checkpoint(path).metadata)


__all__ = ["ContextFileError", "FORMAT_TAG", "describe_context", "load_context", "save_context"]
