"""Quality yardstick: the small demo model on held-out procedural scenes, scored by the evaluate command's code.

    python -m benchmarks.quality [--out docs/quality.md] [--work DIR] [--decoder PATH]

The held-out set (:data:`HELDOUT`): 8 categories x 12 scenes (seeds 10000..10011; the training set uses 0..47) in
the ICM-57 layout, one group per category; each group's first 4 images are reference scenes. Every row below is
one :func:`icm_core.evaluation.evaluate.evaluate_dataset` run (the ``evaluate`` command's code) with a protocol
that differs from the baseline (trained decoder, mask prompt, 1 reference, stretch, no refinement, ensemble 2,
128 px = the model's size) in one setting. Metrics are averaged over the same 64 targets in every row: images 4..11
of each group (so 1, 2 or 4 references leave the targets unchanged). The same scenes are rendered at 2x and 4x for
the refinement rows and, for the fit rows, at 128 x 192 (wider than tall; references stay 128 x 128) with metrics at
the targets' own size (``resolution="original"``).

Target features do not depend on the reference, so runs that differ only in the reference side share them:
:class:`MemoizedBackend` keeps the UNet outputs of each distinct input (exact bytes), which is what makes 17
evaluations affordable on a CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from icm_core.config import ExtractionConfig
from icm_core.evaluation.evaluate import EvaluationProtocol, evaluate_dataset
from icm_core.evaluation.results import mean_errors
from icm_core.features.backend import FeatureBackend
from icm_core.features.noise import LatentDistribution
from icm_core.io.file_safety import write_text_atomic
from icm_core.metrics import MattingErrors
from icm_core.pipeline import IconMatting
from icm_core.prompts import DEFAULT_TOP_M
from icm_core.synthetic.datasets import SyntheticSplit, stem, write_synthetic_dataset
from icm_core.synthetic.demo_model import DEMO_DECODER, load_demo_engine
from icm_core.tiny import build_tiny_decoder
from icm_core.types import UNetFeatures

logger = logging.getLogger(__name__)

HELDOUT = SyntheticSplit(12, size=128, first_seed=10_000, references=4)
COMMON_FROM = 4  # images 4.. of each group are targets in every row
DOC = Path(__file__).resolve().parents[1] / "docs" / "quality.md"
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


@dataclass(frozen=True)
class Variant:
    """One row: which decoder, which rendering of the held-out scenes, which protocol and ensemble."""

    section: str
    label: str
    decoder: str = "trained"  # or "untrained" (the tiny random decoder the demo used before)
    rendering: str = "1x"  # key of RENDERINGS
    ensemble: int = 2
    protocol: dict = field(default_factory=dict)


RENDERINGS = {"1x": 128, "2x": 256, "4x": 512, "wide": (128, 192)}

VARIANTS = (
    Variant("model", "untrained decoder (random, as before)", decoder="untrained"),
    Variant("model", "trained demo decoder"),
    Variant("prompt", "mask (ground-truth alpha of the reference)"),
    Variant("prompt", f"3 clicks + expansion, top-m {DEFAULT_TOP_M} (default)", protocol={"prompt": "points"}),
    Variant("prompt", "3 clicks + expansion, top-m 1", protocol={"prompt": "points", "top_m": 1}),
    Variant("prompt", "3 clicks + expansion, top-m 4", protocol={"prompt": "points", "top_m": 4}),
    Variant("prompt", f"scribble + expansion, top-m {DEFAULT_TOP_M} (default)", protocol={"prompt": "scribble"}),
    Variant("references", "1 reference"),
    Variant("references", "2 references", protocol={"num_references": 2}),
    Variant("references", "4 references", protocol={"num_references": 4}),
    Variant("fit", "stretch (128 x 192 targets)", rendering="wide", protocol={"fit": "stretch", "resolution": "original"}),
    Variant("fit", "pad (128 x 192 targets)", rendering="wide", protocol={"fit": "pad", "resolution": "original"}),
    Variant("fit", "crop (128 x 192 targets)", rendering="wide", protocol={"fit": "crop", "resolution": "original"}),
    Variant("refinement", "2x (256 px): off", rendering="2x"),
    Variant("refinement", "2x (256 px): on", rendering="2x", protocol={"refine": True}),
    Variant("refinement", "4x (512 px): off", rendering="4x"),
    Variant("refinement", "4x (512 px): on", rendering="4x", protocol={"refine": True}),
    Variant("ensemble", "ensemble 1", ensemble=1),
    Variant("ensemble", "ensemble 2 (demo default)"),
    Variant("ensemble", "ensemble 4", ensemble=4),
)


@dataclass(frozen=True)
class Row:
    """A variant's mean errors over the common targets and its wall time."""

    variant: Variant
    errors: MattingErrors
    targets: int
    seconds: float


