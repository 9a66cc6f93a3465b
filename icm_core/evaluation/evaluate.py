"""Evaluate an IconMatting engine on a grouped matting dataset (ICM-57 layout) under a fixed, written protocol.

Protocol (every choice is also written into the reports):

* **Groups and references.** Groups come from the dataset's groups JSON (:mod:`.dataset`). Per group the
  references are fixed: by default the first ``num_references`` images of the group by name (1 unless set); or,
  with ``references_file``, the image(s) it names for that group (groups it does not name fall back to the first
  image). Several references form one context (their RoI tokens are concatenated). Reference images are never
  evaluated as targets; a group left without targets (``num_references`` or fewer images) is skipped and listed
  as skipped. The official code instead draws a random other image of the group per target; a fixed choice makes
  runs comparable.
* **Reference RoI** (``prompt``). ``mask``: the reference's ground-truth alpha, binarised at 0.5 by the pipeline
  (``encode_reference``). ``points`` / ``scribble``: ``num_points`` clicks simulated deterministically from that
  alpha (or a scribble through them), see :mod:`.simulated_prompts`, expanded over the token grid by the
  reference's self-attention (``expand_prompt`` with ``ExpansionConfig(top_m)``) and encoded with
  ``encode_reference_tokens``; one expansion per reference.
* **Fit and refinement.** ``fit`` (stretch / pad / crop) is passed to every engine call; on the square crops of
  the ``official`` resolution the three fits coincide. ``refine`` refines every alpha at full resolution
  (``RefinementConfig()``). The engine's timestep, ensemble size and image size are written into the reports.
* **Resolution.** ``official``: image, alpha, trimap and reference are centre-cropped to a square of side
  ``min(H, W)`` (offset ``(max - min) // 2``, as the official ``CropResize``), the engine resizes that square to
  its working size (768 for the released model) and the alpha is resized back to the crop; metrics are computed
  on the ``min(H, W)`` square crop. (The official code resizes with nearest/random interpolation; ours is the
  pipeline's bilinear resize.) ``original``: the whole image goes through the pipeline (``fit`` to the square
  working size, alpha brought back) and metrics are computed at the original ``H x W``.
* **Region.** ``whole``: every pixel. ``unknown``: trimap pixels equal to 128 only; every target then needs a
  trimap (checked before any image is matted).
* **Noise.** one seed for every reference and target (``seed``).
* **Bad items.** A target whose files cannot be read or used (unreadable, truncated, too small, image and alpha
  of different sizes, ...) is skipped and listed with the reason; a group whose reference cannot be used lists all
  its targets. Every other row is still computed, ``per_image.csv`` is written row by row as the run goes (so a
  crash keeps the finished rows), and the summaries cover the rows computed and list the failures.
* **Timing.** ``seconds`` is the wall time of matting the image (its micro-batch's time split evenly when
  ``batch_size > 1``), excluding image reading, reference encoding (reported per group) and metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import image_read_errors
from ..fit import center_square, placement
from ..io.images import read_image, read_mask, save_image_atomic, to_rgb
from ..metrics import MattingErrors, compute_all, unknown_region
from ..pipeline import EmptyReferenceError, IconMatting, ReferenceContext, RefinementConfig
from ..prompts import ExpansionConfig
from ..io.datasets import (
    DatasetError,
    DatasetItem,
    MattingDataset,
    check_same_size,
    load_dataset,
    load_reference_choice,
    read_trimap,
    split_group,
)
from .report import CSV_NAME, RowWriter, write_reports
from .simulated_prompts import simulated_clicks, simulated_scribble
from .results import (  # noqa: F401 - re-exported: the evaluation's public result types live in results.py
    METRIC_NAMES,
    EvaluationProtocol,
    EvaluationSummary,
    GroupResult,
    ImageResult,
    ItemFailure,
    ProgressCallback,
    Region,
    Resolution,
    mean_errors,
)

logger = logging.getLogger(__name__)

ITEM_ERRORS = image_read_errors()  # DatasetError and EmptyReferenceError are ValueErrors too


@dataclass(frozen=True)
class _Target:
    item: DatasetItem
    image: torch.Tensor  # [C, H, W] in [0, 1]
    alpha: torch.Tensor  # [H, W] in [0, 1]
    region: np.ndarray | None  # [H, W] bool


def plan_evaluation(
    root: str | Path, protocol: EvaluationProtocol
) -> tuple[list[tuple[str, tuple[DatasetItem, ...], tuple[DatasetItem, ...]]], tuple[str, ...]]:
    """``([(group, references, targets), ...], skipped groups)``: the dataset scanned and every choice of the
    protocol checked against it (reads no image; cheap enough to run before loading a model).

    Raises:
        DatasetError: the dataset, its groups file or the references file cannot be used as given, or no group
            keeps a target once its references are taken.
    """
    dataset = load_dataset(root, protocol.groups_file)
    choice = _reference_choice(dataset, protocol)
    plan = [(group.name, *split_group(group, choice)) for group in dataset.groups]
    skipped = tuple(name for name, _, targets in plan if not targets)
    plan = [entry for entry in plan if entry[2]]
    if not plan:
        raise DatasetError(_nothing_to_evaluate(root, dataset, protocol))
    for name in skipped:
        logger.warning("group %s has no image left after taking its reference(s); skipped", name)
    if protocol.region == "unknown":
        lacking = [f"{name}/{item.name}" for name, _, targets in plan for item in targets if item.trimap is None]
        if lacking:
            raise DatasetError(
                f"region='unknown' needs a trimap for every target, but {len(lacking)} target(s) have none "
                f"(expected ROOT/trimap/<name>.png): {', '.join(lacking[:10])}{'...' if len(lacking) > 10 else ''}. "
                "Add the trimaps or evaluate with region='whole'."
            )
    return plan, skipped


def _reference_choice(dataset: MattingDataset, protocol: EvaluationProtocol) -> dict[str, tuple[str, ...]] | None:
    """``{group: reference names}`` from the references file or ``num_references``; None = first image by name."""
    if protocol.num_references > 1:  # the protocol forbids a references file with it
        count = protocol.num_references
        return {group.name: tuple(item.name for item in group.items[:count]) for group in dataset.groups}
    if not protocol.references_file:
        return None
    choice = load_reference_choice(protocol.references_file)
    unknown = sorted(set(choice) - {group.name for group in dataset.groups})
    if unknown:
        raise DatasetError(
            f"references file {protocol.references_file} names unknown group(s) {unknown}; expected names "
            f"from {dataset.groups_file.name}: {[g.name for g in dataset.groups][:10]}..."
        )
    return choice


def _nothing_to_evaluate(root: str | Path, dataset: MattingDataset, protocol: EvaluationProtocol) -> str:
    largest = max(len(group.items) for group in dataset.groups)
    if protocol.num_references > 1:
        return (
            f"nothing to evaluate in {root}: num_references={protocol.num_references} takes every image of every "
            f"group as a reference (the largest group has {largest} image(s)). Expected at most {largest - 1} "
            "reference(s) per group; lower --num-references."
        )
    return (
        f"nothing to evaluate in {root}: every group has only its reference image(s). Expected groups with at "
        "least two images (one reference + one target)."
    )


def evaluate_dataset(
    engine: IconMatting,
    root: str | Path,
    out_dir: str | Path,
    protocol: EvaluationProtocol | None = None,
    progress: ProgressCallback | None = None,
) -> EvaluationSummary:
    """Matte every target of every group and write ``per_image.csv``, ``summary.md`` and ``summary.json``.

    Args:
        engine: a ready engine (its decoder in eval mode).
        root: dataset root in the ICM-57 layout (:mod:`.dataset`).
        out_dir: report folder (created); files are written atomically.
        protocol: evaluation choices; defaults to ``EvaluationProtocol()``.
        progress: called as ``progress(done, total)`` after each matted micro-batch.
    """
    protocol = protocol or EvaluationProtocol()
    plan, skipped = plan_evaluation(root, protocol)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(len(targets) for _, _, targets in plan)
    groups: list[GroupResult] = []
    with RowWriter(out / CSV_NAME) as rows:
        run = _Run(engine, protocol, out, rows, total, progress)
        for name, references, targets in plan:
            group = _evaluate_group(run, name, references, targets)
            if group is not None:
                groups.append(group)
    summary = EvaluationSummary(
        protocol=protocol,
        dataset_root=Path(root),
        engine_fingerprint=engine.fingerprint,
        images=tuple(run.images),
        groups=tuple(groups),
        overall_over_images=mean_errors([r.errors for r in run.images]) if run.images else None,
        overall_over_groups=mean_errors([g.mean for g in groups]) if groups else None,
        skipped_groups=skipped,
        files={},
        failures=tuple(run.failures),
        extraction=engine.extraction,
    )
    return dataclasses.replace(summary, files=write_reports(summary, out))


@dataclass
class _Run:
    """The state of one evaluation: where rows go, what failed, how far it got."""

    engine: IconMatting
    protocol: EvaluationProtocol
    out: Path
    rows: RowWriter
    total: int
    progress: ProgressCallback | None
    done: int = 0
    images: list[ImageResult] = dataclasses.field(default_factory=list)
    failures: list[ItemFailure] = dataclasses.field(default_factory=list)

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(self.done, self.total)

    def fail(self, group: str, items: Sequence[DatasetItem], reason: str) -> None:
        self.failures.extend(ItemFailure(group, item.name, reason) for item in items)


def _evaluate_group(
    run: _Run, name: str, references: Sequence[DatasetItem], targets: Sequence[DatasetItem]
) -> GroupResult | None:
    """Evaluate one group's targets; unusable items (or reference) go to ``run.failures``. None if nothing was done."""
    ref_names = tuple(item.name for item in references)
    started = time.perf_counter()
    try:
        encoded = _encode_group(run.engine, name, references, run.protocol)
    except ITEM_ERRORS as error:
        reason = f"reference {', '.join(ref_names)} unusable: {_reason(error)}"
        logger.warning("group %s skipped: %s", name, reason)
        run.fail(name, targets, reason)
        run.advance(len(targets))
        return None
    reference_seconds = time.perf_counter() - started
    results: list[ImageResult] = []
    for start in range(0, len(targets), run.protocol.batch_size):
        items = targets[start : start + run.protocol.batch_size]
        results += _evaluate_chunk(run, encoded.context, name, ref_names, items)
        run.advance(len(items))
    if not results:
        return None
    group = GroupResult(
        name=name,
        references=ref_names,
        num_images=len(results),
        mean=mean_errors([r.errors for r in results]),
        seconds=float(np.mean([r.seconds for r in results])),
        reference_seconds=reference_seconds,
        reference_tokens=encoded.context.num_tokens,
        prompt_points=encoded.points,
    )
    logger.info("group %s: %d targets, SAD %.3f", name, len(results), group.mean.sad)
    return group


