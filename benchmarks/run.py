"""Benchmark icm_core against an official-style IconMatting baseline on the same random SD 2.1-architecture weights.

    python -m benchmarks.run [--targets 1 8 64] [--width-multiplier 0.125] [--device cpu|cuda]
                             [--dtype fp32|fp16|bf16] [--out docs/benchmarks.md] [--smoke]

For every target count it runs the baseline (``benchmarks/baseline.py``: reference re-encoded per target, VAE on E
copies, full UNet, materialised attention maps) and icm_core (``encode_reference`` once + ``matte`` in
micro-batches), checks that both give the same alphas (fp32: max abs diff <= 1e-4, else it exits with an error),
and reports targets/s, their ratio, time per stage and peak memory. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from icm_core.commands.options import DTYPES
from icm_core.config import ExtractionConfig
from icm_core.features.backend import extract_features
from icm_core.features.diffusers_backend import DiffusersFeatureBackend
from icm_core.features.precision import resolve_compute_dtype
from icm_core.pipeline import IconMatting

from .baseline import OfficialStyleBaseline, reference_tokens, to_model_square
from .models import build_models, calibrate_decoder, synthetic_scene
from .report import write_report
from .timing import STAGES, PeakMemory, StageTimer, instrument_icm

FP32_TOLERANCE = 1e-4
REDUCED_PRECISION_TOLERANCE = 5e-2


class AlphaMismatchError(AssertionError):
    """The baseline and icm_core disagree: the baseline is no longer an honest reference (or icm_core broke)."""


@dataclass
class Measurement:
    targets: int
    seconds: float
    cpu_seconds: float  # CPU time of this process (all threads): much less sensitive to other jobs than wall time
    stages: dict[str, float]
    start_bytes: int
    peak_bytes: int
    alphas: list[torch.Tensor] = field(repr=False, default_factory=list)

    @property
    def targets_per_second(self) -> float:
        return self.targets / self.seconds

    @staticmethod
    def merge(parts: list["Measurement"]) -> "Measurement":
        """One measurement of consecutive target ranges (times add up, memory is the worst part)."""
        return Measurement(
            targets=sum(part.targets for part in parts),
            seconds=sum(part.seconds for part in parts),
            cpu_seconds=sum(part.cpu_seconds for part in parts),
            stages={name: sum(part.stages[name] for part in parts) for name in parts[0].stages},
            start_bytes=max(part.peak_bytes for part in parts) - max(p.peak_bytes - p.start_bytes for p in parts),
            peak_bytes=max(part.peak_bytes for part in parts),  # so peak - start is the worst part's working memory
            alphas=[alpha for part in parts for alpha in part.alphas],
        )


@dataclass
class Row:
    targets: int
    baseline_targets: int
    baseline: list[Measurement]
    ours: list[Measurement]
    max_abs_diff: float
    baseline_reduced: list[Measurement] = field(default_factory=list)  # the baseline at --dtype (fp16/bf16 runs)

    @staticmethod
    def _median(runs: list[Measurement], key) -> float:
        return statistics.median(key(run) for run in runs)

    def baseline_tps(self) -> float:
        return self._median(self.baseline, lambda m: m.targets_per_second)

    def ours_tps(self) -> float:
        return self._median(self.ours, lambda m: m.targets_per_second)

    def baseline_reduced_tps(self) -> float:
        return self._median(self.baseline_reduced, lambda m: m.targets_per_second)

    def cpu_ratio(self) -> float:
        """Baseline CPU seconds per target / icm_core CPU seconds per target (medians)."""
        per_target = lambda runs: self._median(runs, lambda m: m.cpu_seconds / m.targets)  # noqa: E731
        return per_target(self.baseline) / per_target(self.ours)

    def runs(self, which: str) -> list[Measurement]:
        return {"baseline": self.baseline, "baseline_reduced": self.baseline_reduced, "ours": self.ours}[which]

    def stages_per_target(self, which: str) -> dict[str, float]:
        runs = self.runs(which)
        return {s: self._median(runs, lambda m: m.stages[s] / m.targets) for s in STAGES}

    def peak(self, which: str) -> tuple[int, int]:
        """(peak bytes, peak - start bytes), maxima over repeats."""
        runs = self.runs(which)
        return max(m.peak_bytes for m in runs), max(m.peak_bytes - m.start_bytes for m in runs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=None, help="target counts (default 1 8 64)")
    parser.add_argument("--width-multiplier", type=float, default=None,
                        help="channel-width multiplier of the SD 2.1 UNet/VAE (default 0.125 on CPU, 1 on CUDA)")
    parser.add_argument("--keep-heads", action="store_true",
                        help="keep SD 2.1's head counts (5, 10, 20, 20) at any width instead of 64-wide heads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                        help="UNet/VAE precision of icm_core (bf16 runs as fp16); the baseline runs in fp32 like "
                             "the official code and, for fp16/bf16, also at this precision, so the gains from "
                             "precision and from the algorithm are reported separately")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="icm_core matte() batch_size (default: 1 on CPU, where it is fastest and leanest; 4 on CUDA)")
    parser.add_argument("--ensemble", type=int, default=4, help="ensemble size E (official 4)")
    parser.add_argument("--image-size", type=int, default=None, help="model resolution (default 768; smoke 128)")
    parser.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="size of the synthetic input images (default 576 768; smoke 96 128)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats (median) for counts <= --repeat-max-targets")
    parser.add_argument("--repeat-max-targets", type=int, default=1)
    parser.add_argument("--baseline-max-targets", type=int, default=8,
                        help="run the baseline on at most this many targets (it handles targets one at a time, so "
                             "its per-target time and memory do not depend on the count); 0 = no cap")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write the results into")
    parser.add_argument("--smoke", action="store_true", help="tiny widths, 128 px, 2 targets: a few seconds")
    args = parser.parse_args(argv)
    if args.micro_batch is None:
        args.micro_batch = 1 if args.device == "cpu" else 4
    if args.smoke:
        args.targets = args.targets or [1, 2]
        args.image_size = args.image_size or 128
        args.input_size = args.input_size or [96, 128]
        args.repeats = 1
    args.targets = args.targets or [1, 8, 64]
    args.image_size = args.image_size or 768
    args.input_size = tuple(args.input_size or (576, 768))
    if args.width_multiplier is None:
        args.width_multiplier = 1.0 if args.device == "cuda" else 0.125
    return args


def _release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    else:
        try:  # hand freed heap pages back to the OS so the RSS high-water mark measures this run only
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass


def _measure(device: str, targets: int, run) -> Measurement:
    _release_memory(device)
    timer = StageTimer(device)
    with PeakMemory(device) as memory:
        timer._sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        alphas = run(timer)
        timer._sync()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return Measurement(targets, seconds, cpu_seconds, timer.breakdown(seconds), memory.start, memory.peak, alphas)


class Bench:
    """Builds both pipelines on the same weights and measures them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        dtype = resolve_compute_dtype(DTYPES[args.dtype], "--dtype")  # bf16 runs as fp16 (see Precision)
        if args.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        models = build_models(args.width_multiplier, args.image_size, smoke=args.smoke, seed=args.seed,
                              device=args.device, keep_heads=args.keep_heads)
        self.models = models
        extraction = ExtractionConfig(image_size=args.image_size, ensemble_size=args.ensemble)
        height, width = args.input_size
        count = max(args.targets)
        # The reference is square at the model's size: icm_core pools the mask at the image's own resolution, the
        # official code at 768 px after resizing; both agree exactly when no resize is involved.
        self.reference, self.reference_mask = synthetic_scene(10_000 + args.seed, args.image_size, args.image_size)
        self.targets = [synthetic_scene(args.seed * 1000 + i + 1, height, width)[0] for i in range(count)]
        fp32_backend = DiffusersFeatureBackend(models.unet, models.vae, models.prompt)
        self._calibrate(fp32_backend, extraction)
        if dtype == torch.float32:
            backend = fp32_backend
        else:
            backend = DiffusersFeatureBackend(
                copy.deepcopy(models.unet).to(dtype), copy.deepcopy(models.vae).to(dtype), models.prompt
            )
        self.engine = IconMatting(backend, models.decoder, extraction)
        self.baseline = OfficialStyleBaseline(
            models.unet, models.vae, models.prompt, models.decoder, extraction.timestep, args.ensemble,
            args.image_size,
        )
        self.baseline_reduced = None  # the same official-style work at icm_core's reduced precision
        if dtype != torch.float32:
            self.baseline_reduced = OfficialStyleBaseline(
                backend.unet, backend.vae, models.prompt, models.decoder, extraction.timestep, args.ensemble,
                args.image_size,
            )
        self.tolerance = FP32_TOLERANCE if dtype == torch.float32 else REDUCED_PRECISION_TOLERANCE

    @torch.no_grad()
    def _calibrate(self, backend: DiffusersFeatureBackend, extraction: ExtractionConfig) -> None:
        side, seed = extraction.image_size, self.args.seed
        reference = extract_features(backend, to_model_square(self.reference, side), extraction, seed, False)
        tokens = reference_tokens(reference.high[0], self.reference_mask, side // 16)
        target = to_model_square(self.targets[0], side).to(backend.device)
        features = extract_features(backend, target, extraction, seed, True)
        calibrate_decoder(self.models.decoder, tokens, features, target)

    def run_baseline(self, count: int, seed: int | None = None, start: int = 0, reduced: bool = False) -> Measurement:
        """The baseline on targets ``start .. start + count - 1`` (``reduced``: at ``--dtype``, not fp32)."""
        seed = self.args.seed if seed is None else seed
        targets = self.targets[start : start + count]
        baseline = self.baseline_reduced if reduced else self.baseline

        def run(timer: StageTimer) -> list[torch.Tensor]:
            baseline.timer = timer
            return baseline.matte(self.reference, self.reference_mask, targets, seed)

        return _measure(self.args.device, count, run)

    def run_ours(self, count: int, seed: int | None = None) -> Measurement:
        seed = self.args.seed if seed is None else seed

        def run(timer: StageTimer) -> list[torch.Tensor]:
            with instrument_icm(self.engine, timer), torch.no_grad():
                context = self.engine.encode_reference(self.reference, self.reference_mask, seed=seed)
                return self.engine.matte(context, self.targets[:count], seed=seed, batch_size=self.args.micro_batch)

        return _measure(self.args.device, count, run)

    def compare(self, baseline: Measurement, ours: Measurement) -> float:
        """Max abs alpha difference over the targets both ran; above the tolerance it raises in fp32 (in reduced
        precision icm_core legitimately differs from the fp32 baseline, so there it only warns)."""
        pairs = list(zip(baseline.alphas, ours.alphas))
        diff = max(float((a - b).abs().max()) for a, b in pairs)
        if diff > self.tolerance:
            message = (
                f"baseline and icm_core alphas differ by {diff:.3g} (> {self.tolerance:g}) on the first "
                f"{len(pairs)} targets; the baseline no longer computes what icm_core computes (or icm_core broke)."
            )
            if self.args.dtype == "fp32":
                raise AlphaMismatchError(message)
            print(f"WARNING ({self.args.dtype}): {message}", file=sys.stderr)
        return diff


def alpha_stats(alphas: list[torch.Tensor]) -> dict[str, float]:
    stacked = torch.stack([alpha.flatten() for alpha in alphas])
    soft = ((stacked > 0.01) & (stacked < 0.99)).float().mean()
    return {"mean": float(stacked.mean()), "std": float(stacked.std()), "soft_fraction": float(soft)}


def _measure_row(bench: Bench, count: int, cap: int, cache: dict, log) -> Row:
    """icm_core on ``count`` targets; the baseline on ``min(count, cap)`` (reused when that count was measured)."""
    repeats = bench.args.repeats if count <= bench.args.repeat_max_targets else 1
    base_count = min(count, cap)
    measure_base = base_count not in cache
    base_runs, reduced_runs = cache.get(base_count, ([], []))
    our_runs: list[Measurement] = []
    for repeat in range(repeats):
        if not measure_base:
            our_runs.append(bench.run_ours(count))
        elif base_count > 1:  # sandwich: baseline on the first half, icm_core, baseline on the second half
            first = bench.run_baseline(base_count // 2)
            our_runs.append(bench.run_ours(count))
            second = bench.run_baseline(base_count - base_count // 2, start=base_count // 2)
            base_runs.append(Measurement.merge([first, second]))
        elif repeat % 2 == 0:  # one baseline target: alternate the order, so load drift hits both alike
            base_runs.append(bench.run_baseline(1))
            our_runs.append(bench.run_ours(count))
        else:
            our_runs.append(bench.run_ours(count))
            base_runs.append(bench.run_baseline(1))
        if measure_base and bench.baseline_reduced is not None:
            reduced_runs.append(bench.run_baseline(base_count, reduced=True))
        log(f"  {count} targets: baseline {base_runs[-1].seconds:.2f}s ({base_count}), "
            f"icm_core {our_runs[-1].seconds:.2f}s")
    cache[base_count] = (base_runs, reduced_runs)
    diff = max(bench.compare(base, ours) for base, ours in zip(base_runs, our_runs))
    for run in our_runs:
        run.alphas = []  # keep memory flat between counts; baseline alphas stay for later comparisons
    for run in reduced_runs:
        run.alphas = []
    return Row(count, base_count, base_runs, our_runs, diff, reduced_runs)


def run_benchmark(args: argparse.Namespace, log=print) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    bench = Bench(args)
    log(f"built models in {time.perf_counter() - started:.1f}s; warming up")
    warm_base, warm_ours = bench.run_baseline(1), bench.run_ours(1)
    warm_diff = bench.compare(warm_base, warm_ours)
    if bench.baseline_reduced is not None:
        bench.run_baseline(1, reduced=True)
    stats = alpha_stats(warm_ours.alphas)
    log(f"warm-up: baseline {warm_base.seconds:.2f}s, icm_core {warm_ours.seconds:.2f}s, max |dalpha| {warm_diff:.2e}")
    cap = args.baseline_max_targets or max(args.targets)
    baseline_cache: dict[int, tuple[list[Measurement], list[Measurement]]] = {}
    rows = []
    for count in args.targets:
        row = _measure_row(bench, count, cap, baseline_cache, log)
        rows.append(row)
        log(f"{count:>4} targets: baseline {row.baseline_tps():.4f}/s, icm_core {row.ours_tps():.4f}/s, "
            f"x{row.ours_tps() / row.baseline_tps():.2f} (CPU time x{row.cpu_ratio():.2f}), "
            f"max |dalpha| {row.max_abs_diff:.2e}")
    return {
        "args": args,
        "rows": rows,
        "alpha_stats": stats,
        "warm_diff": warm_diff,
        "tolerance": bench.tolerance,
        "unet_config": bench.models.unet_config,
        "vae_config": bench.models.vae_config,
        "wall_seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run_benchmark(args, log=lambda message: print(message, flush=True))
    except AlphaMismatchError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    text = write_report(result, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
