"""Read ``torch.save`` files without ``torch.load``, allocating no more than the file holds.

Both layouts are parsed here and their pickles run through :class:`~.restricted_unpickler.RestrictedUnpickler`:

* **zip** (PyTorch >= 1.6): ``<archive>/data.pkl`` + one ``<archive>/data/<key>`` record per storage. The zip
  central directory is checked first: every record must be stored uncompressed (``torch.save`` never compresses;
  a deflated record could inflate to far more than its size) and lie inside the file, and ``data.pkl`` must be at
  most :data:`MAX_PICKLE_BYTES`. A storage is read only when its record holds exactly the ``numel x element
  size`` bytes the pickle claims.
* **legacy** (``_use_new_zipfile_serialization=False``): magic number, protocol, system info, the main pickle,
  the storage keys, then ``int64 numel`` + raw bytes per storage. The storages the pickle claims must fit in
  what is left of the file before any of them is allocated; each stored ``numel`` must match the claim.

The pre-1.0 ``tar`` format and big-endian files are refused. Every problem raises :class:`TorchArchiveError`
with what was expected and what was found; the caller adds the file name and the fix.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .restricted_unpickler import RestrictedUnpickler
from .tensor_rebuild import LoadedStorage, StorageType

__all__ = ["MAX_PICKLE_BYTES", "TorchArchiveError", "TorchFile", "read_torch_file"]

MAX_PICKLE_BYTES = 64 * 1024 * 1024  # a state dict's data.pkl is ~100 bytes per tensor
_CHUNK = 16 * 1024 * 1024
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_LINE = 64 * 1024


class TorchArchiveError(ValueError):
    """A torch.save file is malformed or claims more data than it holds (message: expected vs found)."""


@dataclass
class TorchFile:
    """What :func:`read_torch_file` found: the unpickled object and how it was stored."""

    obj: Any
    source_format: str  # "torch-zip" | "torch-legacy"
    stored_bytes: int  # total bytes of all storage records
    placeholders: set[str] = field(default_factory=set)


def read_torch_file(file: Path) -> TorchFile:
    """Unpickle a ``torch.save`` file with the restricted unpickler (zip or legacy layout)."""
    with file.open("rb") as handle:
        magic = handle.read(4)
    if magic == b"PK\x03\x04":
        return _read_zip(file)
    if tarfile.is_tarfile(file):
        raise TorchArchiveError(
            "it uses the pre-1.0 PyTorch .tar checkpoint format, which is not supported; expected a torch.save "
            "file from PyTorch >= 1.0"
        )
    return _read_legacy(file)


# --------------------------------------------------------------------------- zip layout


def _check_members(infos: list[zipfile.ZipInfo], file_size: int) -> None:
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise TorchArchiveError(
                f"record '{info.filename}' is compressed ({info.compress_size} bytes inflating to "
                f"{info.file_size}); torch.save stores records uncompressed, so this file was not written by "
                "torch.save and is not inflated"
            )
        if info.compress_size != info.file_size or info.header_offset + info.file_size > file_size:
            raise TorchArchiveError(
                f"record '{info.filename}' claims {info.file_size} bytes at offset {info.header_offset}, beyond "
                f"the {file_size}-byte file"
            )


def _find_pickle(infos: list[zipfile.ZipInfo]) -> tuple[str, zipfile.ZipInfo]:
    found = [
        info for info in infos
        if info.filename == "data.pkl" or (info.filename.endswith("/data.pkl") and info.filename.count("/") == 1)
    ]  # fmt: skip
    if len(found) != 1:
        raise TorchArchiveError(f"expected one '<archive>/data.pkl' record, found {len(found)}")
    info = found[0]
    if info.file_size > MAX_PICKLE_BYTES:
        raise TorchArchiveError(
            f"its pickle '{info.filename}' is {info.file_size} bytes; at most {MAX_PICKLE_BYTES} are accepted "
            "(a state dict needs ~100 bytes per tensor)"
        )
    return info.filename[: -len("data.pkl")], info


def _read_record(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytearray:
    buffer = bytearray(info.file_size)
    view = memoryview(buffer)
    done = 0
    with archive.open(info) as stream:
        while done < len(buffer):
            chunk = stream.read(min(_CHUNK, len(buffer) - done))
            if not chunk:
                raise TorchArchiveError(f"record '{info.filename}' ends after {done} of {len(buffer)} bytes")
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
    return buffer


def _storage_from(buffer: bytearray, dtype: torch.dtype) -> LoadedStorage:
    if not buffer:
        return LoadedStorage(torch.UntypedStorage(0), dtype)
    return LoadedStorage(torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage(), dtype)


def _parse_storage_id(pid: Any, fields: int) -> tuple[torch.dtype, str, int]:
    if not isinstance(pid, tuple) or len(pid) != fields or pid[0] not in ("storage", b"storage"):
        raise TorchArchiveError(f"unexpected persistent id {str(pid)[:120]} (expected a torch storage)")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, StorageType):
        raise TorchArchiveError(f"storage type {storage_type!r} is not a torch storage class")
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise TorchArchiveError(f"storage id {str(pid)[:120]} needs a str key and a non-negative int size")
    return storage_type.dtype, key, numel


def _read_zip(file: Path) -> TorchFile:
    file_size = file.stat().st_size
    with zipfile.ZipFile(file) as archive:
        infos = archive.infolist()
        _check_members(infos, file_size)
        prefix, pickle_info = _find_pickle(infos)
        records = {info.filename: info for info in infos}
        order = records.get(f"{prefix}byteorder")
        if order is not None and (order.file_size > 16 or archive.read(order).strip() not in (b"little",)):
            raise TorchArchiveError("it was saved on a big-endian machine; expected little-endian data")
        storages: dict[str, LoadedStorage] = {}

        def persistent_load(pid: Any) -> LoadedStorage:
            dtype, key, numel = _parse_storage_id(pid, 5)
            if key in storages:
                return storages[key]
            name = f"{prefix}data/{key}"
            info = records.get(name)
            if info is None:
                raise TorchArchiveError(f"the pickle refers to storage record '{name}', which the zip lacks")
            claimed = numel * dtype.itemsize
            if info.file_size != claimed:
                raise TorchArchiveError(
                    f"storage record '{name}' holds {info.file_size} bytes but the pickle claims {numel} x "
                    f"{dtype} = {claimed} bytes"
                )
            storages[key] = _storage_from(_read_record(archive, info), dtype)
            return storages[key]

        data = archive.read(pickle_info)
        unpickler = RestrictedUnpickler(io.BytesIO(data), max_bytes=len(data), persistent_load=persistent_load)
        obj = unpickler.load()
    stored = sum(storage.nbytes for storage in storages.values())
    return TorchFile(obj, "torch-zip", stored, unpickler.placeholders)


# --------------------------------------------------------------------------- legacy layout


class _BoundedReader:
    """File wrapper for the pickle reader: ``read(n)`` never asks the OS for more than the file has left."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self._handle = handle
        self.size = size

    def remaining(self) -> int:
        return self.size - self._handle.tell()

    def read(self, n: int = -1) -> bytes:
        left = self.remaining()
        return self._handle.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        return self._handle.readline(_MAX_LINE if limit is None or limit < 0 else min(limit, _MAX_LINE))

    def readinto(self, buffer: Any) -> int:
        return self._handle.readinto(buffer)


