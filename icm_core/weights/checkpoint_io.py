"""The one place in ``icm_core`` that opens checkpoint files; no loader allocates far beyond the file's size.

* ``.safetensors``: the header is checked against the file size first (:mod:`.safetensors_layout`: header
  length, dtypes, shapes vs offsets), then the tensors are read with :mod:`safetensors`.
* ``.pth`` / ``.ckpt`` / ``.pt`` / ``.bin``: never ``torch.load``. :mod:`.torch_archive` parses the zip (or
  legacy) ``torch.save`` layout itself and runs the pickle through the restricted unpickler, which rebuilds
  tensors and plain containers only (every other global becomes an inert placeholder; no code stored in a
  checkpoint is ever run) and reads a storage only when its record holds exactly the bytes the pickle claims.

Every failure is reported as :class:`CheckpointError` naming the file, what was expected, what was found and
how to fix it; :class:`NonFiniteTensorError` (a subclass) names the tensor holding NaN/Inf.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .finite import first_non_finite
from .restricted_unpickler import CheckpointPlaceholder
from .safetensors_layout import SafetensorsLayoutError, check_safetensors_layout
from .torch_archive import TorchArchiveError, read_torch_file

__all__ = [
    "CheckpointContents",
    "CheckpointError",
    "NonFiniteTensorError",
    "check_finite",
    "read_checkpoint",
    "write_safetensors_atomic",
]

logger = logging.getLogger(__name__)

PathLike: TypeAlias = "str | os.PathLike[str]"

SAFETENSORS_SUFFIXES = frozenset({".safetensors"})
PICKLE_SUFFIXES = frozenset({".pth", ".ckpt", ".pt", ".bin"})

# What a damaged / hostile pickle can make the restricted reader raise. Anything here becomes a
# CheckpointError chained to the original exception.
_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    TorchArchiveError, pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError,
    LookupError, AssertionError, OverflowError, OSError, struct.error, zipfile.BadZipFile,
)  # fmt: skip

_FIX_PICKLE = (
    "Re-download the file, or re-save it with torch.save(model.state_dict(), path) or convert it to "
    ".safetensors (a decoder: `python -m icm_core convert`)."
)
# Tensors in a state dict may share storage (tied weights), but not describe much more data than the file holds.
_VIEW_SLACK_BYTES = 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, corrupt, oversized for its contents or holds no state dict."""


class NonFiniteTensorError(CheckpointError):
    """A loaded tensor holds NaN or Inf values; the message names the file and the tensor."""


def check_finite(tensors: Mapping[str, torch.Tensor], source: str, fix: str) -> None:
    """Raise :class:`NonFiniteTensorError` naming ``source`` and the first tensor holding NaN/Inf."""
    report = first_non_finite(tensors.items())
    if report is not None:
        raise NonFiniteTensorError(
            f"{source}: tensor '{report.name}' holds {report.describe()}; expected finite numbers. {fix}"
        )


@dataclass(frozen=True)
class CheckpointContents:
    """What :func:`read_checkpoint` found in a file."""

    tensors: dict[str, torch.Tensor]  # flat name -> CPU tensor, names as stored
    metadata: dict[str, str]  # safetensors header metadata; {} for pickled files
    source_format: str  # "safetensors" | "torch-zip" | "torch-legacy"
    loader: str  # "safetensors" | "restricted_unpickler"
    ignored_entries: tuple[str, ...]  # non-tensor entries that were skipped