class MemoizedBackend:
    """A :class:`FeatureBackend` that remembers the VAE posterior and UNet outputs of every distinct input.

    Keys are the exact bytes of one image (VAE) or of one image's E noisy latents (UNet) plus the settings, so a
    hit returns what the wrapped backend computed for that very input; batches are split per image, so an image
    hits whatever batch it comes in.
    """

    def __init__(self, backend: FeatureBackend) -> None:
        self.backend = backend
        self.device, self.dtype, self.feature_channels = backend.device, backend.dtype, backend.feature_channels
        self._latents: dict[bytes, LatentDistribution] = {}
        self._features: dict[bytes, UNetFeatures] = {}
        self.hits = self.misses = 0

    def latent_distribution(self, images: torch.Tensor) -> LatentDistribution:
        keys = [_key(image) for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self._latents]
        if missing:
            computed = self.backend.latent_distribution(images[missing])
            for row, index in enumerate(missing):
                self._latents[keys[index]] = LatentDistribution(computed.mean[row : row + 1], computed.std[row : row + 1])
        parts = [self._latents[key] for key in keys]
        return LatentDistribution(torch.cat([p.mean for p in parts]), torch.cat([p.std for p in parts]))

    def alpha_bar(self, timestep: int) -> float:
        return self.backend.alpha_bar(timestep)

    def unet_features(
        self, noisy_latents: torch.Tensor, timestep: int, ensemble_size: int, record_attention: bool
    ) -> UNetFeatures:
        rows = noisy_latents.view(-1, ensemble_size, *noisy_latents.shape[1:])
        keys = [_key(image, timestep, ensemble_size, record_attention) for image in rows]
        missing = [i for i, key in enumerate(keys) if key not in self._features]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = self.backend.unet_features(rows[missing].flatten(0, 1), timestep, ensemble_size, record_attention)
            for row, index in enumerate(missing):
                self._features[keys[index]] = _slice(computed, row)
        parts = [self._features[key] for key in keys]
        return UNetFeatures(**{name: _cat([getattr(p, name) for p in parts]) for name in _FIELDS})

    def fingerprint(self) -> str:
        return self.backend.fingerprint()

    def place_decoder(self, decoder: torch.nn.Module) -> torch.device:
        return self.backend.place_decoder(decoder)


_FIELDS = ("low", "high", "attention_low", "attention_high")


def _key(tensor: torch.Tensor, *settings: object) -> bytes:
    digest = hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(repr((tuple(tensor.shape), str(tensor.dtype), settings)).encode())
    return digest.digest()


def _slice(features: UNetFeatures, row: int) -> UNetFeatures:
    return UNetFeatures(**{n: None if getattr(features, n) is None else getattr(features, n)[row : row + 1] for n in _FIELDS})


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(parts)


# ------------------------------------------------------------------------------------------------ running


