"""Connecting to Ray (a local cluster on loopback, or ``--address``), sizing the actor pool, encoding the context."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..commands.checks import CommandError
from ..pipeline import ReferenceContext
from .dataset import EngineSpec, Resources

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def connect(ray, address: str | None, num_cpus: int | None, package_root: Path) -> Iterator[None]:  # noqa: ANN001
    """Use the running Ray if there is one; else start a local cluster (loopback, no dashboard) or join ``address``,
    and shut it down at the end. Workers import ``icm_core`` from ``package_root`` (local) or get it shipped
    (``py_modules``, remote clusters)."""
    _quiet(ray)
    if ray.is_initialized():
        yield
        return
    if address is None:
        path = os.pathsep.join(p for p in (str(package_root), os.environ.get("PYTHONPATH", "")) if p)
        options = {"num_cpus": num_cpus, "_node_ip_address": "127.0.0.1",
                   "runtime_env": {"env_vars": {"PYTHONPATH": path}}}  # fmt: skip
    else:
        options = {"address": address, "runtime_env": {"py_modules": [str(package_root / "icm_core")]}}
    try:
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False, **options)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise CommandError(f"could not start or reach Ray ({address or 'local cluster'}): {error}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _quiet(ray) -> None:  # noqa: ANN001
    """The command shows its own progress bar: no Ray Data progress bars or per-stage INFO logs."""
    if not logger.isEnabledFor(logging.INFO):
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    ray.data.DataContext.get_current().enable_progress_bars = False


def resources_for(ray, args: argparse.Namespace) -> Resources:  # noqa: ANN001
    """Actors and their resources: one GPU per actor when the cluster has GPUs (or ``--device cuda``)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = args.device == "cuda" or (args.device == "auto" and gpus > 0)
    if use_gpu and gpus == 0:
        raise CommandError("--device cuda was requested but the Ray cluster has no GPU; use --device cpu.")
    actors = args.actors or (gpus if use_gpu else 1)
    return Resources(
        actors=actors, gpus_per_actor=1.0 if use_gpu else 0.0, cpus_per_actor=args.cpus_per_actor,
        decode_cpus=args.decode_cpus, threads_per_actor=args.threads_per_actor, retries=args.retries,
    )  # fmt: skip


def _encode(spec: EngineSpec, plan, options: argparse.Namespace, threads: int) -> ReferenceContext:  # noqa: ANN001
    """In a worker with an actor's resources: load the engine and encode (or check) the reference context."""
    from ..commands import matte as local

    torch.set_num_threads(threads)
    try:
        engine = spec.load()
    except (ValueError, FileNotFoundError) as error:  # weights missing, damaged or of another model
        raise CommandError(str(error)) from error
    return local._reference_context(engine, plan, options)


def prepare_context(ray, spec: EngineSpec, plan, args: argparse.Namespace, resources: Resources) -> ReferenceContext:  # noqa: ANN001
    """The reference context, encoded once (by one task with an actor's resources, so on the actors' device)."""
    options = argparse.Namespace(**{key: getattr(args, key) for key in (
        "context", "reference", "seed", "min_coverage", "fit", "top_m")})  # fmt: skip
    task = ray.remote(_encode).options(
        num_gpus=resources.gpus_per_actor or None, num_cpus=resources.cpus_per_actor, max_retries=1
    )
    try:
        return ray.get(task.remote(spec, plan, options, resources.threads_per_actor))
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, ValueError):  # CommandError, an empty RoI, a context of another model
            raise CommandError(str(error.cause)) from None
        raise
