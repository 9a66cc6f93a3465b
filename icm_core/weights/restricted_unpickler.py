"""A pickle reader that rebuilds tensors, plain containers and small scalars -- and nothing else.

PyTorch checkpoints are pickles, and a pickle is a program: it may call any global it names with any arguments.
:class:`RestrictedUnpickler` (a subclass of the pure-Python :class:`pickle._Unpickler`) makes that program harmless:

* ``find_class`` never imports anything. It resolves a fixed allowlist to *our own* safe stand-ins (bounded
  container / bytes constructors, tensor rebuild functions that check every view against its storage, and
  non-callable markers for dtypes' storage classes and tensor types); every other global becomes an inert
  :class:`CheckpointPlaceholder` that records its arguments and never calls anything.
* No allowed callable allocates more than its (pickled, hence bounded) arguments: ``bytearray(N)``, ``bytes(N)``,
  ``torch.FloatStorage(N)`` and ``torch.Tensor(N)`` are refused; ``BYTEARRAY8`` may not claim more bytes than
  the pickle holds; the number of opcodes is capped.
* ``BUILD`` on a global (which would ``setattr`` on torch classes process-wide) and the copyreg ``EXT*``
  opcodes (resolved through a global cache, not ``find_class``) are refused.

Tensor data never comes from the pickle: a ``persistent_load`` callback (see :mod:`.torch_archive`) hands the
rebuild functions (:mod:`.tensor_rebuild`) a :class:`LoadedStorage`, whose bytes were read from the file after
their size was checked.
Every refusal is a :class:`pickle.UnpicklingError` saying what was refused.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
import threading
import warnings
from typing import Any, BinaryIO, Callable, ClassVar

import torch

from .tensor_rebuild import (
    LoadedStorage,
    StorageType,
    bounded_bytes,
    bounded_container,
    latin1_encode,
    rebuild_from_type_v2,
    rebuild_parameter,
    rebuild_tensor,
    rebuild_tensor_v2,
    rebuild_tensor_v3,
    refuse,
    TensorType,
    torch_size,
)

__all__ = [
    "MAX_PICKLE_OPCODES",
    "CheckpointPlaceholder",
    "LoadedStorage",
    "RestrictedUnpickler",
    "StorageType",
    "allowed_globals",
    "placeholder_for",
]

# A state dict costs ~25 opcodes per tensor; this allows ~40k tensors and caps the Python objects a pickle can
# create (each opcode makes at most one small object) at a few hundred MB even for hostile files.
MAX_PICKLE_OPCODES = 1_000_000


class _FrozenClass(type):
    """Metaclass of placeholders: their (cached, shared) class attributes cannot change."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise AttributeError(f"placeholder class {cls.__name__} is read-only")

    def __delattr__(cls, name: str) -> None:
        raise AttributeError(f"placeholder class {cls.__name__} is read-only")


