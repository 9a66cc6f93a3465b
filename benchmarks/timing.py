"""Stage timers, peak-memory probes and run-time instrumentation of icm_core (no source file is changed).

Stages (the same names for both pipelines):
    vae          VAE encoder + posterior sampling + adding noise
    unet         UNet forward, *excluding* the attention-capture time below
    attention    core of every self-attention layer at the captured token grids (scores, softmax, probabilities
                 kept for the maps, attention output) plus storing/averaging the maps; for the baseline also the
                 cross-attention probabilities it computes and throws away at those grids
    decoder      in-context decoder (and reference-token selection)
    postprocess  alpha back to the input size, clamp, to CPU
    other        everything else (pre-processing, Python overhead) = total - the stages above
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

STAGES = ("vae", "unet", "attention", "decoder", "postprocess", "other")


class StageTimer:
    """Accumulates wall time per stage; on CUDA it synchronises at every stage boundary (never inside a stage)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.totals: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] += time.perf_counter() - start

    def breakdown(self, total: float) -> dict[str, float]:
        """Exclusive seconds per stage; ``unet_total`` (raw, incl. attention) is split into unet + attention."""
        result = {
            "vae": self.totals.get("vae", 0.0),
            "unet": self.totals.get("unet_total", 0.0) - self.totals.get("attention", 0.0),
            "attention": self.totals.get("attention", 0.0),
            "decoder": self.totals.get("decoder", 0.0),
            "postprocess": self.totals.get("postprocess", 0.0),
        }
        result["other"] = max(0.0, total - sum(result.values()))
        return result


# ---- memory ---------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


class PeakMemory:
    """Peak memory of a code region: process RSS high-water mark on CPU, ``max_memory_allocated`` on CUDA.

    On CPU the kernel's high-water mark (VmHWM) is reset through ``/proc/self/clear_refs``; ``start`` is the RSS
    when the region begins, so ``peak - start`` is the region's working memory.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.start = self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # reset VmHWM to the current RSS
            self.start = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _status_kib("VmHWM") * 1024


# ---- instrumentation of our pipeline ----------------------------------------------------------------------------


@contextlib.contextmanager
def instrument_icm(engine, timer: StageTimer) -> Iterator[None]:
    """Time the stages of an :class:`icm_core.pipeline.IconMatting` by wrapping functions at run time.

    Wraps the backend's ``latent_distribution`` (vae) and ``unet_features`` (unet_total), the chunked attention
    function and the attention accumulator used by the diffusers backend (attention), the decoder's ``forward``
    and the engine's ``_restore`` (postprocess). Everything is restored on exit.
    """
    from icm_core import pipeline as pipeline_module
    from icm_core.features import diffusers_backend

    def timed(function, name):
        def wrapper(*args, **kwargs):
            with timer.stage(name):
                return function(*args, **kwargs)

        return wrapper

    backend, decoder = engine.backend, engine.decoder
    original_accumulator = diffusers_backend.AttentionAccumulator

    class TimedAccumulator(original_accumulator):
        def add(self, level, probabilities):
            with timer.stage("attention"):
                return super().add(level, probabilities)

        def maps(self):
            with timer.stage("attention"):
                return super().maps()

    patches = [
        (backend, "latent_distribution", timed(backend.latent_distribution, "vae")),
        (backend, "unet_features", timed(backend.unet_features, "unet_total")),
        (decoder, "forward", timed(decoder.forward, "decoder")),
        (
            diffusers_backend,
            "chunked_attention_with_probabilities",
            timed(diffusers_backend.chunked_attention_with_probabilities, "attention"),
        ),
        (diffusers_backend, "AttentionAccumulator", TimedAccumulator),
    ]
    if hasattr(engine, "_restore"):  # alpha back to the input's size (+ optional refinement)
        patches.append((engine, "_restore", timed(engine._restore, "postprocess")))
    elif hasattr(pipeline_module, "restore_size"):
        patches.append((pipeline_module, "restore_size", timed(pipeline_module.restore_size, "postprocess")))
    saved = [(owner, name, owner.__dict__.get(name, _MISSING)) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, previous in reversed(saved):
            if previous is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)


_MISSING = object()
