"""A pickle module for ``torch.load`` that can rebuild tensors and nothing else.

``torch.load(..., weights_only=True)`` refuses PyTorch-Lightning checkpoints whose
``hyper_parameters`` / callback state hold arbitrary Python objects
(``argparse.Namespace``, omegaconf ``DictConfig``, ...).  The plain pickle fallback
(``weights_only=False``) would run whatever the file asks for.  This module sits in
between: :func:`make_restricted_pickle_module` returns an object usable as
``torch.load(..., weights_only=False, pickle_module=...)`` whose ``Unpickler.find_class``

* resolves only a fixed allowlist of harmless globals (tensor/parameter rebuild
  functions, torch dtypes / storage classes / ``torch.Size`` / ``torch.device``,
  ``collections.OrderedDict`` and plain builtin containers), built up front from
  modules that are already imported -- it never imports anything;
* maps **every** other global (``os.system``, ``builtins.eval``, ``pathlib.Path.touch``,
  ``argparse.Namespace``, ...) to an inert :class:`CheckpointPlaceholder` subclass.

Placeholders accept any constructor arguments, store ``__setstate__`` / item / append
state and never call anything, so no code from the checkpoint ever runs.  Anything
callable that a pickle can reach comes from ``find_class`` (torch's own
``persistent_load`` only builds storages), hence the allowlist is the attack surface.
The unpickler is the pure-Python one so that two more opcodes can be closed: ``BUILD``
on a global (which would ``setattr`` on torch functions / classes process-wide) and
the copyreg ``EXT*`` opcodes (resolved through a global cache, not ``find_class``).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import pickle
import threading
from typing import Any, BinaryIO, ClassVar

import torch

__all__ = [
    "CheckpointPlaceholder",
    "RestrictedPickleModule",
    "allowed_globals",
    "make_restricted_pickle_module",
    "placeholder_for",
]


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
    from torch import _utils as tutils

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): torch.Tensor,
        ("torch._tensor", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles store bytes
    }
    for fn_name in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
    ):
        fn = getattr(tutils, fn_name, None)
        if fn is not None:
            allowed[("torch._utils", fn_name)] = fn
    allowed[("torch.storage", "TypedStorage")] = torch.storage.TypedStorage
    allowed[("torch.storage", "UntypedStorage")] = torch.UntypedStorage
    for builtin in (set, frozenset, list, dict, tuple, bytearray, bytes, complex, slice):
        allowed[("builtins", builtin.__name__)] = builtin
    # vars() instead of getattr(): torch.__getattr__ lazily imports submodules.
    for name, value in list(vars(torch).items()):
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
        elif isinstance(value, type) and name.endswith("Storage"):
            is_storage = issubclass(value, (torch.storage.TypedStorage, torch.UntypedStorage))
            if is_storage:
                allowed[("torch", name)] = value
    return allowed


_ALLOWLIST: dict[tuple[str, str], Any] | None = None


def allowed_globals() -> dict[tuple[str, str], Any]:
    """Return a copy of the ``(module, name) -> object`` allowlist."""
    global _ALLOWLIST  # noqa: PLW0603 - built lazily once, read-only afterwards
    if _ALLOWLIST is None:
        _ALLOWLIST = _build_allowlist()
    return dict(_ALLOWLIST)


def _fix_py2_names(module: str, name: str) -> tuple[str, str]:
    # torch.save uses protocol 2, which writes e.g. ``__builtin__.set``.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _load_build_checked(self: pickle._Unpickler) -> None:
    """``BUILD`` that refuses to set state on globals (classes, functions, dtypes...).

    The stock opcode would ``setattr`` on whatever object sits below the state, which
    for a global means patching torch / placeholder classes process-wide.
    """
    stack = self.stack
    if len(stack) >= 2:
        target = stack[-2]
        if isinstance(target, type) or id(target) in _allowed_ids():
            raise pickle.UnpicklingError(
                f"restricted unpickler: refusing BUILD (setstate) on the global {target!r}"
            )
    pickle._Unpickler.load_build(self)


def _refuse_extension(self: pickle._Unpickler) -> None:
    # EXT1/2/4 resolve through copyreg's process-wide cache, bypassing find_class.
    raise pickle.UnpicklingError(
        "restricted unpickler: copyreg extension opcodes (EXT1/EXT2/EXT4) are not allowed"
    )


_DISPATCH = dict(pickle._Unpickler.dispatch)
_DISPATCH[pickle.BUILD[0]] = _load_build_checked
for _opcode in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
    _DISPATCH[_opcode[0]] = _refuse_extension


def _allowed_ids() -> frozenset[int]:
    global _ALLOWED_IDS  # noqa: PLW0603 - built lazily once, read-only afterwards
    if _ALLOWED_IDS is None:
        _ALLOWED_IDS = frozenset(id(obj) for obj in allowed_globals().values())
    return _ALLOWED_IDS


_ALLOWED_IDS: frozenset[int] | None = None


class RestrictedPickleModule:
    """Per-load stand-in for the :mod:`pickle` module (``Unpickler`` + ``load``).

    ``placeholders`` collects the qualified names of every global that was replaced by
    a placeholder during the load(s) done through this object.
    """

    def __init__(self) -> None:
        self.__name__ = __name__  # torch.load checks ``pickle_module.__name__ == "dill"``
        self.placeholders: set[str] = set()
        allowlist = allowed_globals()
        record = self.placeholders

        # The pure-Python unpickler, so that BUILD and EXT* can be restricted too (the C
        # one cannot be hooked). Only data.pkl goes through it; tensor bytes do not.
        class Unpickler(pickle._Unpickler):
            """Unpickler whose ``find_class`` never imports or runs anything."""

            dispatch = _DISPATCH

            def find_class(self, module: str, name: str) -> Any:
                module, name = _fix_py2_names(str(module), str(name))
                found = allowlist.get((module, name))
                if found is not None:
                    return found
                qualified = f"{module}.{name}"
                record.add(qualified)
                return placeholder_for(qualified)

        self.Unpickler = Unpickler

    def load(self, file: BinaryIO, **kwargs: Any) -> Any:
        """Unpickle one object from ``file`` with the restricted ``Unpickler``."""
        return self.Unpickler(file, **kwargs).load()

    def loads(self, data: bytes, **kwargs: Any) -> Any:
        """Unpickle one object from ``data`` with the restricted ``Unpickler``."""
        import io

        return self.load(io.BytesIO(data), **kwargs)


def make_restricted_pickle_module() -> RestrictedPickleModule:
    """Create a fresh restricted pickle module for one ``torch.load`` call."""
    return RestrictedPickleModule()
