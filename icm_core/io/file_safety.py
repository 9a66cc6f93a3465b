"""Writing files without ever damaging a user's files: staged writes, no-clobber publishing, input/output checks.

Every file the commands write is first written to a *partial* file next to its final name, named
``.<final name>.<8 random chars>.icm-partial<final suffix>``, flushed to disk, checked where there is something to
check, and only then renamed onto the final name. After a crash (even ``kill -9``) the final name holds either
nothing, the old file, or the complete new file; the partial files left behind carry the marker and are removed by
:func:`remove_stale_partials` on the next run (never any other file).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

PARTIAL_MARKER = ".icm-partial"
_PARTIAL_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.icm-partial(\.[A-Za-z0-9]+)?$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class UnsafeOutputError(ValueError):
    """Writing as asked would replace or damage a file the user gave (or one that exists without --overwrite)."""


def resolved(path: Path) -> Path:
    """``path`` made absolute with symlinks resolved (the path need not exist)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def same_file(first: Path, second: Path) -> bool:
    """True when both names lead to the same file: same resolved path, or (if both exist) the same inode."""
    if resolved(first) == resolved(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def is_within(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it (both resolved)."""
    inner, outer = resolved(path), resolved(folder)
    return inner == outer or outer in inner.parents


def is_partial_name(name: str) -> bool:
    """True for the names of our own partial files (see the module docstring)."""
    return _PARTIAL_NAME.match(name) is not None


def check_new_file(target: Path, inputs: Iterable[Path], overwrite: bool, option: str) -> None:
    """Refuse a file to be written at ``target`` when it would replace an input, or an existing file without
    ``overwrite``, or when it cannot be a file (a folder is there, its folder is missing).

    Raises:
        UnsafeOutputError: with what was found and how to fix it.
    """
    for item in inputs:
        if same_file(target, item):
            raise UnsafeOutputError(
                f"{option} {target} is an input of this run ({item}); writing there would destroy it. "
                "Choose another file name."
            )
    if target.is_dir():
        raise UnsafeOutputError(f"{option} {target} is a folder; expected a file name.")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise UnsafeOutputError(
            f"{option} {target} already exists; pass --overwrite to replace it, or choose another file name."
        )
    if not target.parent.is_dir():
        raise UnsafeOutputError(f"{option} {target}: the folder {target.parent} does not exist; create it first.")


def partial_path(target: Path) -> Path:
    """Create an empty partial file next to ``target`` (same suffix, so format sniffing still works)."""
    handle, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f"{PARTIAL_MARKER}{target.suffix}", dir=target.parent
    )
    os.close(handle)
    return Path(name)


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """Yield a fresh partial path next to ``target``; it is removed if the block does not publish it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = partial_path(target)
    try:
        yield temp
    finally:
        temp.unlink(missing_ok=True)  # a no-op once published (renamed away)


def publish(temp: Path, target: Path, overwrite: bool) -> None:
    """Move a complete partial file onto ``target``: atomically, and never over an existing file unless
    ``overwrite`` (hard link + unlink gives an atomic no-clobber rename where the file system allows links).

    Raises:
        UnsafeOutputError: ``target`` appeared meanwhile and ``overwrite`` is False.
    """
    os.chmod(temp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
    if overwrite:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)
    except FileExistsError as error:
        raise UnsafeOutputError(f"{target} appeared while it was being written; nothing was replaced.") from error
    except OSError:  # no hard links here (some network / FAT file systems): check, then rename
        if target.exists() or target.is_symlink():
            raise UnsafeOutputError(f"{target} appeared while it was being written; nothing was replaced.") from None
        os.replace(temp, target)
        return
    temp.unlink()


def fsync_file(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_png_atomic(array: np.ndarray, target: Path) -> Path:
    """Write an ``H x W`` (L), ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA) uint8 array as a PNG, staged + renamed."""
    with staged(target) as temp:
        Image.fromarray(array).save(temp, format="PNG")
        fsync_file(temp)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    return target


def png_chunks_intact(data: bytes) -> bool:
    """True when ``data`` is the PNG signature followed by whole chunks with valid CRCs, ending at IEND exactly."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    position = len(PNG_SIGNATURE)
    while position + 12 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        end = position + 12 + length
        if end > len(data):
            return False
        kind = data[position + 4 : position + 8]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[position + 4 : end - 4]) != crc:
            return False
        if kind == b"IEND":
            return end == len(data)
        position = end
    return False


def png_is_complete(path: Path, size: tuple[int, int], mode: str) -> bool:
    """True when ``path`` is a whole PNG (every chunk intact up to IEND, pixels decode) of ``size`` (H, W) and
    ``mode``; False for anything else (missing, empty, truncated, damaged, another size or mode)."""
    try:
        if not png_chunks_intact(path.read_bytes()):
            return False
        with Image.open(path, formats=["PNG"]) as image:
            if image.size != (size[1], size[0]) or image.mode != mode:
                return False
            image.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return False
    return True


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete our own partial files (and only those) below ``folder``; returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for root, _, files in os.walk(folder):
        for name in files:
            if is_partial_name(name):
                path = Path(root) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        logger.info("removed %d partial file(s) left by an interrupted run under %s", len(removed), folder)
    return removed


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (POSIX; a no-op elsewhere) so two runs never share it.

    The lock dies with the process (also on ``kill -9``), so it never needs cleaning up.

    Raises:
        UnsafeOutputError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks on folders
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise UnsafeOutputError(
                f"another run is writing into {folder}; wait for it to finish or choose another output folder."
            ) from error
        yield
    finally:
        os.close(handle)


def write_text_atomic(text: str, path: Path) -> Path:
    """Write UTF-8 text to a temporary file next to ``path``, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