def read_checkpoint(path: PathLike) -> CheckpointContents:
    """Read the tensors of a ``.safetensors`` / ``.pth`` / ``.ckpt`` / ``.pt`` / ``.bin`` file.

    Pickled files are unwrapped: a Lightning ``{"state_dict": {...}, ...}`` checkpoint
    yields its ``state_dict``; a bare ``{name: tensor}`` dict is used as is.  Non-tensor
    entries are skipped and reported in :attr:`CheckpointContents.ignored_entries`.
    Tensor names are returned exactly as stored (no prefix stripping).

    Raises:
        CheckpointError: the file is missing, has an unsupported extension, is
            truncated / corrupt, claims more data than it holds, is a TorchScript archive
            or holds no tensors.
    """
    file = Path(path)
    if not file.exists():
        raise CheckpointError(
            f"Checkpoint file not found: '{file}'. Expected an existing .safetensors/.pth/"
            f".ckpt/.pt/.bin file; check the path or download the weights first."
        )
    if not file.is_file():
        raise CheckpointError(
            f"Checkpoint path '{file}' is not a regular file (found a directory or special "
            f"file). Point it at the weights file itself."
        )
    suffix = file.suffix.lower()
    if suffix not in SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES:
        raise CheckpointError(
            f"Unsupported checkpoint extension '{file.suffix}' for '{file.name}'. Expected one "
            f"of .safetensors, .pth, .ckpt, .pt, .bin; rename or convert the file."
        )
    if suffix in SAFETENSORS_SUFFIXES or _looks_like_safetensors(file):
        return _read_safetensors(file)
    return _read_pickled(file)


