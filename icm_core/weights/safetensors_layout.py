"""Check a ``.safetensors`` file's header against the file's size before any tensor is read.

Layout: ``u64`` little-endian header length ``N``, ``N`` bytes of JSON ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then the data block. Offsets are relative to the
data block. :func:`check_safetensors_layout` refuses a header longer than :data:`MAX_HEADER_BYTES` or than the
file, an unknown dtype, a shape / offsets pair that disagree, or a tensor that ends beyond the file -- so a
short file can never make the reader allocate a large tensor.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

__all__ = ["MAX_HEADER_BYTES", "SafetensorsLayoutError", "check_safetensors_layout"]

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit

ITEM_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


class SafetensorsLayoutError(ValueError):
    """The header disagrees with itself or with the file size (message: expected vs found)."""


def check_safetensors_layout(file: Path) -> int:
    """Validate the header of ``file``; return the number of tensors it declares."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise SafetensorsLayoutError(f"the file has {size} bytes, fewer than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise SafetensorsLayoutError(
                f"its header claims {header_len} bytes; expected at most {min(MAX_HEADER_BYTES, size - 8)} "
                f"(the {size}-byte file minus 8, and never over {MAX_HEADER_BYTES})"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsLayoutError(f"its header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise SafetensorsLayoutError(f"its header is a JSON {type(header).__name__}, expected an object")
    data_size = size - 8 - header_len
    count = 0
    for name, entry in header.items():
        if name == "__metadata__":
            _check_metadata(entry)
        else:
            _check_entry(name, entry, data_size)
            count += 1
    return count


def _check_metadata(entry: object) -> None:
    if not isinstance(entry, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in entry.items()):
        raise SafetensorsLayoutError("its __metadata__ must map str to str")


def _check_entry(name: str, entry: object, data_size: int) -> None:
    if not isinstance(entry, dict):
        raise SafetensorsLayoutError(f"tensor '{name}': expected an object with dtype/shape/data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ITEM_SIZES:
        raise SafetensorsLayoutError(f"tensor '{name}': unsupported dtype {dtype!r}")
    if not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:  # type: ignore[arg-type]
        raise SafetensorsLayoutError(
            f"tensor '{name}': shape {shape!r} and data_offsets {offsets!r} must be lists of non-negative ints"
        )
    begin, end = offsets  # type: ignore[misc]
    expected = math.prod(shape) * ITEM_SIZES[dtype]  # type: ignore[arg-type]
    if not begin <= end <= data_size or end - begin != expected:
        raise SafetensorsLayoutError(
            f"tensor '{name}' ({dtype} {shape}) needs {expected} bytes; its offsets [{begin}, {end}] give "
            f"{end - begin} in a {data_size}-byte data block"
        )


def _int_list(value: object) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)
