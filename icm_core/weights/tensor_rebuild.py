"""What a restricted pickle may call: tensor rebuilds checked against their storage, bounded constructors, markers.

Everything here is reachable from a checkpoint's pickle through :mod:`.restricted_unpickler`'s allowlist, so
nothing here may allocate more than its (pickled, hence bounded) arguments:

* :class:`StorageType` / ``TensorType`` stand in for ``torch.FloatStorage`` & co. and ``torch.Tensor`` /
  ``torch.nn.Parameter``; they are not callable (``torch.FloatStorage(N)`` / ``torch.Tensor(N)`` would allocate).
* the rebuild functions accept only a :class:`LoadedStorage` (bytes read from the file after their size was
  checked) and refuse any view reaching outside it or describing more bytes than it holds;
* ``bytes``/``bytearray``/containers refuse int / str sizes and sources (``bytearray(N)`` allocates N bytes).
"""

from __future__ import annotations

import codecs
import math
import pickle
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = [
    "REBUILDERS",
    "LoadedStorage",
    "StorageType",
    "TensorType",
    "bounded_bytes",
    "bounded_container",
    "latin1_encode",
    "rebuild_from_type_v2",
    "rebuild_parameter",
    "rebuild_tensor",
    "rebuild_tensor_v2",
    "rebuild_tensor_v3",
    "refuse",
    "torch_size",
]

_MAX_DIMS = 64


@dataclass(frozen=True)
class StorageType:
    """Non-callable stand-in for ``torch.FloatStorage`` & co.: only names the element dtype of a storage record."""

    name: str
    dtype: torch.dtype


@dataclass(frozen=True)
class TensorType:
    """Non-callable stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` (``torch.Tensor(N)`` would allocate)."""

    name: str


@dataclass(frozen=True, eq=False)
class LoadedStorage:
    """Bytes of one storage record, read from the file after its size was checked; ``dtype`` as pickled."""

    untyped: torch.UntypedStorage
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return int(self.untyped.nbytes())


def refuse(message: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"restricted unpickler: {message}")


# --------------------------------------------------------------------------- safe rebuild functions


def _check_ints(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list, torch.Size)) or len(values) > _MAX_DIMS:
        raise refuse(f"tensor {what} must be a tuple of at most {_MAX_DIMS} ints, got {type(values).__name__}")
    out = tuple(values)
    if not all(type(v) is int and v >= 0 for v in out):
        raise refuse(f"tensor {what} must hold non-negative ints, got {out[:8]}")
    return out


def _view(storage: Any, dtype: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    """A tensor viewing ``storage``; refused unless every element lies inside it and the view is no larger."""
    if not isinstance(storage, LoadedStorage):
        raise refuse(f"tensor data must come from the file's storage records, got {type(storage).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise refuse(f"tensor dtype must be a torch dtype, got {dtype!r}")
    if type(offset) is not int or offset < 0:
        raise refuse(f"tensor storage offset must be a non-negative int, got {offset!r}")
    shape, strides = _check_ints(size, "size"), _check_ints(stride, "stride")
    if len(shape) != len(strides):
        raise refuse(f"tensor size {shape} and stride {strides} differ in length")
    numel = math.prod(shape)
    if numel:
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        itemsize = dtype.itemsize
        if (last + 1) * itemsize > storage.nbytes or numel * itemsize > storage.nbytes:
            raise refuse(
                f"a {dtype} tensor of shape {list(shape)} (stride {list(strides)}, offset {offset}) needs "
                f"{max(last + 1, numel) * itemsize} bytes but its storage record holds {storage.nbytes}"
            )
    return torch.empty((0,), dtype=dtype).set_(storage.untyped, offset, shape, strides)


def rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    dtype = storage.dtype if isinstance(storage, LoadedStorage) else None
    return _view(storage, dtype, storage_offset, size, stride)


def rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
    backward_hooks: Any = None, metadata: Any = None,
) -> torch.Tensor:  # fmt: skip
    """Autograd flags, hooks and metadata are dropped: a loaded weight is plain data."""
    return rebuild_tensor(storage, storage_offset, size, stride)


def rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    dtype: Any, metadata: Any = None,
) -> torch.Tensor:  # fmt: skip
    return _view(storage, dtype, storage_offset, size, stride)


def rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None) -> Any:
    """Parameters load as plain tensors (their pickled attribute state is not applied)."""
    if not isinstance(data, torch.Tensor):
        raise refuse(f"a parameter must wrap a tensor, got {type(data).__name__}")
    return data


REBUILDERS = (rebuild_tensor, rebuild_tensor_v2, rebuild_tensor_v3, rebuild_parameter)


def rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """Tensor subclasses load as plain tensors; ``func`` must be one of our rebuild functions."""
    if func not in REBUILDERS or not isinstance(new_type, TensorType) or not isinstance(args, tuple):
        raise refuse(f"refusing rebuild_from_type_v2 with {func!r} / {new_type!r}")
    return func(*args)


# --------------------------------------------------------------------------- bounded constructors


def _no_sized_args(name: str, args: tuple[Any, ...]) -> None:
    for arg in args:
        if isinstance(arg, (int, float, str, bytes, bytearray)) and not isinstance(arg, bool):
            raise refuse(f"{name}() with a {type(arg).__name__} argument is not allowed in a checkpoint")


def bounded_container(kind: type) -> Callable[..., Any]:
    def build(*args: Any, **kwargs: Any) -> Any:
        _no_sized_args(kind.__name__, args)
        return kind(*args, **kwargs)

    build.__name__ = build.__qualname__ = f"bounded_{kind.__name__}"
    return build


def bounded_bytes(kind: type) -> Callable[..., Any]:
    """``bytes()`` / ``bytearray()`` from bytes or a latin-1 str only; an int size would allocate that much."""

    def build(*args: Any) -> Any:
        if not args:
            return kind()
        if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
            return kind(args[0])
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
            return kind(args[0], "latin-1")
        raise refuse(f"{kind.__name__}() accepts bytes or a latin-1 str here, got {[type(a).__name__ for a in args]}")

    build.__name__ = build.__qualname__ = f"bounded_{kind.__name__}"
    return build


def latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(str, "latin1")``: how protocol-2 pickles store bytes (output no larger than input)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise refuse(f"_codecs.encode is only allowed on a str with latin1, got {type(text).__name__}/{encoding!r}")
    return codecs.encode(text, "latin1")


def torch_size(*args: Any) -> torch.Size:
    if len(args) > 1:
        raise refuse("torch.Size takes one tuple")
    return torch.Size(_check_ints(args[0], "size") if args else ())