def _evaluate_chunk(
    run: _Run, context: ReferenceContext, group: str, ref_names: tuple[str, ...], items: Sequence[DatasetItem]
) -> list[ImageResult]:
    """Matte one micro-batch of targets, write and return their rows (failures go to ``run.failures``)."""
    protocol = run.protocol
    chunk = _load_chunk(items, group, protocol, run.failures)
    if not chunk:
        return []
    refinement = RefinementConfig() if protocol.refine else None
    started = time.perf_counter()
    try:
        alphas = run.engine.matte(
            context, [t.image for t in chunk], seed=protocol.seed, batch_size=len(chunk), fit=protocol.fit,
            refinement=refinement,
        )  # fmt: skip
    except ValueError as error:
        run.fail(group, [t.item for t in chunk], _reason(error))
        return []
    seconds = (time.perf_counter() - started) / len(chunk)
    results = []
    for target, alpha in zip(chunk, alphas):
        errors = compute_all(alpha, target.alpha, target.region)
        result = ImageResult(group, target.item.name, ref_names, errors, seconds, tuple(alpha.shape))
        run.rows.write(result)
        results.append(result)
        if protocol.save_alphas:
            save_image_atomic(alpha, run.out / "alphas" / _safe_name(group) / f"{target.item.name}.png")
    run.images.extend(results)
    return results