class CheckpointPlaceholder(metaclass=_FrozenClass):
    """Inert stand-in for a global that a checkpoint referenced but we refuse to resolve.

    Subclasses are created per ``module.qualname`` (see :func:`placeholder_for`).  The
    class and its instances can be "called" with any arguments: they only record them.
    """

    placeholder_for_global: ClassVar[str] = "<unknown>"
    # Read by torch's legacy loader for pickled nn.Module containers; never write patches.
    dump_patches: ClassVar[bool] = False

    def __new__(cls, *args: Any, **kwargs: Any) -> CheckpointPlaceholder:
        obj = object.__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "kwargs", kwargs)
        object.__setattr__(obj, "state", None)
        object.__setattr__(obj, "items", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing; ``__new__`` already recorded the arguments."""

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        """Record a pickled list item (``APPEND``)."""
        self.items.append(value)

    def extend(self, values: Any) -> None:
        """Record pickled list items (``APPENDS``)."""
        self.items.extend(list(values))

    def add(self, value: Any) -> None:
        """Record a pickled set item (``ADDITEMS``)."""
        self.items.append(value)

    def __call__(self, *args: Any, **kwargs: Any) -> CheckpointPlaceholder:
        # e.g. ``getattr(Path, "touch")(target)`` with both globals replaced.
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<placeholder for {self.placeholder_for_global}>"


_PLACEHOLDER_CACHE: dict[str, type[CheckpointPlaceholder]] = {}
_PLACEHOLDER_LOCK = threading.Lock()


def placeholder_for(qualified_name: str) -> type[CheckpointPlaceholder]:
    """Return the (cached) inert placeholder class standing in for ``qualified_name``."""
    with _PLACEHOLDER_LOCK:
        cls = _PLACEHOLDER_CACHE.get(qualified_name)
        if cls is None:
            safe = "".join(ch if ch.isalnum() else "_" for ch in qualified_name)[:80]
            cls = _FrozenClass(
                f"Placeholder_{safe}",
                (CheckpointPlaceholder,),
                {"placeholder_for_global": qualified_name, "__module__": __name__},
            )
            _PLACEHOLDER_CACHE[qualified_name] = cls
        return cls


def _build_allowlist() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): bounded_container(collections.OrderedDict),
        ("torch", "Size"): torch_size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): TensorType("torch.Tensor"),
        ("torch._tensor", "Tensor"): TensorType("torch.Tensor"),
        ("torch.nn.parameter", "Parameter"): TensorType("torch.nn.Parameter"),
        ("torch._tensor", "_rebuild_from_type_v2"): rebuild_from_type_v2,
        ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        ("_codecs", "encode"): latin1_encode,
        ("builtins", "bytes"): bounded_bytes(bytes),
        ("builtins", "bytearray"): bounded_bytes(bytearray),
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
        ("torch", "UntypedStorage"): StorageType("UntypedStorage", torch.uint8),
        ("torch.storage", "UntypedStorage"): StorageType("UntypedStorage", torch.uint8),
    }
    for kind in (set, frozenset, list, dict, tuple):
        allowed[("builtins", kind.__name__)] = bounded_container(kind)
    # vars() instead of getattr(): torch.__getattr__ lazily imports submodules.
    for name, value in list(vars(torch).items()):
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
        elif isinstance(value, type) and name.endswith("Storage") and issubclass(value, torch.storage.TypedStorage):
            with warnings.catch_warnings():  # legacy storage classes warn that TypedStorage is deprecated
                warnings.simplefilter("ignore")
                dtype = getattr(value, "dtype", None)
            if isinstance(dtype, torch.dtype):
                allowed[("torch", name)] = StorageType(name, dtype)
    return allowed


_ALLOWLIST: dict[tuple[str, str], Any] | None = None
_ALLOWED_IDS: frozenset[int] | None = None


def allowed_globals() -> dict[tuple[str, str], Any]:
    """Return a copy of the ``(module, name) -> object`` allowlist."""
    global _ALLOWLIST, _ALLOWED_IDS  # noqa: PLW0603 - built lazily once, read-only afterwards
    if _ALLOWLIST is None:
        _ALLOWLIST = _build_allowlist()
        _ALLOWED_IDS = frozenset(id(obj) for obj in _ALLOWLIST.values())
    return dict(_ALLOWLIST)


def _fix_py2_names(module: str, name: str) -> tuple[str, str]:
    # torch.save uses protocol 2, which writes e.g. ``__builtin__.set``.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


# --------------------------------------------------------------------------- opcode overrides


def _load_build_checked(self: pickle._Unpickler) -> None:
    """``BUILD`` that refuses to set state on globals (classes, functions, dtypes, markers)."""
    stack = self.stack
    if len(stack) >= 2:
        target = stack[-2]
        allowed_globals()
        if isinstance(target, (type, StorageType, TensorType)) or id(target) in (_ALLOWED_IDS or ()):
            raise refuse(f"refusing BUILD (setstate) on the global {target!r}")
    pickle._Unpickler.load_build(self)


def _refuse_extension(self: pickle._Unpickler) -> None:
    raise refuse("copyreg extension opcodes (EXT1/EXT2/EXT4) are not allowed")


def _load_bytearray8_bounded(self: RestrictedUnpickler) -> None:
    (length,) = pickle.unpack("<Q", self.read(8))
    if length > self.max_bytes:
        raise refuse(f"BYTEARRAY8 claims {length} bytes but the pickle holds only {self.max_bytes}")
    data = self.read(length)
    if len(data) != length:
        raise refuse(f"BYTEARRAY8 claims {length} bytes but only {len(data)} follow (truncated pickle)")
    self.append(bytearray(data))


def _counted(handler: Callable[[Any], None]) -> Callable[[Any], None]:
    def run(self: RestrictedUnpickler) -> None:
        self.opcodes += 1
        if self.opcodes > self.max_opcodes:
            raise refuse(
                f"the pickle runs more than {self.max_opcodes} opcodes (a state dict needs ~25 per tensor)"
            )
        handler(self)

    return run


_OVERRIDES: dict[int, Callable[[Any], None]] = {pickle.BUILD[0]: _load_build_checked}
_OVERRIDES[pickle.BYTEARRAY8[0]] = _load_bytearray8_bounded
for _opcode in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
    _OVERRIDES[_opcode[0]] = _refuse_extension
_DISPATCH = {code: _counted(_OVERRIDES.get(code, fn)) for code, fn in pickle._Unpickler.dispatch.items()}


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler whose globals are the allowlist or inert placeholders (see module doc).

    Args:
        file: binary stream holding the pickle.
        max_bytes: size of the pickle source; no opcode may claim more bytes than this.
        persistent_load: called with each persistent id (torch storages); without it they are refused.
        placeholders: set collecting the qualified names of the globals replaced by placeholders.
        max_opcodes: refuse pickles that run more opcodes than this.
    """

    dispatch = _DISPATCH

    def __init__(
        self,
        file: BinaryIO,
        *,
        max_bytes: int,
        persistent_load: Callable[[Any], Any] | None = None,
        placeholders: set[str] | None = None,
        max_opcodes: int = MAX_PICKLE_OPCODES,
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self.max_bytes = max_bytes
        self.max_opcodes = max_opcodes
        self.opcodes = 0
        self.placeholders = placeholders if placeholders is not None else set()
        self._persistent = persistent_load
        self._allowlist = allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        module, name = _fix_py2_names(str(module), str(name))
        found = self._allowlist.get((module, name))
        if found is not None:
            return found
        qualified = f"{module}.{name}"
        self.placeholders.add(qualified)
        return placeholder_for(qualified)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise refuse(f"persistent id {str(pid)[:80]} outside a torch checkpoint")
        return self._persistent(pid)
