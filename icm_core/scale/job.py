"""The driver side of a dataset job: resume, run the pipeline, collect one manifest row per input.

Expects a running Ray (``ray.init`` done by the caller: the command, a test fixture or the user's script).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..io.file_safety import remove_stale_partials
from ..commands.matte_job import KIND_MODES, JobSettings, is_done, output_paths
from ..pipeline import ReferenceContext
from . import require_ray
from .dataset import AfterWrite, EngineSpec, Resources, build_dataset, micro_batches
from .inputs import Source
from .manifest import PARTS_FOLDER, ManifestWriter, read_manifest

logger = logging.getLogger(__name__)

LOST = (
    "no result came back: its micro-batch failed on every attempt (its actor died each time, e.g. out of memory, "
    "or raised; the Ray Data log above says which); the other inputs went on"
)


@dataclass
class DatasetReport:
    """What the run did; ``rows`` are the manifest rows (one per input, by index)."""

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    removed_partials: int = 0
    manifest: Path | None = None
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _done(out_dir: Path, sources: Sequence[Source], kinds: tuple[str, ...]) -> list[bool]:
    """Which inputs already have every output complete (checked as ``matte --resume`` checks, in threads)."""

    def check(source: Source) -> bool:
        return not source.is_uri and is_done(out_dir, source, kinds)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(check, sources))


def _kept_row(index: int, source: Source, previous: dict | None, out_dir: Path, kinds: tuple[str, ...]) -> dict:
    """The manifest row of an input whose outputs were found complete (the earlier row when there is one)."""
    outputs = [str(p) for p in output_paths(out_dir, source, kinds).values()]
    row = dict(previous) if previous and previous["status"] == "written" else {
        "seconds": None, "decode_seconds": None, "matte_seconds": None, "write_seconds": None, "worker": None,
        "run": None, "finished": None,
    }  # fmt: skip
    row.update(index=index, input=source.location, relative=source.relative.as_posix(), status="written",
               outputs=outputs, error=None)  # fmt: skip
    return row


def _lost_row(index: int, source: Source, run: str) -> dict:
    return {
        "index": index, "input": source.location, "relative": source.relative.as_posix(), "status": "failed",
        "outputs": [], "error": LOST, "seconds": None, "decode_seconds": None, "matte_seconds": None,
        "write_seconds": None, "worker": None, "run": run, "finished": None,
    }  # fmt: skip


def run_dataset(
    sources: Sequence[Source],
    context: ReferenceContext,
    spec: EngineSpec,
    out_dir: Path,
    settings: JobSettings,
    resources: Resources = Resources(),
    max_image_pixels: int | None = None,
    progress: Callable[[int], None] | None = None,
    after_write: AfterWrite | None = None,
) -> DatasetReport:
    """Matte every source on the running Ray cluster; write ``OUT/manifest.parquet``. Failures are listed, not raised.

    ``after_write(index)`` runs inside the actor after an input's outputs are written (monitoring, fault tests).
    """
    ray = require_ray()
    started = time.perf_counter()
    run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report = DatasetReport()
    out_dir.mkdir(parents=True, exist_ok=True)
    report.removed_partials += _remove_partials(out_dir, [*KIND_MODES, PARTS_FOLDER])
    rows, pending = _resume(sources, out_dir, settings)
    report.skipped = len(rows)
    if progress is not None and rows:
        progress(len(rows))
    writer = ManifestWriter(out_dir, run)
    if pending:
        dataset = functools.partial(
            build_dataset, ray, micro_batches(pending, settings.batch_size), context, spec, out_dir, settings,
            resources, run, max_image_pixels, after_write,
        )  # fmt: skip
        _collect(ray, dataset, rows, writer, progress)
    for index, source in pending:  # no result: complete outputs (written before a crash) count, as for --resume
        if index not in rows:
            complete = not source.is_uri and is_done(out_dir, source, settings.kinds)
            rows[index] = _kept_row(index, source, None, out_dir, settings.kinds) if complete else _lost_row(
                index, source, run
            )
    # partial files of a killed actor (its micro-batch was redone elsewhere)
    report.removed_partials += _remove_partials(out_dir, KIND_MODES)
    report.manifest = writer.finish(rows.values())
    report.rows = [rows[index] for index in sorted(rows)]
    report.failed = [(row["input"], row["error"]) for row in report.rows[: len(sources)] if row["status"] == "failed"]
    report.written = len(pending) - len(report.failed)
    report.seconds = time.perf_counter() - started
    return report


def _remove_partials(out_dir: Path, folders: Sequence[str]) -> int:
    """Remove the partial files left by an interrupted write in ``OUT/<folder>``; how many were removed."""
    return sum(len(remove_stale_partials(out_dir / folder)) for folder in folders)


def _resume(
    sources: Sequence[Source], out_dir: Path, settings: JobSettings
) -> tuple[dict[int, dict], list[tuple[int, Source]]]:
    """The manifest rows of inputs already complete (``--resume``), by index, and the ``(index, source)`` to do."""
    previous = read_manifest(out_dir) if settings.resume else {}
    done = _done(out_dir, sources, settings.kinds) if settings.resume else [False] * len(sources)
    rows: dict[int, dict] = {}
    pending: list[tuple[int, Source]] = []
    for index, (source, complete) in enumerate(zip(sources, done)):
        if complete:
            rows[index] = _kept_row(index, source, previous.get(source.location), out_dir, settings.kinds)
        else:
            pending.append((index, source))
    return rows, pending


def _collect(
    ray, build: Callable[[], object], rows: dict[int, dict], writer: ManifestWriter,
    progress: Callable[[int], None] | None,
) -> None:  # fmt: skip
    """Build the dataset (``build()``) and run it, adding each input's first result row to ``rows`` and the
    manifest. A micro-batch that fails on every attempt loses its rows, not the run (the caller lists them)."""
    context_settings = ray.data.DataContext.get_current()  # captured by the dataset when it is built
    errored_blocks, context_settings.max_errored_blocks = context_settings.max_errored_blocks, -1
    try:
        dataset = build()
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            fresh = [row for row in batch.to_pylist() if row["index"] not in rows]  # a retried batch: first wins
            rows.update((row["index"], row) for row in fresh)
            writer.add(fresh)
            if progress is not None and fresh:
                progress(len(fresh))
    finally:
        context_settings.max_errored_blocks = errored_blocks
