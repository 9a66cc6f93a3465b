"""FLOPs per target of the baseline and icm_core at any width, counted on the meta device (seconds, no weights).

    python -m benchmarks.flops [--width-multiplier 1] [--targets 1 8 64] [--micro-batch 4] [--out docs/benchmarks.md]

The timed benchmark (``benchmarks.run``) has to narrow the SD 2.1 model to run on a CPU; this counts the
matmul/convolution/attention FLOPs (``torch.utils.flop_counter`` formulas) of exactly the same code paths at full
width, split into the same stages, so the measured CPU ratios can be put next to what full size costs. FLOPs
ignore memory traffic: materialising the baseline's ``[rows * heads, N, N]`` maps costs bandwidth and memory,
not FLOPs (see the timed run for that).
"""

from __future__ import annotations

import argparse
import contextlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from icm_core.config import ExtractionConfig
from icm_core.features.backend import extract_features
from icm_core.features.diffusers_backend import DiffusersFeatureBackend

from .baseline import OfficialStyleBaseline, reference_tokens
from .models import build_models, synthetic_scene
from .report import replace_block
from .timing import STAGES, instrument_icm

BEGIN, END = "<!-- benchmark-flops:begin -->", "<!-- benchmark-flops:end -->"


class FlopStages:
    """Drop-in for :class:`~benchmarks.timing.StageTimer` that attributes FLOPs to the innermost open stage."""

    cuda = False

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.flops: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.stack.append("unet" if name == "unet_total" else name)
        try:
            yield
        finally:
            self.stack.pop()

    def _sync(self) -> None:
        pass


class _CountFlops(TorchDispatchMode):
    def __init__(self, stages: FlopStages) -> None:
        super().__init__()
        self.stages = stages

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            stage = self.stages.stack[-1] if self.stages.stack else "other"
            self.stages.flops[stage] += int(formula(*args, **kwargs, out_val=out))
        return out


class _MetaBaseline(OfficialStyleBaseline):
    """Meta-device stand-ins for the two data-dependent steps: token selection (count K of the real mask), add_noise."""

    tokens_k = 1

    def select_tokens(self, feature: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return feature.flatten(1)[:, : self.tokens_k].T

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return latents + noise  # indexing the schedule with a meta timestep is impossible; no FLOPs either way


def count(args: argparse.Namespace) -> dict:
    side, ensemble = args.image_size, args.ensemble
    models = build_models(args.width_multiplier, side, device="meta", keep_heads=args.keep_heads)
    reference, mask = synthetic_scene(10_000, side, side)
    k = int(reference_tokens(torch.zeros(1, side // 16, side // 16), mask, side // 16).shape[0])
    image = lambda batch: torch.empty(batch, 3, side, side, device="meta")  # noqa: E731
    guidance = torch.empty(side, side, device="meta")

    stages = FlopStages()
    baseline = _MetaBaseline(models.unet, models.vae, models.prompt, models.decoder, 200, ensemble, side, stages)
    baseline.tokens_k = k
    with torch.no_grad(), _CountFlops(stages), baseline.recording():
        baseline.matte_square(image(1), guidance, image(1), seed=0)
    per_target_baseline = dict(stages.flops)

    extraction = ExtractionConfig(image_size=side, ensemble_size=ensemble)
    backend = DiffusersFeatureBackend(models.unet, models.vae, models.prompt)
    ours = {}
    for targets in args.targets:
        stages = FlopStages()
        engine = SimpleNamespace(backend=backend, decoder=models.decoder)
        with torch.no_grad(), _CountFlops(stages), instrument_icm(engine, stages):
            extract_features(backend, image(1), extraction, 0, record_attention=False)  # encode_reference
            tokens = torch.empty(k, models.decoder.config.feature_channels, device="meta")
            for start in range(0, targets, args.micro_batch):  # matte(): one micro-batch at a time
                batch = min(args.micro_batch, targets - start)
                features = extract_features(backend, image(batch), extraction, 0, record_attention=True)
                models.decoder(tokens, features, image(batch))
        ours[targets] = {name: value / targets for name, value in stages.flops.items()}
    return {"baseline": per_target_baseline, "ours": ours, "tokens": k, "unet": models.unet_config}


def render(args: argparse.Namespace, result: dict) -> str:
    names = [stage for stage in STAGES if stage not in ("postprocess", "other")]
    tflop = lambda flops, stage: flops.get(stage, 0) / 1e12  # noqa: E731
    base = result["baseline"]
    lines = [
        f"Width multiplier {args.width_multiplier:g} (UNet widths {result['unet']['block_out_channels']}, heads "
        f"{result['unet']['attention_head_dim']}), {args.image_size} px, E = {args.ensemble}, "
        f"{result['tokens']} reference tokens, icm_core micro-batch {args.micro_batch}. TFLOP per target "
        "(matmul/conv/attention FLOPs; stages as in the timed run):",
        "",
        "| pipeline | targets | " + " | ".join(names) + " | total | baseline / icm_core |",
        "|---|---:|" + "---:|" * (len(names) + 2),
        "| baseline | any | " + " | ".join(f"{tflop(base, s):.2f}" for s in names)
        + f" | {sum(base.values()) / 1e12:.2f} | |",
    ]
    for targets, flops in result["ours"].items():
        lines.append(
            f"| icm_core | {targets} | " + " | ".join(f"{tflop(flops, s):.2f}" for s in names)
            + f" | {sum(flops.values()) / 1e12:.2f} | x{sum(base.values()) / sum(flops.values()):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--keep-heads", action="store_true")
    parser.add_argument("--targets", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--ensemble", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=768)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write the table into")
    args = parser.parse_args(argv)
    text = render(args, count(args))
    if args.out is not None:
        replace_block(Path(args.out), BEGIN, END, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
