"""Time and peak working memory of the full-resolution outputs (foreground, RGBA, composite) at 4K and 8K.

Each case runs in a fresh process: inputs are allocated, the peak-RSS mark is reset (``/proc/self/clear_refs``),
``make_outputs`` runs once, and the working memory is the peak RSS growth minus the outputs' own bytes, per pixel.
Linux only. ``python -m benchmarks.output_memory [--threads N] [--sizes 4K 8K | HxW ...]`` prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"4K": (2160, 3840), "8K": (4320, 7680)}
KINDS = ("foreground", "rgba", "composite", "alpha,rgba,foreground,composite")

_PROBE = textwrap.dedent(
    """
    import json, sys, time
    import torch
    sys.path.insert(0, sys.argv[1])
    from icm_core.outputs import make_outputs

    def status_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])

    height, width, kinds, threads = int(sys.argv[2]), int(sys.argv[3]), tuple(sys.argv[4].split(",")), int(sys.argv[5])
    torch.set_num_threads(threads)
    make_outputs(torch.rand(3, 96, 128), torch.rand(96, 128), kinds)
    image, alpha = torch.rand(3, height, width), torch.rand(height, width)
    before = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    wall, cpu = time.perf_counter(), time.process_time()
    outputs = make_outputs(image, alpha, kinds)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = status_kb("VmHWM")
    inputs = {image.untyped_storage().data_ptr(), alpha.untyped_storage().data_ptr()}
    storages = {}
    for tensor in (outputs.alpha, outputs.foreground, outputs.rgba, outputs.composite):
        if tensor is not None and tensor.untyped_storage().data_ptr() not in inputs:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    print(json.dumps({"wall": wall, "cpu": cpu, "delta": (peak - before) * 1024, "outputs": sum(storages.values())}))
    """
)


def measure(height: int, width: int, kinds: str, threads: int) -> dict:
    """One case in a fresh process -> wall/CPU seconds, working bytes per pixel, outputs bytes per pixel."""
    output = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO), str(height), str(width), kinds, str(threads)],
        check=True, capture_output=True, text=True,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    pixels = height * width
    return {
        "wall": result["wall"],
        "cpu": result["cpu"],
        "working": (result["delta"] - result["outputs"]) / pixels,
        "outputs": result["outputs"] / pixels,
    }


def _size(text: str) -> tuple[str, int, int]:
    """``4K``/``8K`` or ``HxW`` -> (label, height, width)."""
    if text in SIZES:
        height, width = SIZES[text]
        return text, height, width
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 4K, 8K or HxW (e.g. 96x128), got {text!r}") from None
    return f"{height}x{width}", height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.output_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--sizes", type=_size, nargs="+", default=[_size(name) for name in SIZES],
                        help="image sizes: 4K, 8K or HxW (default 4K 8K)")
    args = parser.parse_args(argv)
    print("| size | outputs | wall s | CPU s | working B/px | working MB | outputs B/px |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, height, width in args.sizes:
        for kinds in KINDS:
            row = measure(height, width, kinds, args.threads)
            label = "all four" if kinds.count(",") == 3 else kinds
            print(
                f"| {name} {width}x{height} | {label} | {row['wall']:.2f} | {row['cpu']:.2f} | {row['working']:.1f} "
                f"| {row['working'] * height * width / 1e6:.0f} | {row['outputs']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
