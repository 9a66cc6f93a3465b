"""The dataset manifest: ``OUT/manifest.parquet``, one row per input.

Columns (see :data:`SCHEMA`):
    index: position of the input in the sorted input list of the run that wrote the row.
    input: the input's path or URI.   relative: its output name below ``OUT/<kind>/``.
    status: ``written`` (every requested output is a complete PNG) or ``failed`` (``error`` says why).
    outputs: the output files (empty when failed).   error: one line, or null.
    seconds: decode + share of the micro-batch's matting + PNG encode/write; null for outputs found complete by
        ``--resume`` without a manifest row. decode_seconds, matte_seconds, write_seconds: the three parts.
    worker: ``host:pid`` of the actor that wrote the outputs.   run: UTC start time of the run that wrote them.
    finished: Unix time (seconds) when the outputs were in place.

While a run goes, rows are appended as parts (``OUT/manifest.parts/<run>-<n>.parquet``, each written atomically);
at the end they are merged with the previous manifest into ``OUT/manifest.parquet`` (atomically) and the parts are
removed. A run killed before the end leaves its parts: the next ``--resume`` reads them too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..io.file_safety import fsync_file, staged

MANIFEST_NAME = "manifest.parquet"
PARTS_FOLDER = "manifest.parts"
STATUSES = ("written", "failed")
COLUMNS = (
    "index", "input", "relative", "status", "outputs", "error", "seconds", "decode_seconds", "matte_seconds",
    "write_seconds", "worker", "run", "finished",
)  # fmt: skip


def schema():  # noqa: ANN201 - a pyarrow schema (pyarrow comes with the scale extra)
    import pyarrow as pa

    return pa.schema([
        ("index", pa.int64()), ("input", pa.string()), ("relative", pa.string()), ("status", pa.string()),
        ("outputs", pa.list_(pa.string())), ("error", pa.string()), ("seconds", pa.float64()),
        ("decode_seconds", pa.float64()), ("matte_seconds", pa.float64()), ("write_seconds", pa.float64()),
        ("worker", pa.string()), ("run", pa.string()), ("finished", pa.float64()),
    ])  # fmt: skip


def _write_table(rows: list[dict], target: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema())
    with staged(target) as temp:
        pq.write_table(table, temp)
        fsync_file(temp)
        os.chmod(temp, 0o644)
        os.replace(temp, target)


def _read_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path, schema=schema()).to_pylist()


def read_manifest(out_dir: Path) -> dict[str, dict]:
    """The latest row of every input known to ``OUT`` (the manifest, then parts of unfinished runs, in order)."""
    rows: dict[str, dict] = {}
    files = [out_dir / MANIFEST_NAME] if (out_dir / MANIFEST_NAME).is_file() else []
    parts = out_dir / PARTS_FOLDER
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))
    for path in files:
        for row in _read_rows(path):
            rows[row["input"]] = row
    return rows


class ManifestWriter:
    """Appends rows as atomic part files every ``flush_rows`` rows; :meth:`finish` merges them into the manifest."""

    def __init__(self, out_dir: Path, run: str, flush_rows: int = 1000) -> None:
        self.out_dir = out_dir
        self.run = run
        self.flush_rows = flush_rows
        self.pending: list[dict] = []
        self.parts: list[Path] = []

    def add(self, rows: Iterable[Mapping]) -> None:
        self.pending += [dict(row) for row in rows]
        if len(self.pending) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        folder = self.out_dir / PARTS_FOLDER
        folder.mkdir(exist_ok=True)
        target = folder / f"{self.run}-{len(self.parts):06d}.parquet"
        _write_table(self.pending, target)
        self.parts.append(target)
        self.pending = []

    def finish(self, rows: Iterable[Mapping]) -> Path:
        """Write ``OUT/manifest.parquet`` holding ``rows`` (one per input, sorted by index), then drop every part."""
        target = self.out_dir / MANIFEST_NAME
        _write_table(sorted((dict(row) for row in rows), key=lambda row: row["index"]), target)
        folder = self.out_dir / PARTS_FOLDER
        if folder.is_dir():
            for part in folder.iterdir():
                if part.suffix == ".parquet":
                    part.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()
        self.pending, self.parts = [], []
        return target
