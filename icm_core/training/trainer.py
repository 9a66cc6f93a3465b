"""Fine-tune the in-context decoder on reference/target pairs; the SD backend stays frozen.

Recipe (paper §4 / official ``config/train.yaml``): AdamW, lr 4e-4 with a linear warm-up (``lr * (t + 1) / W`` for
the first W steps; the official scheduler warms up over 250 steps from 1e-6), random S x S crops (S = the
decoder's image size, 768 for the released model), reference/target pairs from the same group (:mod:`.data`),
the losses of :mod:`.losses`. The decoder is trained in train mode (BatchNorm batch statistics) and switched to
eval mode for validation and saving; frozen features are computed under ``torch.no_grad`` (and can be cached
with fixed crops, :mod:`.feature_cache`).

Output folder:

* ``decoder.safetensors`` -- the latest decoder in the official key layout (``load_decoder`` reads it), and
  ``checkpoints/decoder_step<N>.safetensors`` every ``checkpoint_every`` steps and at the end;
* ``training_state.safetensors`` + ``training_state.json`` -- decoder + optimizer + step for ``resume``
  (:mod:`.state`);
* ``loss_log.jsonl`` -- one JSON line per step (``kind: "train"``) and per validation (``kind: "validation"``),
  flushed as it goes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io.datasets import DatasetItem, load_dataset, split_group
from ..fit import center_square
from ..io.file_safety import write_text_atomic
from ..features.backend import extract_features
from ..io.images import read_image, read_mask, stretch_to_square, to_model_range
from ..modeling.decoder import InContextDecoder
from ..modeling.similarity import pool_token_mask, select_reference_tokens
from ..pipeline import IconMatting
from ..types import UNetFeatures
from ..weights.decoder import save_decoder
from .data import PairSampler, StepPlan, load_reference, load_target
from .feature_cache import FeatureCache, feature_fingerprint
from .losses import LossWeights, is_binary_alpha, sample_losses
from .state import STATE_JSON, TrainingStateError, load_training_state, save_training_state

logger = logging.getLogger(__name__)

LOG_NAME = "loss_log.jsonl"
DECODER_NAME = "decoder.safetensors"


@dataclass(frozen=True)
class TrainingConfig:
    """Fine-tuning settings.

    Attributes:
        steps: total optimizer steps of the run (a resumed run continues up to this number).
        batch_size: targets per step (they share one reference).
        learning_rate, weight_decay: AdamW settings; warmup_steps: linear warm-up length (0 = none);
            cooldown_steps: the rate falls linearly to ``1 / cooldown_steps`` of itself over the run's last
            ``cooldown_steps`` steps (0 = constant after the warm-up). The last iterate of a constant-rate run
            jumps around its optimum; a cool-down lands it.
        seed: sampling and noise seed. fixed_crops: one crop and noise seed per image for all steps.
        cache_dir: feature cache folder; only allowed with ``fixed_crops`` (random crops never repeat).
        checkpoint_every: save decoder + training state every N steps (and always at the end).
        resume: continue from the training state in the output folder.
        groups_file: the dataset's groups JSON (None = searched, see :mod:`icm_core.evaluation.dataset`).
        segmentation_band: half-width in px of the ignored band of segmentation samples (None = S // 64).
        loss_weights: weights of the loss terms.
        validation_root, validate_every: optional held-out dataset, evaluated every N steps (eval mode,
            centre-square crops, first image of each group as reference, mean loss over targets).
    """

    steps: int = 10_000
    batch_size: int = 2
    learning_rate: float = 4e-4
    weight_decay: float = 0.01
    warmup_steps: int = 250
    cooldown_steps: int = 0
    seed: int = 0
    fixed_crops: bool = False
    cache_dir: Path | None = None
    checkpoint_every: int = 1000
    resume: bool = False
    groups_file: Path | None = None
    segmentation_band: int | None = None
    loss_weights: LossWeights = field(default_factory=LossWeights)
    validation_root: Path | None = None
    validate_every: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.cooldown_steps < 0 or self.validate_every < 0:
            raise ValueError("TrainingConfig.warmup_steps, cooldown_steps and validate_every must be >= 0")
        if self.cache_dir is not None and not self.fixed_crops:
            raise ValueError(
                "a feature cache needs fixed crops: with random crops (and per-step noise) no entry is ever reused. "
                "Set fixed_crops=True (--fixed-crops) or drop cache_dir (--cache-dir)."
            )


@dataclass(frozen=True)
class StepLog:
    """One optimizer step: ``step`` counts completed steps (1-based); ``parts`` are batch means of the terms."""

    step: int
    loss: float
    parts: dict[str, float]
    lr: float
    group: str
    reference: str
    targets: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class TrainingResult:
    """What a run produced. ``decoder`` is the trained decoder in eval mode (a copy; the engine is untouched)."""

    decoder: InContextDecoder
    start_step: int
    steps: int
    history: tuple[StepLog, ...]
    validation: tuple[tuple[int, float], ...]
    checkpoint: Path
    state_file: Path
    log_file: Path
    cache_hits: int = 0
    cache_misses: int = 0


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier of 0-based step ``step``: ``(step + 1) / W`` during the warm-up, then 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


def cooldown_factor(step: int, cooldown_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier of 0-based step ``step`` of a ``total_steps`` run: 1, then over the last
    ``cooldown_steps`` steps ``(total_steps - step) / cooldown_steps`` (1 at the first of them, ``1 / N`` at the last)."""
    if cooldown_steps <= 0:
        return 1.0
    return min(1.0, max(total_steps - step, 1) / cooldown_steps)


class _Features:
    """Frozen features of references and targets, through the cache when there is one."""

    def __init__(self, engine: IconMatting, cache: FeatureCache | None) -> None:
        self.engine, self.cache = engine, cache

    def tokens(self, item: DatasetItem, image: torch.Tensor, mask: torch.Tensor, seed: int, crop: str) -> torch.Tensor:
        """``[K, C]`` float32 reference tokens on the device; image ``[3, S, S]`` / mask ``[S, S]`` in [0, 1]."""
        token_mask = pool_token_mask(mask, self.engine.token_grid)
        key = self.cache.key("reference", item.image, crop, seed) if self.cache else ""
        high = self.cache.load_reference(key) if self.cache else None
        if high is None:
            square = to_model_range(image)[None]
            high = extract_features(self.engine.backend, square, self.engine.extraction, seed, False).high[0].cpu()
            if self.cache:
                self.cache.save_reference(key, high, f"{item.image.name} {crop} seed {seed}")
        return select_reference_tokens(high.float(), token_mask).to(self.engine.backend.device)

    def targets(self, items: list[DatasetItem], crops: list[str], images: torch.Tensor, seed: int) -> UNetFeatures:
        """Features of ``[B, 3, S, S]`` targets in [0, 1] (float32, on the device, attention recorded)."""
        found: list[UNetFeatures | None] = [None] * len(items)
        keys = [self.cache.key("target", i.image, c, seed) if self.cache else "" for i, c in zip(items, crops)]
        if self.cache:
            found = [self.cache.load_target(key) for key in keys]
        missing = [index for index, value in enumerate(found) if value is None]
        if missing:
            squares = to_model_range(images[missing])
            computed = extract_features(self.engine.backend, squares, self.engine.extraction, seed, True)
            for row, index in enumerate(missing):
                found[index] = UNetFeatures(**{n: getattr(computed, n)[row : row + 1] for n in _FIELDS})
                if self.cache:
                    self.cache.save_target(keys[index], computed, row, f"{items[index].image.name} {crops[index]}")
        device = self.engine.backend.device
        return UNetFeatures(
            **{n: torch.cat([getattr(f, n).to(device, torch.float32) for f in found]) for n in _FIELDS}
        )


_FIELDS = ("low", "high", "attention_low", "attention_high")


def train_decoder(
    engine: IconMatting,
    dataset_root: str | Path,
    out_dir: str | Path,
    config: TrainingConfig | None = None,
    progress: Callable[[StepLog], None] | None = None,
) -> TrainingResult:
    """Fine-tune a copy of ``engine.decoder`` on an ICM-57-layout folder (see the module docstring).

    Args:
        engine: supplies the frozen backend, the extraction config and the starting decoder.
        dataset_root: training images in the ICM-57 layout (groups = which images may be paired).
        out_dir: output folder (created); see the module docstring for its files.
        config: training settings; defaults to ``TrainingConfig()``.
        progress: called with every :class:`StepLog`.
    """
    config = config or TrainingConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not config.resume and (out / STATE_JSON).exists():
        raise TrainingStateError(
            f"{out} already holds a training run ({STATE_JSON}); resume it (--resume) or choose another --out."
        )
    dataset = load_dataset(dataset_root, config.groups_file)
    size = engine.extraction.image_size
    band = config.segmentation_band if config.segmentation_band is not None else max(1, size // 64)
    decoder, optimizer, start = _start(engine, out, config)
    cache = None
    if config.cache_dir is not None:
        cache = FeatureCache(config.cache_dir, feature_fingerprint(engine.backend, engine.extraction))
    features = _Features(engine, cache)
    sampler = PairSampler(dataset, size, engine.token_grid, config.batch_size, config.seed, config.fixed_crops)
    log = _LossLog(out / LOG_NAME, keep_until=start)
    history: list[StepLog] = []
    validation: list[tuple[int, float]] = []
    decoder.train()
    for step in range(start, config.steps):
        record = _logged_step(step, decoder, optimizer, features, sampler, config, band)
        history.append(record)
        log.append({"kind": "train", **dataclasses.asdict(record)})
        if progress is not None:
            progress(record)
        if config.validation_root is not None and config.validate_every and (step + 1) % config.validate_every == 0:
            value = _validate(decoder, features, config, band)
            validation.append((step + 1, value))
            log.append({"kind": "validation", "step": step + 1, "loss": value})
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            _save(decoder, optimizer, out, step + 1, config, engine)
    decoder.eval()
    if not (out / DECODER_NAME).exists():  # nothing was trained (already at config.steps): still leave a decoder
        save_decoder(decoder, out / DECODER_NAME, {"step": str(start)})
    return TrainingResult(
        decoder=decoder, start_step=start, steps=max(start, config.steps), history=tuple(history),
        validation=tuple(validation), checkpoint=out / DECODER_NAME, state_file=out / STATE_JSON,
        log_file=out / LOG_NAME, cache_hits=cache.hits if cache else 0, cache_misses=cache.misses if cache else 0,
    )  # fmt: skip



def _start(
    engine: IconMatting, out: Path, config: TrainingConfig
) -> tuple[InContextDecoder, torch.optim.Optimizer, int]:
    """A trainable fp32 copy of the engine's decoder, its optimizer and the first step (restored with ``resume``)."""
    decoder = copy.deepcopy(engine.decoder).to(engine.backend.device, torch.float32)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    start = 0
    if config.resume:
        state = load_training_state(out, decoder, optimizer)
        start = state.step
        _warn_changed_settings(state.document.get("config", {}), config)
    if start >= config.steps:
        logger.warning("the saved run is at step %d, config.steps is %d: nothing to train", start, config.steps)
    return decoder, optimizer, start


def _logged_step(
    step: int,
    decoder: InContextDecoder,
    optimizer: torch.optim.Optimizer,
    features: _Features,
    sampler: PairSampler,
    config: TrainingConfig,
    band: int,
) -> StepLog:
    """Train step ``step`` (0-based) at its scheduled (warm-up, cool-down) learning rate; what it did, as the :class:`StepLog` of step+1."""
    started = time.perf_counter()
    plan = sampler.plan(step)
    lr = config.learning_rate * warmup_factor(step, config.warmup_steps)
    lr *= cooldown_factor(step, config.cooldown_steps, config.steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss, parts = _train_step(decoder, optimizer, features, plan, band, config.loss_weights)
    return StepLog(
        step + 1, loss, parts, lr, plan.group, plan.reference.name, tuple(t.name for t in plan.targets),
        time.perf_counter() - started,
    )  # fmt: skip

def _train_step(
    decoder: InContextDecoder,
    optimizer: torch.optim.Optimizer,
    features: _Features,
    plan: StepPlan,
    band: int,
    weights: LossWeights,
) -> tuple[float, dict[str, float]]:
    size = decoder.config.image_size
    reference_image, reference_mask = load_reference(plan.reference, size)
    tokens = features.tokens(plan.reference, reference_image, reference_mask, plan.noise_seed, "stretch")
    samples = [load_target(item, crop) for item, crop in zip(plan.targets, plan.crops)]
    images = torch.stack([s.image for s in samples])
    target_features = features.targets(list(plan.targets), [c.key for c in plan.crops], images, plan.noise_seed)
    device = tokens.device
    output = decoder(tokens, target_features, to_model_range(images).to(device))
    alphas = torch.stack([s.alpha for s in samples]).to(device)
    loss, parts = _batch_loss(output.alpha, alphas, [s.segmentation for s in samples], band, weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), parts


def _batch_loss(
    pred: torch.Tensor, target: torch.Tensor, segmentation: list[bool], band: int, weights: LossWeights
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over the batch of the per-sample losses; ``parts`` are the means of each term over the samples having it."""
    total = pred.new_zeros(())
    terms: dict[str, list[float]] = {}
    for index, is_segmentation in enumerate(segmentation):
        loss, parts = sample_losses(pred[index : index + 1], target[index : index + 1], is_segmentation, band, weights)
        total = total + loss
        for name, value in parts.items():
            terms.setdefault(name, []).append(float(value.detach()))
    return total / len(segmentation), {name: sum(values) / len(values) for name, values in terms.items()}


@torch.no_grad()
def _validate(decoder: InContextDecoder, features: _Features, config: TrainingConfig, band: int) -> float:
    """Mean loss over the validation targets (eval mode, centre-square crops, fixed noise seed ``config.seed``)."""
    if config.validation_root is None:
        raise ValueError("validation needs TrainingConfig.validation_root")
    dataset = load_dataset(config.validation_root)
    size = decoder.config.image_size
    decoder.eval()
    losses = []
    try:
        for group in dataset.groups:
            references, targets = split_group(group)
            if not targets:
                continue
            image, mask = load_reference(references[0], size)
            tokens = features.tokens(references[0], image, mask, config.seed, "stretch")
            for item in targets:
                raw_alpha = read_mask(item.alpha)
                target_image = stretch_to_square(center_square(read_image(item.image)[:3]), size)
                alpha = stretch_to_square(center_square(raw_alpha)[None], size).clamp(0, 1)
                feats = features.targets([item], ["center"], target_image[None], config.seed)
                output = decoder(tokens, feats, to_model_range(target_image)[None].to(tokens.device))
                loss, _ = sample_losses(
                    output.alpha, alpha[None].to(tokens.device), is_binary_alpha(raw_alpha), band, config.loss_weights
                )
                losses.append(float(loss))
    finally:
        decoder.train()
    return sum(losses) / max(1, len(losses))


def _save(
    decoder: InContextDecoder,
    optimizer: torch.optim.Optimizer,
    out: Path,
    step: int,
    config: TrainingConfig,
    engine: IconMatting,
) -> None:
    decoder.eval()
    try:
        metadata = {"step": str(step), "trained_with": "icm_core.training"}
        (out / "checkpoints").mkdir(exist_ok=True)
        save_decoder(decoder, out / "checkpoints" / f"decoder_step{step:07d}.safetensors", metadata)
        save_decoder(decoder, out / DECODER_NAME, metadata)
        extra = {
            "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
            "decoder_config": dataclasses.asdict(decoder.config),
            "feature_fingerprint": feature_fingerprint(engine.backend, engine.extraction),
        }
        save_training_state(out, step, decoder, optimizer, extra)
    finally:
        decoder.train()
    logger.info("saved decoder and training state at step %d in %s", step, out)


def _warn_changed_settings(saved: dict, config: TrainingConfig) -> None:
    current = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    ignored = {"steps", "resume", "checkpoint_every", "validate_every", "validation_root", "cache_dir"}
    changed = sorted(k for k in current if k not in ignored and k in saved and saved[k] != current[k])
    if changed:
        logger.warning(
            "resuming with changed settings %s: the continued run will not match an uninterrupted one", changed
        )


class _LossLog:
    """Append-only JSONL log; on resume, lines of steps after ``keep_until`` are dropped first."""

    def __init__(self, path: Path, keep_until: int) -> None:
        self.path = path
        kept: list[str] = []
        if keep_until > 0 and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and int(json.loads(line).get("step", 0)) <= keep_until:
                    kept.append(line)
        write_text_atomic("".join(line + "\n" for line in kept), path)

    def append(self, entry: dict) -> None:
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry, default=list) + "\n")
            stream.flush()