@dataclass
class Yardstick:
    """Held-out datasets (rendered once into ``work``) and the engines, shared by every variant."""

    work: Path
    decoder_path: Path = DEMO_DECODER

    def __post_init__(self) -> None:
        self._roots: dict[str, Path] = {}
        self._reports: list[Path] = []
        trained = load_demo_engine(decoder_path=self.decoder_path)
        self.backend = MemoizedBackend(trained.backend)
        untrained = build_tiny_decoder(seed=0, image_size=trained.decoder.config.image_size)
        self.decoders = {"trained": trained.decoder, "untrained": untrained}

    def root(self, rendering: str) -> Path:
        if rendering not in self._roots:
            root = self.work / f"heldout_{rendering}"
            size = RENDERINGS[rendering]
            write_synthetic_dataset(root, replace(HELDOUT, size=size, reference_size=min(size) if isinstance(size, tuple) else None))
            self._roots[rendering] = root
        return self._roots[rendering]

    def engine(self, variant: Variant) -> IconMatting:
        decoder = self.decoders[variant.decoder]
        extraction = ExtractionConfig(ensemble_size=variant.ensemble, image_size=decoder.config.image_size)
        return IconMatting(self.backend, decoder, extraction)

    def measure(self, variant: Variant) -> Row:
        protocol = EvaluationProtocol(batch_size=8, **variant.protocol)
        out = self.work / "reports" / f"{len(self._reports):02d}_{variant.section}"
        self._reports.append(out)
        started = time.perf_counter()
        summary = evaluate_dataset(self.engine(variant), self.root(variant.rendering), out, protocol)
        seconds = time.perf_counter() - started
        if summary.failures:
            raise RuntimeError(f"{variant.label}: {len(summary.failures)} targets not evaluated: {summary.failures[0]}")
        common = [r.errors for r in summary.images if int(r.image.rsplit("_", 1)[1]) >= COMMON_FROM]
        return Row(variant, mean_errors(common), len(common), seconds)


def context_matrix(yardstick: Yardstick, seed: int = 0) -> dict[tuple[str, str], float]:
    """Does the model matte *in context*? Mean SAD / 1000 of each category's held-out targets (images 4..11) with the
    first reference scene of every category as the reference.

    Returns:
        ``{(target category, reference category): mean SAD}`` over all 8 x 8 pairs; a model that ignores its
        reference gives rows of equal values, one that uses it the lowest value on the diagonal.
    """
    from icm_core.io.images import read_image, read_mask
    from icm_core.metrics import compute_all

    root, engine = yardstick.root("1x"), yardstick.engine(Variant("context", "trained"))
    categories = HELDOUT.categories
    contexts = {}
    for category in categories:
        name = stem(category, 0)
        contexts[category] = engine.encode_reference(
            read_image(root / "image" / f"{name}.png"), read_mask(root / "alpha" / f"{name}.png"), seed=seed
        )
    sad = {}
    for category in categories:
        names = [stem(category, index) for index in range(COMMON_FROM, HELDOUT.images_per_category)]
        images = [read_image(root / "image" / f"{name}.png") for name in names]
        truths = [read_mask(root / "alpha" / f"{name}.png") for name in names]
        for reference in categories:
            alphas = engine.matte(contexts[reference], images, seed=seed, batch_size=8)
            sad[category, reference] = sum(compute_all(a, t).sad for a, t in zip(alphas, truths)) / len(names)
    return sad


def context_check(yardstick: Yardstick, seed: int = 0) -> tuple[float, float]:
    """``(right, wrong)``: mean SAD / 1000 of :func:`context_matrix` with the target's own category as the
    reference vs with each of the 7 others (every target weighs the same); ``right == wrong``: no use of it."""
    return _right_and_wrong(context_matrix(yardstick, seed))


def _right_and_wrong(sad: dict[tuple[str, str], float]) -> tuple[float, float]:
    right = [value for (target, reference), value in sad.items() if target == reference]
    wrong = [value for (target, reference), value in sad.items() if target != reference]
    return sum(right) / len(right), sum(wrong) / len(wrong)