def _load_chunk(
    items: Sequence[DatasetItem], group: str, protocol: EvaluationProtocol, failures: list[ItemFailure]
) -> list[_Target]:
    chunk = []
    for item in items:
        try:
            chunk.append(_load_target(item, protocol))
        except ITEM_ERRORS as error:
            logger.warning("skipping %s/%s: %s", group, item.name, _reason(error))
            failures.append(ItemFailure(group, item.name, _reason(error)))
    return chunk


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@dataclass(frozen=True)
class _Encoded:
    """A group's context and, per reference, the simulated clicks ``((x, y), ...)`` (empty under ``mask``)."""

    context: ReferenceContext
    points: tuple[tuple[tuple[float, float], ...], ...] = ()


def _encode_group(
    engine: IconMatting, group: str, references: Sequence[DatasetItem], protocol: EvaluationProtocol
) -> _Encoded:
    """Read the references (centre-cropped under ``official``) and encode them under the protocol's prompt."""
    crop = protocol.resolution == "official"
    images, masks = [], []
    for item in references:
        image, mask = read_image(item.image), read_mask(item.alpha)
        check_same_size(item, image, mask)
        images.append(center_square(image) if crop else image)
        masks.append(center_square(mask) if crop else mask)
    try:
        if protocol.prompt == "mask":
            return _Encoded(engine.encode_reference(images, masks, seed=protocol.seed, fit=protocol.fit))
        return _encode_prompts(engine, images, masks, protocol)
    except EmptyReferenceError as error:
        names = ", ".join(item.name for item in references)
        raise EmptyReferenceError(
            f"group {group!r}, reference(s) {names}: {error} Or choose another reference with a references file."
        ) from error


