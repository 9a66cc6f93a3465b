"""Dataset inputs: folders, globs, list files and fsspec URIs -> sources named exactly as the local ``matte`` names them.

Naming (output ``OUT/<kind>/<relative>``, the whole input name kept, ``.png`` appended unless it ends in ``.png``;
see :func:`icm_core.matte_job.output_name`):

- a folder (local or URI): every image below it, relative to the folder (as ``matte`` does);
- a file (local or URI): its own name (as ``matte`` does);
- a glob (``data/*/*.jpg``, ``s3://bucket/shots/**/*.png``): relative to the folder before the first wildcard;
- a list file (``.txt``/``.lst``, one path or URI a line, ``#`` comments): relative lines are read relative to the
  list file's folder and keep their relative path; absolute paths and URIs are named by their file name.

All names are then checked together for collisions (:func:`icm_core.matte_job.check_collisions`) before any work.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..commands.checks import CommandError
from ..commands.matte_job import IMAGE_SUFFIXES, check_collisions, collect_targets, output_name

LIST_SUFFIXES = frozenset({".txt", ".lst"})
GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    """One input image: ``location`` (a local path or an fsspec URI) and its output name relative to ``OUT/<kind>/``.

    Duck-compatible with :class:`icm_core.matte_job.Target` (``path``, ``relative``) for the naming helpers.
    """

    location: str
    relative: Path

    @property
    def is_uri(self) -> bool:
        return is_uri(self.location)

    @property
    def path(self) -> Path:
        return Path(self.location)


def is_uri(text: str) -> bool:
    """True for ``protocol://...`` locations (read through fsspec); plain paths are local."""
    return "://" in text and not os.path.exists(text)


def _is_glob(text: str) -> bool:
    return any(character in GLOB_CHARACTERS for character in text)


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def filesystem(uri: str):  # noqa: ANN201 - an fsspec filesystem and the path inside it
    """``(fs, path)`` for an fsspec URI; a missing fsspec (or protocol package) is a one-line error with the fix."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise CommandError(f"{uri}: reading URIs needs fsspec; install it with: pip install fsspec") from None
    try:
        return url_to_fs(uri)
    except (ImportError, ValueError) as error:
        raise CommandError(
            f"{uri}: no file system for this URI ({error}); install the fsspec package of its protocol "
            "(s3: s3fs, gs: gcsfs, az: adlfs)."
        ) from None


def _relative_below(base: str, found: str, option: str) -> Path:
    relative = PurePosixPath(found).relative_to(PurePosixPath(base)) if base else PurePosixPath(found)
    if not relative.parts or ".." in relative.parts:
        below = f"below {base}" if base else "below the list file's folder"
        raise CommandError(f"{option}: {found} does not lie {below}; its output would leave OUT/<kind>/. "
                           "Use a path without '..' (or an absolute path, named by its file name).")
    return Path(*relative.parts)


def _glob_base(pattern: str) -> str:
    """The folder before the first wildcard of a glob (``data/a/*/x.png`` -> ``data/a``)."""
    parts = PurePosixPath(pattern).parts
    fixed = [part for part in parts[: next(i for i, p in enumerate(parts) if _is_glob(p))]]
    return str(PurePosixPath(*fixed)) if fixed else ""


def _uri_sources(uri: str) -> list[Source]:
    fs, path = filesystem(uri)
    if _is_glob(path):
        base, found = _glob_base(path), [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        base, found = path.rstrip("/"), list(fs.find(path))
    elif fs.isfile(path):
        return [Source(uri, output_name(Path(PurePosixPath(path).name)))]
    else:
        raise CommandError(f"target {uri} does not exist (expected an image, a folder, a glob or a list file)")
    return [
        Source(fs.unstrip_protocol(p), output_name(_relative_below(base, p, uri)))
        for p in sorted(found)
        if _is_image(p)
    ]


def _glob_sources(pattern: str) -> list[Source]:
    base = _glob_base(pattern)
    found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p) and _is_image(p))
    return [Source(p, output_name(_relative_below(base, Path(p).as_posix(), pattern))) for p in found]


def _list_sources(list_file: Path) -> list[Source]:
    sources = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        where = f"{list_file} line {number}"
        if is_uri(entry):
            fs, path = filesystem(entry)
            sources.append(Source(entry, output_name(Path(PurePosixPath(path).name))))
            continue
        path = Path(entry)
        if path.is_absolute():
            full, relative = path, Path(path.name)
        else:
            full, relative = list_file.parent / path, _relative_below("", path.as_posix(), where)
        if not full.is_file():
            raise CommandError(f"{where}: {full} does not exist or is not a file; expected an image file.")
        sources.append(Source(str(full), output_name(relative)))
    return sources


def collect_sources(inputs: Sequence[str]) -> list[Source]:
    """Every input image, named as the local ``matte`` names it; collisions refused before anything runs.

    Raises:
        CommandError: an input is missing, a URI cannot be read, no image was found.
        OutputCollisionError: two inputs would share an output (all such pairs are listed).
    """
    sources: list[Source] = []
    for item in inputs:
        if is_uri(item):
            sources += _uri_sources(item)
        elif Path(item).suffix.lower() in LIST_SUFFIXES and Path(item).is_file():
            sources += _list_sources(Path(item))
        elif _is_glob(item) and not Path(item).exists():
            sources += _glob_sources(item)
        else:
            try:
                sources += [Source(str(t.path), t.relative) for t in collect_targets([Path(item)])]
            except FileNotFoundError as error:
                raise CommandError(f"{error}, a glob or a list file (.txt)") from None
    check_collisions(sources)
    if not sources:
        raise CommandError(f"no image found in {', '.join(inputs)} (looked for .png/.jpg/... files).")
    return sources


def input_folders(inputs: Sequence[str], sources: Iterable[Source]) -> list[Path]:
    """Local folders the output folder must neither lie in nor contain: folders given, glob bases, list files'
    folders and the folder of every local input file (as ``matte`` checks a file's own folder)."""
    folders = {Path(source.location).parent for source in sources if not source.is_uri}
    for item in inputs:
        if is_uri(item):
            continue
        if Path(item).is_dir():
            folders.add(Path(item))
        elif Path(item).suffix.lower() in LIST_SUFFIXES and Path(item).is_file():
            folders.add(Path(item).parent)
        elif _is_glob(item):
            folders.add(Path(_glob_base(item) or "."))
    return sorted(folders)