def write_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor],
    path: PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` to ``path`` as safetensors, atomically.

    The data goes to a temporary file in the target directory, is flushed to disk and
    then moved over ``path`` with :func:`os.replace`, so ``path`` is either the old file
    or the complete new one.  Tensors are detached, moved to CPU and made contiguous;
    tensors sharing memory are copied.  On any failure the temporary file is removed.

    Raises:
        CheckpointError: bad names / values / metadata, missing directory, or the write
            failed (the original exception is chained).
    """
    target = Path(path)
    meta = _validate_metadata(metadata, target)
    prepared = _prepare_tensors(tensors, target)
    if not target.parent.is_dir():
        raise CheckpointError(
            f"Cannot write '{target}': directory '{target.parent}' does not exist. "
            f"Create it first."
        )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    done = False
    try:
        save_file(prepared, str(tmp), metadata=meta)
        _fsync(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        done = True
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"Writing safetensors file '{target}' failed ({type(err).__name__}: {err}); "
            f"nothing was written. Check free disk space and permissions."
        ) from err
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- helpers


def _validate_metadata(metadata: Mapping[str, str] | None, target: Path) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise CheckpointError(
            f"metadata for '{target.name}' must be a mapping of str to str, found "
            f"{type(metadata).__name__}."
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CheckpointError(
                f"safetensors metadata for '{target.name}' must map str to str, found "
                f"{key!r}: {type(value).__name__}. Convert values with str() or json.dumps()."
            )
    return dict(metadata)


def _prepare_tensors(tensors: Mapping[str, torch.Tensor], target: Path) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, Mapping) or not tensors:
        count = len(tensors) if isinstance(tensors, Mapping) else 0
        raise CheckpointError(
            f"Expected a non-empty mapping of name -> tensor to write to '{target.name}', "
            f"found {type(tensors).__name__} with {count} entries."
        )
    prepared: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, value in tensors.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"Expected str -> torch.Tensor entries for '{target.name}', found "
                f"{name!r}: {type(value).__name__}. Drop or convert that entry."
            )
        tensor = value.detach().to("cpu").contiguous()
        if tensor.numel() > 0:
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in seen_storages:
                tensor = tensor.clone()  # safetensors refuses shared memory (tied weights)
            seen_storages.add(ptr)
        prepared[name] = tensor
    return prepared


def _fsync(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _looks_like_safetensors(file: Path) -> bool:
    """Sniff safetensors content behind a pickle extension: u64 header size then ``{``."""
    with file.open("rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= file.stat().st_size - 8


def _read_safetensors(file: Path) -> CheckpointContents:
    try:
        check_safetensors_layout(file)
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorsLayoutError, SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"Could not read safetensors file '{file.name}' ({file}): it looks truncated or "
            f"corrupt ({type(err).__name__}: {err}). Expected a complete safetensors file; "
            f"re-download it or re-convert it from the original checkpoint."
        ) from err
    if not tensors:
        raise CheckpointError(
            f"Safetensors file '{file.name}' contains no tensors. Expected model weights; "
            f"re-convert it from the original checkpoint."
        )
    metadata = {str(k): str(v) for k, v in metadata.items()}
    return CheckpointContents(tensors, metadata, "safetensors", "safetensors", ())


def _is_torchscript_zip(file: Path) -> bool:
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(name == "constants.pkl" or name.endswith("/constants.pkl") for name in names)


def _is_zip(file: Path) -> bool:
    """A zip local-file header at offset 0 (also when truncated)."""
    with file.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _read_pickled(file: Path) -> CheckpointContents:
    source_format = "torch-zip" if _is_zip(file) else "torch-legacy"
    if source_format == "torch-zip" and _is_torchscript_zip(file):
        raise CheckpointError(
            f"'{file.name}' is a TorchScript archive (torch.jit.save), not a state dict. "
            f"Expected torch.save(model.state_dict()) output; re-export the weights that way."
        )
    try:
        loaded = read_torch_file(file)
    except _LOAD_ERRORS as err:
        kind = "zip-based" if source_format == "torch-zip" else "legacy (non-zip)"
        raise CheckpointError(
            f"Could not read PyTorch checkpoint '{file.name}' ({file}) as a {kind} torch.save file: it looks "
            f"truncated or corrupt, or claims more data than it holds ({type(err).__name__}: {err}). {_FIX_PICKLE}"
        ) from err
    if loaded.placeholders:
        names = sorted(loaded.placeholders)
        logger.info(
            "'%s': replaced %d non-tensor global(s) with inert placeholders: %s",
            file.name, len(names), ", ".join(names),
        )  # fmt: skip
    tensors, ignored = _extract_state_dict(loaded.obj, file)
    _check_view_sizes(tensors, loaded.stored_bytes, file)
    return CheckpointContents(tensors, {}, loaded.source_format, "restricted_unpickler", ignored)


def _check_view_sizes(tensors: Mapping[str, torch.Tensor], stored: int, file: Path) -> None:
    """Tied weights may share storage; tensors describing far more than the file stores are refused."""
    described = sum(t.numel() * t.element_size() for t in tensors.values())
    if described > 2 * stored + _VIEW_SLACK_BYTES:
        raise CheckpointError(
            f"'{file.name}' stores {stored} bytes of tensor data but its state dict describes {described} bytes "
            f"(many tensors viewing the same data). Expected one tensor per stored weight; {_FIX_PICKLE}"
        )


def _extract_state_dict(loaded: object, file: Path) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    if not isinstance(loaded, dict):
        what = type(loaded).__name__
        if isinstance(loaded, CheckpointPlaceholder):
            what = f"an object of class {loaded.placeholder_for_global}"
        raise CheckpointError(
            f"'{file.name}' holds {what}, not a state dict. Expected a dict of "
            f"name -> tensor or a Lightning checkpoint with a 'state_dict' entry; re-save "
            f"it with torch.save(model.state_dict(), path)."
        )
    ignored: list[str] = []
    state = loaded.get("state_dict")
    if isinstance(state, dict):
        ignored.extend(str(key) for key in loaded if key != "state_dict")
        prefix = "state_dict."
    else:
        state = loaded
        prefix = ""
        n_tensors = sum(isinstance(v, torch.Tensor) for v in loaded.values())
        if n_tensors * 2 < len(loaded):
            keys = ", ".join(repr(k) for k in list(loaded)[:10])
            raise CheckpointError(
                f"'{file.name}' holds no state dict: {n_tensors} of {len(loaded)} top-level "
                f"entries are tensors (keys: {keys}). Expected a dict of name -> tensor or "
                f"a Lightning checkpoint with a 'state_dict' entry; extract the model's "
                f"state_dict and save it with torch.save(state_dict, path)."
            )
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            tensors[key] = _plain_cpu_tensor(value)
        else:
            ignored.append(f"{prefix}{key}")
    if not tensors:
        raise CheckpointError(
            f"'{file.name}' contains no tensors (entries: {', '.join(ignored[:10]) or 'none'}). "
            f"Expected model weights; check that this is the right file."
        )
    return tensors, tuple(ignored)


def _plain_cpu_tensor(value: torch.Tensor) -> torch.Tensor:
    """Drop Parameter-ness, autograd state and pickled hooks; keep the data (no copy)."""
    tensor = value.detach()
    if type(tensor) is not torch.Tensor:
        tensor = tensor.as_subclass(torch.Tensor)
    return tensor if tensor.device.type == "cpu" else tensor.cpu()