def _encode_prompts(
    engine: IconMatting, images: list[torch.Tensor], masks: list[torch.Tensor], protocol: EvaluationProtocol
) -> _Encoded:
    """Simulated clicks / scribble on each reference, expanded (``top_m``) and encoded as one context."""
    config = ExpansionConfig(top_m=protocol.top_m)
    token_masks, points = [], []
    for image, mask in zip(images, masks):
        visible = _visible_pixels(engine, tuple(image.shape[1:]), protocol.fit)
        clicks = simulated_clicks(mask, protocol.num_points, visible)
        scribble = simulated_scribble(mask, clicks, visible) if protocol.prompt == "scribble" else None
        positive = clicks if protocol.prompt == "points" else ()
        expansion = engine.expand_prompt(
            image, positive=positive, scribble=scribble, config=config, seed=protocol.seed, fit=protocol.fit
        )
        token_masks.append(expansion.token_mask)
        points.append(tuple((p.x, p.y) for p in clicks))
    context = engine.encode_reference_tokens(
        images, token_masks, protocol.seed, prompt_kind=protocol.prompt, fit=protocol.fit
    )
    return _Encoded(context, tuple(points))


def _visible_pixels(engine: IconMatting, size: tuple[int, int], fit: str) -> np.ndarray:
    """``[H, W]`` bool: the pixels of an image of ``size`` that fall inside the model's square under ``fit``."""
    where = placement(size[0], size[1], engine.extraction.image_size, fit)
    rows = where.cell_rows(engine.token_grid).numpy() >= 0
    cols = where.cell_cols(engine.token_grid).numpy() >= 0
    return rows[:, None] & cols[None, :]


def _load_target(item: DatasetItem, protocol: EvaluationProtocol) -> _Target:
    image, alpha = to_rgb(read_image(item.image), f"image {item.image.name}"), read_mask(item.alpha)
    check_same_size(item, image, alpha)
    trimap = None
    if protocol.region == "unknown":
        if item.trimap is None:  # evaluate_dataset checks this before matting anything
            raise DatasetError(f"{item.name}: region='unknown' needs trimap/{item.name}.png; none found.")
        trimap = read_trimap(item.trimap)
        if trimap.shape != tuple(alpha.shape):
            raise DatasetError(
                f"{item.trimap}: trimap is {trimap.shape[1]}x{trimap.shape[0]} but the alpha is "
                f"{alpha.shape[1]}x{alpha.shape[0]}; expected the same size."
            )
    if protocol.resolution == "official":
        image, alpha = center_square(image), center_square(alpha)
        trimap = None if trimap is None else center_square(trimap)
    region = None if trimap is None else unknown_region(np.ascontiguousarray(trimap))
    return _Target(item, image, alpha.contiguous(), region)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"
