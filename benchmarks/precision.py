"""Alpha error and speed of every precision mode on the official tiny golden (same weights, same inputs).

    python -m benchmarks.precision [--device cpu|cuda] [--repeats 5] [--golden ../shared/golden]

For each mode: UNet features from the golden's stored noisy latents (reference + targets), then the decoder as the
pipeline runs it (always fp32). Reports the max / mean abs alpha difference against this run's fp32 result and
against the official golden alpha, and the time of a mode relative to fp32 measured in the same run (median of
``--repeats``, modes interleaved so load drift hits all alike). On CUDA, TF32 is off, so fp32 is true fp32, and
the peak GPU memory of each mode is reported too. See docs/benchmarks.md, *Precision*.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from icm_core.features.diffusers_backend import DiffusersFeatureBackend
from icm_core.features.precision import resolve_compute_dtype
from icm_core.modeling.decoder import InContextDecoder
from icm_core.modeling.key_table import infer_decoder_config, our_key
from icm_core.modeling.similarity import pool_token_mask, select_reference_tokens
from icm_core.pipeline import decode_alpha

# name -> (UNet/VAE weight dtype, autocast dtype) as asked for (CLI: --dtype / --autocast); bf16 runs as fp16.
MODES = {
    "fp32": (torch.float32, None),
    "--autocast fp16": (torch.float32, torch.float16),
    "--autocast bf16 (runs as fp16)": (torch.float32, torch.bfloat16),
    "--dtype fp16": (torch.float16, None),
    "--dtype bf16 (runs as fp16)": (torch.bfloat16, None),
}
DEFAULT_GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"


class _NoVAE(torch.nn.Module):
    """The golden stores noisy latents; no VAE runs."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))


class GoldenRun:
    """The golden's UNet and decoder on one device; :meth:`alpha` runs one mode end to end."""

    def __init__(self, golden_dir: Path, device: torch.device) -> None:
        from diffusers import UNet2DConditionModel
        from safetensors.torch import load_file

        self.device = device
        self.golden = load_file(str(golden_dir / "tiny_e2e.safetensors"))
        meta = json.loads((golden_dir / "tiny_e2e.json").read_text())
        self.unet_state = {k[5:]: v for k, v in self.golden.items() if k.startswith("unet.")}
        self.unet_config = meta["unet_config"]
        official = {k: v for k, v in self.golden.items() if k.startswith("in_context_decoder.")}
        self.decoder = InContextDecoder(infer_decoder_config(official))
        self.decoder.load_state_dict({our_key(k): v for k, v in official.items()}, strict=True)
        self.decoder.eval().to(device)
        self.token_mask = pool_token_mask(self.golden["ref_mask"][0, 0], 8)
        self.backends: dict[str, DiffusersFeatureBackend] = {}
        self._unet_class = UNet2DConditionModel

    def backend(self, mode: str) -> DiffusersFeatureBackend:
        if mode not in self.backends:
            weights, autocast = MODES[mode]
            unet = self._unet_class.from_config(self.unet_config)
            unet.load_state_dict(self.unet_state, strict=True)
            unet.to(self.device, resolve_compute_dtype(weights, "UNet/VAE dtype"))
            self.backends[mode] = DiffusersFeatureBackend(
                unet, _NoVAE().to(self.device), self.golden["prompt_embeds"], autocast_dtype=autocast
            )
        return self.backends[mode]

    @torch.no_grad()
    def alpha(self, mode: str) -> torch.Tensor:
        backend, golden = self.backend(mode), self.golden
        reference = backend.unet_features(golden["ref_noisy_latents"], 200, ensemble_size=2, record_attention=False)
        targets = backend.unet_features(golden["tgt_noisy_latents"], 200, ensemble_size=2, record_attention=True)
        tokens = select_reference_tokens(reference.high[0], self.token_mask.to(reference.high.device))
        images = golden["tgt_images"].to(self.device)
        return decode_alpha(self.decoder, tokens, targets, images, self.device).cpu()

    def timed(self, mode: str) -> tuple[torch.Tensor, float, int]:
        """(alpha, seconds, peak CUDA bytes or 0)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        alpha = self.alpha(mode)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() if self.device.type == "cuda" else 0
        return alpha, time.perf_counter() - start, peak


def measure(golden_dir: Path, device: torch.device, repeats: int) -> list[dict]:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    run = GoldenRun(golden_dir, device)
    for mode in MODES:  # build and warm up every mode first
        run.timed(mode)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    alphas, peaks = {}, {}
    for _ in range(repeats):
        for mode in MODES:
            alphas[mode], seconds, peaks[mode] = run.timed(mode)
            times[mode].append(seconds)
    reference, official = alphas["fp32"], run.golden["alpha"]
    fp32_time = statistics.median(times["fp32"])
    rows = []
    for mode in MODES:
        difference, to_official = (alphas[mode] - reference).abs(), (alphas[mode] - official).abs()
        rows.append({
            "mode": mode,
            "max_abs_vs_fp32": float(difference.max()),
            "mean_abs_vs_fp32": float(difference.mean()),
            "max_abs_vs_official": float(to_official.max()),
            "mean_abs_vs_official": float(to_official.mean()),
            "time_ratio": statistics.median(times[mode]) / fp32_time,
            "peak_bytes": peaks[mode],
        })
    return rows


def markdown(rows: list[dict], device: torch.device) -> str:
    memory = device.type == "cuda"
    header = "| mode | alpha vs fp32: max / mean abs | alpha vs official golden: max / mean abs | time vs fp32 |"
    header += " peak GPU memory |" if memory else ""
    lines = [header, "|---|---|---|---|" + ("---|" if memory else "")]
    for row in rows:
        line = (f"| {row['mode']} | {row['max_abs_vs_fp32']:.1e} / {row['mean_abs_vs_fp32']:.1e} | "
                f"{row['max_abs_vs_official']:.1e} / {row['mean_abs_vs_official']:.1e} | x{row['time_ratio']:.2f} |")
        lines.append(line + (f" {row['peak_bytes'] / 2**20:.1f} MiB |" if memory else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="folder holding tiny_e2e.safetensors")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if not (args.golden / "tiny_e2e.safetensors").is_file():
        print(f"error: no tiny_e2e.safetensors in {args.golden}; pass --golden FOLDER", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)  # the bf16 -> fp16 note would be printed once per mode
    rows = measure(args.golden, torch.device(args.device), args.repeats)
    print(markdown(rows, torch.device(args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
