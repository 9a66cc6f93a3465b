"""The Ray Data pipeline: micro-batches -> decode (CPU tasks) -> matte + write (actor pool) -> manifest rows.

Same numbers as the local ``matte``: the driver cuts the pending inputs into the micro-batches the local command
forms (``batch_size`` consecutive inputs in input order), each actor mattes one micro-batch per call with the same
engine, seed and options, and writes the outputs with the same code (``make_outputs`` -> ``to_uint8`` ->
``write_png_atomic``). Only an unreadable input changes the grouping (the local command fills its place from the
next input), which can move later alphas of that run by float rounding.

Exactly once: every output file is written to a partial file and renamed into place, so a retried micro-batch
(Ray restarts a killed actor and resubmits its work) rewrites identical bytes under the same name; the driver keeps
the first result row of every input and lists an input without any result as failed; partial files left by a killed
actor are removed at the end.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..config import ExtractionConfig
from ..image_io import read_image, set_max_image_pixels, to_uint8
from ..io.images import to_rgb
from ..loader import load_engine
from ..commands.matte_job import IMAGE_READ_ERRORS, JobSettings, output_paths
from ..outputs import make_outputs
from ..commands.options import DTYPES
from ..io.file_safety import write_png_atomic
from ..pipeline import IconMatting, ReferenceContext
from ..weights.decoder import load_decoder
from .inputs import Source, filesystem, is_uri
from .manifest import schema

logger = logging.getLogger(__name__)

DECODE_MEMORY = 512 * 2**20  # per decode task (a worker with torch imported + a micro-batch); also keeps Ray from
# fusing the decode tasks into the actors (fused, the GPU would wait for every decode)
AfterWrite = Callable[[int], None]


@dataclass(frozen=True)
class EngineSpec:
    """How every actor builds its engine (as ``matte`` does: the decoder's image size fixes the extraction size)."""

    sd: str
    decoder: str
    device: str = "cpu"
    dtype: str = "fp32"
    timestep: int = 200
    ensemble: int = 4
    autocast: str | None = None
    channels_last: bool = False

    def load(self) -> IconMatting:
        decoder = load_decoder(self.decoder)
        extraction = ExtractionConfig(self.timestep, self.ensemble, decoder.config.image_size)
        return load_engine(
            self.sd, decoder, device=self.device, dtype=DTYPES[self.dtype], extraction=extraction,
            autocast_dtype=DTYPES[self.autocast] if self.autocast else None, channels_last=self.channels_last,
        )  # fmt: skip


@dataclass(frozen=True)
class Resources:
    """Ray resources: actors in the pool and what each holds; CPUs per decode task; torch threads per actor;
    attempts of a micro-batch after the first when its actor dies (then its inputs are listed as failed)."""

    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    decode_cpus: float = 1.0
    threads_per_actor: int = 1
    retries: int = 3


def micro_batches(pending: Sequence[tuple[int, Source]], batch_size: int) -> list[dict]:
    """Rows of the dataset: ``batch_size`` consecutive pending inputs each (the local command's micro-batches)."""
    rows = []
    for group, start in enumerate(range(0, len(pending), batch_size)):
        chunk = pending[start : start + batch_size]
        rows.append({
            "group": group,
            "index": [index for index, _ in chunk],
            "input": [source.location for _, source in chunk],
            "relative": [source.relative.as_posix() for _, source in chunk],
        })  # fmt: skip
    return rows


def _read(location: str) -> torch.Tensor:
    """``[3, H, W]`` float32 in [0, 1], exactly as the local command reads it (URIs go through a local copy)."""
    if not is_uri(location):
        return to_rgb(read_image(location), location)
    fs, path = filesystem(location)
    suffix = PurePosixPath(path).suffix
    with tempfile.TemporaryDirectory(prefix="icm-fetch-") as folder:
        local = Path(folder) / f"input{suffix}"
        fs.get_file(path, str(local))
        return to_rgb(read_image(local), location)


def decode_groups(table, max_image_pixels: int | None = None):  # noqa: ANN001, ANN201 - pyarrow tables
    """Decode stage (a CPU task): adds ``pixels`` (float32 bytes), ``shape`` ``[3, H, W]``, ``error``,
    ``decode_seconds`` per input; an unreadable input gets its error and no pixels."""
    import pyarrow as pa

    if max_image_pixels is not None:
        set_max_image_pixels(max_image_pixels)
    rows = table.to_pylist()
    for row in rows:
        row.update(pixels=[], shape=[], error=[], decode_seconds=[])
        for location in row["input"]:
            started = time.perf_counter()
            try:
                image = _read(location)
                pixels, shape, error = image.numpy().tobytes(), list(image.shape), None
            except IMAGE_READ_ERRORS as failure:
                pixels, shape, error = b"", [], str(failure) or type(failure).__name__
            row["pixels"].append(pixels)
            row["shape"].append(shape)
            row["error"].append(error)
            row["decode_seconds"].append(time.perf_counter() - started)
    return pa.Table.from_pylist(rows, schema=_decoded_schema())


def _decoded_schema():  # noqa: ANN202
    import pyarrow as pa

    return pa.schema([
        ("group", pa.int64()), ("index", pa.list_(pa.int64())), ("input", pa.list_(pa.string())),
        ("relative", pa.list_(pa.string())), ("pixels", pa.list_(pa.large_binary())),
        ("shape", pa.list_(pa.list_(pa.int64()))), ("error", pa.list_(pa.string())),
        ("decode_seconds", pa.list_(pa.float64())),
    ])  # fmt: skip


class MatteWorker:
    """One actor: loads the engine once, then mattes one micro-batch per call and writes its outputs."""

    def __init__(
        self,
        spec: EngineSpec,
        context_ref: list,
        out_dir: str,
        settings: JobSettings,
        run: str,
        threads: int = 1,
        after_write: AfterWrite | None = None,
    ) -> None:
        import ray

        if threads > 0:
            torch.set_num_threads(threads)
        self.engine = spec.load()
        self.context: ReferenceContext = ray.get(context_ref[0])
        self.engine.check_context(self.context)
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.run = run
        self.after_write = after_write
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, table):  # noqa: ANN001, ANN204 - pyarrow table in, pyarrow table out
        import pyarrow as pa

        rows = []
        for group in table.to_pylist():
            rows += self._group(group)
        return pa.Table.from_pylist(rows, schema=schema())

    def _row(self, group: dict, position: int, **values) -> dict:
        row = {
            "index": group["index"][position], "input": group["input"][position],
            "relative": group["relative"][position], "status": "failed", "outputs": [], "error": None,
            "seconds": None, "decode_seconds": group["decode_seconds"][position], "matte_seconds": None,
            "write_seconds": None, "worker": self.worker, "run": self.run, "finished": None,
        }  # fmt: skip
        row.update(values)
        return row

    def _group(self, group: dict) -> list[dict]:
        rows: dict[int, dict] = {}
        readable: list[tuple[int, torch.Tensor]] = []
        for position, error in enumerate(group["error"]):
            if error is not None:
                rows[position] = self._row(group, position, error=error)
                continue
            array = np.frombuffer(group["pixels"][position], dtype=np.float32).reshape(group["shape"][position])
            readable.append((position, torch.from_numpy(array.copy())))
        for position, alpha, seconds, error in self._alphas(readable):
            if error is not None:
                rows[position] = self._row(group, position, error=error, matte_seconds=seconds)
                continue
            image = dict(readable)[position]
            rows[position] = self._write(group, position, image, alpha, seconds)
        return [rows[position] for position in sorted(rows)]

    def _alphas(self, readable: list[tuple[int, torch.Tensor]]):  # noqa: ANN202 - (position, alpha, s, error)
        """Matte the micro-batch as the local command does; if it fails, each image alone (failures listed)."""
        if not readable:
            return []
        started = time.perf_counter()
        try:
            alphas = [alpha for _, alpha in self._iter([image for _, image in readable])]
        except ValueError as error:  # non-finite features or alpha of one image: find it, keep the others
            logger.warning("micro-batch failed (%s); matting its images one by one", error)
            return [self._alone(position, image) for position, image in readable]
        share = (time.perf_counter() - started) / len(readable)
        return [(position, alpha, share, None) for (position, _), alpha in zip(readable, alphas)]

    def _alone(self, position: int, image: torch.Tensor) -> tuple:
        started = time.perf_counter()
        try:
            [(_, alpha)] = list(self._iter([image]))
        except ValueError as error:
            return position, None, time.perf_counter() - started, str(error)
        return position, alpha, time.perf_counter() - started, None

    def _iter(self, images: list[torch.Tensor]):  # noqa: ANN202
        s = self.settings
        return self.engine.iter_matte(self.context, images, s.seed, s.batch_size, fit=s.fit, refinement=s.refinement)

    def _write(self, group: dict, position: int, image: torch.Tensor, alpha: torch.Tensor, matte: float) -> dict:
        started = time.perf_counter()
        paths = output_paths(self.out_dir, Source(group["input"][position], Path(group["relative"][position])),
                             self.settings.kinds)  # fmt: skip
        try:
            outputs = make_outputs(image, alpha, tuple(paths), self.settings.background, self.settings.estimate_colors)
            for kind, path in paths.items():
                write_png_atomic(to_uint8(getattr(outputs, kind)), path)
        except (OSError, ValueError) as error:
            return self._row(group, position, error=str(error), matte_seconds=matte)
        write = time.perf_counter() - started
        if self.after_write is not None:
            self.after_write(group["index"][position])
        decode = group["decode_seconds"][position]
        return self._row(
            group, position, status="written", outputs=[str(p) for p in paths.values()],
            seconds=decode + matte + write, matte_seconds=matte, write_seconds=write, finished=time.time(),
        )  # fmt: skip