def _unpickle(reader: _BoundedReader, persistent_load: Any = None, placeholders: set[str] | None = None) -> Any:
    return RestrictedUnpickler(
        reader, max_bytes=reader.remaining(), persistent_load=persistent_load, placeholders=placeholders
    ).load()


def _read_legacy(file: Path) -> TorchFile:
    size = file.stat().st_size
    with file.open("rb") as handle:
        reader = _BoundedReader(handle, size)
        if _unpickle(reader) != _LEGACY_MAGIC:
            raise TorchArchiveError("it is neither a zip nor a legacy torch.save file (no PyTorch magic number)")
        if _unpickle(reader) != _LEGACY_PROTOCOL:
            raise TorchArchiveError(f"expected legacy torch.save protocol {_LEGACY_PROTOCOL}")
        info = _unpickle(reader)
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise TorchArchiveError("it was saved on a big-endian machine; expected little-endian data")
        claimed: dict[str, tuple[LoadedStorage, bytearray, int]] = {}

        def persistent_load(pid: Any) -> Any:
            if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module") and len(pid) == 4:
                return pid[1]  # a pickled nn.Module's class (a placeholder): never called
            dtype, key, numel = _parse_storage_id(pid, 6)
            if pid[5] is not None:
                raise TorchArchiveError("it uses storage views (PyTorch < 0.4); re-save it with a current PyTorch")
            if key in claimed:
                return claimed[key][0]
            nbytes = numel * dtype.itemsize
            total = sum(len(buffer) + 8 for _, buffer, _ in claimed.values()) + nbytes + 8
            if total > reader.remaining():
                raise TorchArchiveError(
                    f"its pickle claims {total} bytes of tensor data but only {reader.remaining()} bytes follow"
                )
            buffer = bytearray(nbytes)
            claimed[key] = (_storage_from(buffer, dtype), buffer, numel)
            return claimed[key][0]

        placeholders: set[str] = set()
        obj = _unpickle(reader, persistent_load, placeholders)
        keys = _unpickle(reader)
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(claimed):
            raise TorchArchiveError("its list of storage keys does not match the storages its pickle uses")
        for key in keys:
            _fill_legacy_storage(handle, str(key), *claimed[str(key)][1:])
    stored = sum(len(buffer) for _, buffer, _ in claimed.values())
    return TorchFile(obj, "torch-legacy", stored, placeholders)


def _fill_legacy_storage(handle: BinaryIO, key: str, buffer: bytearray, numel: int) -> None:
    head = handle.read(8)
    if len(head) != 8 or struct.unpack("<q", head)[0] != numel:
        found = struct.unpack("<q", head)[0] if len(head) == 8 else "end of file"
        raise TorchArchiveError(f"storage '{key}': the pickle claims {numel} elements, the data block holds {found}")
    if handle.readinto(memoryview(buffer)) != len(buffer):
        raise TorchArchiveError(f"storage '{key}' is cut short: expected {len(buffer)} bytes")
