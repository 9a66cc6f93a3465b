"""Scale-out benchmark: ``matte-dataset`` on a local Ray cluster against the local ``matte`` on the same targets.

Measures, in one run on the same files and the same tiny engine (1 torch thread everywhere):
- the local command's seconds per image and its per-stage costs (decode, VAE, UNet, decoder, outputs, PNG encode,
  write), from an instrumented pass of the same code;
- Ray Data throughput with 1 and 2 CPU actors (steady state: results arriving at the driver after the first
  micro-batch), and Ray's per-image overhead: the actor's time per image not spent matting or writing;
- a prediction for N GPUs from those stage costs (see docs/benchmarks.md, "Scale out").

    python -m benchmarks.scale --images 24 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- scale-results:begin -->", "<!-- scale-results:end -->"


def _images(folder: Path, count: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True)
    height, width = size
    for i in range(count):
        small = np.random.default_rng(i).integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((width, height), Image.BILINEAR).save(folder / f"{i:05d}.jpg", quality=92)


def _reference(folder: Path) -> tuple[Path, Path]:
    folder.mkdir()
    Image.fromarray(np.random.default_rng(99).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / "r.png")
    mask = np.zeros((256, 256), np.uint8)
    mask[48:208, 48:208] = 255
    Image.fromarray(mask).save(folder / "m.png")
    return folder / "r.png", folder / "m.png"


class StageClock:
    """Forward hooks timing the VAE encoder, the UNet (to the decoder's start) and the decoder."""

    def __init__(self, engine) -> None:  # noqa: ANN001
        self.totals = {"vae": 0.0, "unet": 0.0, "decoder": 0.0}
        self.marks: dict[str, float] = {}
        backend = engine.backend
        backend.vae.encoder.register_forward_pre_hook(lambda *_: self._start("vae"))
        backend.vae.encoder.register_forward_hook(lambda *_: self._stop("vae"))
        backend.unet.register_forward_pre_hook(lambda *_: self._start("unet"))
        engine.decoder.register_forward_pre_hook(lambda *_: self._switch("unet", "decoder"))
        engine.decoder.register_forward_hook(lambda *_: self._stop("decoder"))

    def _start(self, name: str) -> None:
        self.marks.setdefault(name, time.perf_counter())

    def _switch(self, done: str, starting: str) -> None:  # returns None: a pre-hook's return value replaces args
        self._stop(done)
        self._start(starting)

    def _stop(self, name: str) -> None:
        if name in self.marks:
            self.totals[name] += time.perf_counter() - self.marks.pop(name)


def stage_costs(sd: Path, decoder: Path, reference: tuple[Path, Path], files: list[Path], args) -> dict:  # noqa: ANN001
    """Seconds per image of every stage, running the local command's code image by image (micro-batch as given)."""
    from icm_core.io.file_safety import write_png_atomic
    from icm_core.image_io import read_image, read_mask, to_uint8
    from icm_core.io.images import to_mask, to_rgb
    from icm_core.outputs import make_outputs
    from icm_core.scale.dataset import EngineSpec

    engine = EngineSpec(str(sd), str(decoder), ensemble=args.ensemble).load()
    image = to_rgb(read_image(reference[0]))
    context = engine.encode_reference(image, to_mask(read_mask(reference[1]), tuple(image.shape[1:])), args.seed)
    clock = StageClock(engine)
    costs = {"decode": 0.0, "outputs": 0.0, "png encode": 0.0, "write": 0.0}
    started = time.perf_counter()
    images = []
    for path in files:
        begin = time.perf_counter()
        images.append(to_rgb(read_image(path), str(path)))
        costs["decode"] += time.perf_counter() - begin
    with tempfile.TemporaryDirectory() as folder:
        for index, alpha in engine.iter_matte(context, images, args.seed, args.batch_size):
            begin = time.perf_counter()
            array = to_uint8(make_outputs(images[index], alpha, ("alpha",)).alpha)
            costs["outputs"] += time.perf_counter() - begin
            begin = time.perf_counter()
            Image.fromarray(array).save(io.BytesIO(), format="PNG")
            encode = time.perf_counter() - begin
            begin = time.perf_counter()
            write_png_atomic(array, Path(folder) / f"{index}.png")
            costs["png encode"] += encode
            costs["write"] += max(0.0, time.perf_counter() - begin - encode)
    total = time.perf_counter() - started
    costs.update(clock.totals)
    costs["total"] = total
    return {name: value / len(files) for name, value in costs.items()}


def _local(sd, decoder, reference, data: Path, out: Path, args) -> float:  # noqa: ANN001
    from icm_core.commands import cli

    command = ["matte", str(data), "--sd", str(sd), "--decoder", str(decoder), "--reference", str(reference[0]),
               "--reference-mask", str(reference[1]), "--out", str(out), "--ensemble", str(args.ensemble),
               "--batch-size", str(args.batch_size), "--seed", str(args.seed)]  # fmt: skip
    started = time.perf_counter()
    assert cli.main(command) == 0
    return time.perf_counter() - started


def _ray_run(ray, sd, decoder, context, data: Path, out: Path, actors: int, args) -> dict:  # noqa: ANN001
    from icm_core.commands.matte_job import JobSettings
    from icm_core.scale.dataset import EngineSpec, Resources
    from icm_core.scale.inputs import collect_sources
    from icm_core.scale.job import run_dataset

    sources = collect_sources([str(data)])
    started, clock = time.perf_counter(), time.time()
    report = run_dataset(
        sources, context, EngineSpec(str(sd), str(decoder), ensemble=args.ensemble), out,
        JobSettings(seed=args.seed, batch_size=args.batch_size),
        Resources(actors=actors, cpus_per_actor=1.0, decode_cpus=0.5),
    )  # fmt: skip
    wall = time.perf_counter() - started
    assert not report.failed, report.failed
    rows = report.rows
    finished = sorted(row["finished"] for row in rows)
    overheads = []
    for worker in {row["worker"] for row in rows}:  # per actor: time between outputs minus the work per output
        mine = sorted((row for row in rows if row["worker"] == worker), key=lambda row: row["finished"])
        if len(mine) > 1:
            interval = (mine[-1]["finished"] - mine[0]["finished"]) / (len(mine) - 1)
            overheads.append(interval - statistics.mean(r["matte_seconds"] + r["write_seconds"] for r in mine[1:]))
    steady = (finished[-1] - finished[0]) / (len(finished) - 1)
    return {
        "actors": actors, "wall": wall, "startup": finished[0] - clock, "per_image_steady": steady,
        "throughput": 1.0 / steady, "workers": len({row["worker"] for row in rows}),
        "actor_busy": statistics.mean(row["matte_seconds"] + row["write_seconds"] for row in rows),
        "overhead": statistics.mean(overheads),
        "decode": statistics.mean(row["decode_seconds"] for row in rows),
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.tiny_files import write_tiny_weights

    from icm_core.context_io import load_context

    torch.set_num_threads(1)
    import ray

    root = Path(tempfile.mkdtemp(prefix="icm-scale-bench-"))
    sd, decoder = write_tiny_weights(root / "weights")
    reference = _reference(root / "ref")
    data = root / "data"
    _images(data, args.images, tuple(args.size))
    files = sorted(data.iterdir())
    costs = stage_costs(sd, decoder, reference, files, args)
    local_wall = _local(sd, decoder, reference, data, root / "local", args)
    context_file = root / "context.safetensors"
    from icm_core.commands import cli

    cli.main(["matte", str(files[0]), "--sd", str(sd), "--decoder", str(decoder), "--reference", str(reference[0]),
              "--reference-mask", str(reference[1]), "--out", str(root / "ctx"), "--ensemble", str(args.ensemble),
              "--seed", str(args.seed), "--save-context", str(context_file)])  # fmt: skip
    context = load_context(context_file)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        runs = [_ray_run(ray, sd, decoder, context, data, root / f"ray{n}", n, args) for n in args.actors]
    finally:
        ray.shutdown()
    same = all(
        (root / "local" / "alpha" / f.name).with_suffix(".jpg.png").read_bytes()
        == (root / f"ray{n}" / "alpha" / f.name).with_suffix(".jpg.png").read_bytes()
        for f in files for n in args.actors
    )  # fmt: skip
    return {"costs": costs, "local_wall": local_wall, "runs": runs, "identical": same, "args": args}


def render(result: dict) -> str:
    args, costs, runs = result["args"], result["costs"], result["runs"]
    lines = [
        BEGIN,
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores (shared), torch "
        f"{torch.__version__}, 1 torch thread per process. Tiny engine (128 px, E = {args.ensemble}), "
        f"{args.images} JPEG targets of {args.size[1]}x{args.size[0]} px, micro-batch {args.batch_size}, alpha only. "
        "Local Ray cluster: 3 logical CPUs (1 per actor, 0.5 per decode task).",
        "",
        "| run | wall s | to first output s | s/image (steady) | images/s (steady) | work s/image | "
        "Ray overhead s/image |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| local `matte` (instrumented pass) | {result['local_wall']:.1f} | - | {costs['total']:.3f} | "
        f"{1 / costs['total']:.2f} | {costs['total'] - costs['decode']:.3f} | - |",
    ]
    for run in runs:
        lines.append(
            f"| `matte-dataset`, {run['actors']} CPU actor(s) | {run['wall']:.1f} | {run['startup']:.1f} | "
            f"{run['per_image_steady']:.3f} | {run['throughput']:.2f} | {run['actor_busy']:.3f} | {run['overhead']:.3f} |"
        )
    lines += [
        "",
        f"Outputs of every Ray run byte-identical to the local run: {'yes' if result['identical'] else 'NO'}.",
        "",
        "Stage costs per image (local code, instrumented, seconds):",
        "",
        "| decode | VAE | UNet | decoder | outputs | PNG encode | write | total |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(f"{costs[k]:.4f}" for k in ("decode", "vae", "unet", "decoder", "outputs", "png encode",
                                                      "write", "total")) + " |",
        END,
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, nargs=2, default=[384, 512], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--ensemble", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=None, help="markdown file whose scale-results block is rewritten")
    args = parser.parse_args(argv)
    block = render(run(args))
    print(block)
    if args.out is not None:
        text = args.out.read_text()
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