def build_dataset(
    ray,  # noqa: ANN001 - the ray module
    groups: list[dict],
    context: ReferenceContext,
    spec: EngineSpec,
    out_dir: Path,
    settings: JobSettings,
    resources: Resources,
    run: str,
    max_image_pixels: int | None = None,
    after_write: AfterWrite | None = None,
):  # noqa: ANN201 - a ray.data.Dataset of manifest rows
    """The lazy pipeline (nothing runs until it is iterated).

    One micro-batch in flight per actor: an actor that dies costs only its running micro-batch an attempt (a
    queued one would lose one too); the next decoded micro-batches wait in the object store meanwhile.
    """
    context_ref = ray.put(context)  # shared through the object store: every actor gets the same tokens
    blocks = max(1, min(len(groups), 1000))
    dataset = ray.data.from_items(groups, override_num_blocks=blocks)
    decoded = dataset.map_batches(
        decode_groups, fn_kwargs={"max_image_pixels": max_image_pixels}, batch_size=1, batch_format="pyarrow",
        num_cpus=resources.decode_cpus, memory=DECODE_MEMORY,
    )  # fmt: skip
    return decoded.map_batches(
        MatteWorker,
        fn_constructor_kwargs={
            "spec": spec, "context_ref": [context_ref], "out_dir": str(out_dir), "settings": settings, "run": run,
            "threads": resources.threads_per_actor, "after_write": after_write,
        },
        batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=resources.actors, max_tasks_in_flight_per_actor=1),
        num_gpus=resources.gpus_per_actor or None, num_cpus=resources.cpus_per_actor,
        max_restarts=-1, max_task_retries=resources.retries,  # a killed actor restarts; a poisonous batch gives up
    )  # fmt: skip