def measure(variants: Sequence[Variant], work: Path, decoder_path: Path = DEMO_DECODER) -> list[Row]:
    """Evaluate ``variants`` on the held-out scenes rendered into ``work`` (a fresh folder)."""
    return measure_with(Yardstick(work, decoder_path), variants)


def measure_with(yardstick: Yardstick, variants: Sequence[Variant]) -> list[Row]:
    """Evaluate ``variants`` with an existing :class:`Yardstick` (its rendered sets and remembered features)."""
    rows = []
    for variant in variants:
        rows.append(yardstick.measure(variant))
        logger.info("%s / %s: SAD %.4f (%.0f s)", variant.section, variant.label, rows[-1].errors.sad, rows[-1].seconds)
    logger.info("UNet features: %d computed, %d reused", yardstick.backend.misses, yardstick.backend.hits)
    return rows


def table(rows: Sequence[Row]) -> str:
    """Markdown tables, one per section (SAD, Grad, Conn / 1000; MSE x 1000), with each row's change vs the
    section's first row."""
    lines = []
    section = None
    for row in rows:
        if row.variant.section != section:
            section, first = row.variant.section, row
            lines += ["", f"**{section}**", "", "| setting | SAD | MSE x1000 | Grad | Conn | SAD vs first row | targets |",
                      "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        e, change = row.errors, row.errors.sad / first.errors.sad if first.errors.sad else float("nan")
        lines.append(
            f"| {row.variant.label} | {e.sad:.3f} | {e.mse * 1000:.2f} | {e.grad:.3f} | {e.conn:.3f} | "
            f"x{change:.2f} | {row.targets} |"
        )
    return "\n".join(lines).strip()


def context_table(sad: dict[tuple[str, str], float]) -> str:
    """The :func:`context_matrix` result as markdown: right vs wrong reference, then the matrix per category."""
    right, wrong = _right_and_wrong(sad)
    categories = list(dict.fromkeys(target for target, _ in sad))
    lines = [
        "**in context** (64 targets x 8 references: its own category's first reference scene, or one of the 7 others)",
        "", "| reference | SAD | SAD vs right reference |", "|---|---:|---:|",
        f"| same category (right) | {right:.3f} | x1.00 |",
        f"| another category (wrong) | {wrong:.3f} | x{wrong / right:.2f} |",
        "", "SAD per target category (rows) and reference category (columns); bold: the row's best.", "",
        "| target \\ reference | " + " | ".join(categories) + " |", "|---|" + "---:|" * len(categories),
    ]  # fmt: skip
    for target in categories:
        row = [sad[target, reference] for reference in categories]
        cells = [f"**{v:.2f}**" if v == min(row) else f"{v:.2f}" for v in row]
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_document(tables: str, path: Path) -> None:
    """Replace the block between the markers of ``path`` with ``tables`` (the hand-written text stays)."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    write_text_atomic(text[:start] + "\n" + tables + "\n" + text[end:], path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"document to update between the markers (e.g. {DOC})")
    parser.add_argument("--work", type=Path, default=None, help="new folder for the rendered sets and reports (must not exist)")
    parser.add_argument("--decoder", type=Path, default=DEMO_DECODER, help="demo decoder to measure")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: tiny models, busy machines)")
    args = parser.parse_args(argv)
    if args.work is not None and args.work.exists():
        parser.error(f"--work {args.work} already exists; give a new folder (nothing in an existing one is touched)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="icm_quality_") as scratch:
        yardstick = Yardstick(args.work or Path(scratch) / "work", args.decoder)
        rows = measure_with(yardstick, VARIANTS)
        matrix = context_matrix(yardstick)
    text = table(rows) + "\n\n" + context_table(matrix)
    print(text)
    if args.out is not None:
        write_document(text, args.out)
        print(f"updated {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
