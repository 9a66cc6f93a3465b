"""Evaluate an IconMatting engine on a grouped matting dataset (ICM-57 layout) under a fixed, written protocol.

Protocol (every choice is also written into the reports):

* **Groups and references.** Groups come from the dataset's groups JSON (:mod:`.dataset`). Per group the
  references are fixed: by default the first image of the group by name; or, with ``references_file``, the
  image(s) it names for that group (groups it does not name fall back to the default). Several references
  form one context (their RoI tokens are concatenated, ``encode_reference([images], [masks])``). Reference
  images are never evaluated as targets; a group left without targets is skipped and listed as skipped.
  The official code instead draws a random other image of the group per target; a fixed choice makes runs
  comparable.
* **Reference RoI** = the reference's ground-truth alpha, binarised at 0.5 by the pipeline.
* **Resolution.** ``official``: image, alpha, trimap and reference are centre-cropped to a square of side
  ``min(H, W)`` (offset ``(max - min) // 2``, as the official ``CropResize``), the engine resizes that square to
  its working size (768 for the released model) and the alpha is resized back to the crop; metrics are computed
  on the ``min(H, W)`` square crop. (The official code resizes with nearest/random interpolation; ours is the
  pipeline's bilinear resize.) ``original``: the whole image goes through the pipeline (stretch to the square
  working size, alpha resized back) and metrics are computed at the original ``H x W``.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import image_read_errors
from ..fit import center_square
from ..io.images import read_image, read_mask, save_image_atomic, to_rgb
from ..metrics import MattingErrors, compute_all, unknown_region
from ..pipeline import EmptyReferenceError, IconMatting, ReferenceContext
from ..io.datasets import (
    DatasetError,
    DatasetItem,
    check_same_size,
    load_dataset,
    load_reference_choice,
    read_trimap,
    split_group,
)
from .report import CSV_NAME, RowWriter, write_reports
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
        DatasetError: the dataset, its groups file or the references file cannot be used as given.
    """
    dataset = load_dataset(root, protocol.groups_file)
    choice = load_reference_choice(protocol.references_file) if protocol.references_file else None
    if choice:
        unknown = sorted(set(choice) - {group.name for group in dataset.groups})
        if unknown:
            raise DatasetError(
                f"references file {protocol.references_file} names unknown group(s) {unknown}; expected names "
                f"from {dataset.groups_file.name}: {[g.name for g in dataset.groups][:10]}..."
            )
    plan = [(group.name, *split_group(group, choice)) for group in dataset.groups]
    skipped = tuple(name for name, _, targets in plan if not targets)
    for name in skipped:
        logger.warning("group %s has no image left after taking its reference(s); skipped", name)
    plan = [entry for entry in plan if entry[2]]
    if not plan:
        raise DatasetError(
            f"nothing to evaluate in {root}: every group has only its reference image(s). Expected groups with at "
            "least two images (one reference + one target)."
        )
    if protocol.region == "unknown":
        lacking = [f"{name}/{item.name}" for name, _, targets in plan for item in targets if item.trimap is None]
        if lacking:
            raise DatasetError(
                f"region='unknown' needs a trimap for every target, but {len(lacking)} target(s) have none "
                f"(expected ROOT/trimap/<name>.png): {', '.join(lacking[:10])}{'...' if len(lacking) > 10 else ''}. "
                "Add the trimaps or evaluate with region='whole'."
            )
    return plan, skipped


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
    images: list[ImageResult] = []
    groups: list[GroupResult] = []
    failures: list[ItemFailure] = []
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    with RowWriter(out / CSV_NAME) as rows:
        for name, references, targets in plan:
            group = _evaluate_group(engine, name, references, targets, protocol, out, rows, failures, advance)
            if group is not None:
                images.extend(group[1])
                groups.append(group[0])
    summary = EvaluationSummary(
        protocol=protocol,
        dataset_root=Path(root),
        engine_fingerprint=engine.fingerprint,
        images=tuple(images),
        groups=tuple(groups),
        overall_over_images=mean_errors([r.errors for r in images]) if images else None,
        overall_over_groups=mean_errors([g.mean for g in groups]) if groups else None,
        skipped_groups=skipped,
        files={},
        failures=tuple(failures),
    )
    return dataclasses.replace(summary, files=write_reports(summary, out))


def _evaluate_group(
    engine: IconMatting,
    name: str,
    references: Sequence[DatasetItem],
    targets: Sequence[DatasetItem],
    protocol: EvaluationProtocol,
    out: Path,
    rows: RowWriter,
    failures: list[ItemFailure],
    advance: Callable[[int], None],
) -> tuple[GroupResult, list[ImageResult]] | None:
    """Evaluate one group's targets; unusable items (or reference) go to ``failures``. None if nothing was done."""
    ref_names = tuple(item.name for item in references)
    started = time.perf_counter()
    try:
        context = _encode_group(engine, name, references, protocol)
    except ITEM_ERRORS as error:
        reason = f"reference {', '.join(ref_names)} unusable: {_reason(error)}"
        logger.warning("group %s skipped: %s", name, reason)
        failures += [ItemFailure(name, item.name, reason) for item in targets]
        advance(len(targets))
        return None
    reference_seconds = time.perf_counter() - started
    results: list[ImageResult] = []
    for start in range(0, len(targets), protocol.batch_size):
        items = targets[start : start + protocol.batch_size]
        chunk = _load_chunk(items, name, protocol, failures)
        if not chunk:
            advance(len(items))
            continue
        started = time.perf_counter()
        try:
            alphas = engine.matte(context, [t.image for t in chunk], seed=protocol.seed, batch_size=len(chunk))
        except ValueError as error:
            failures += [ItemFailure(name, t.item.name, _reason(error)) for t in chunk]
            advance(len(items))
            continue
        seconds = (time.perf_counter() - started) / len(chunk)
        for target, alpha in zip(chunk, alphas):
            errors = compute_all(alpha, target.alpha, target.region)
            result = ImageResult(name, target.item.name, ref_names, errors, seconds, tuple(alpha.shape))
            rows.write(result)
            results.append(result)
            if protocol.save_alphas:
                save_image_atomic(alpha, out / "alphas" / _safe_name(name) / f"{target.item.name}.png")
        advance(len(items))
    if not results:
        return None
    group = GroupResult(
        name=name,
        references=ref_names,
        num_images=len(results),
        mean=mean_errors([r.errors for r in results]),
        seconds=float(np.mean([r.seconds for r in results])),
        reference_seconds=reference_seconds,
    )
    logger.info("group %s: %d targets, SAD %.3f", name, len(results), group.mean.sad)
    return group, results


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


def _encode_group(
    engine: IconMatting, group: str, references: Sequence[DatasetItem], protocol: EvaluationProtocol
) -> ReferenceContext:
    crop = protocol.resolution == "official"
    images, masks = [], []
    for item in references:
        image, mask = read_image(item.image), read_mask(item.alpha)
        check_same_size(item, image, mask)
        images.append(center_square(image) if crop else image)
        masks.append(center_square(mask) if crop else mask)
    try:
        return engine.encode_reference(images, masks, seed=protocol.seed)
    except EmptyReferenceError as error:
        names = ", ".join(item.name for item in references)
        raise EmptyReferenceError(
            f"group {group!r}, reference(s) {names}: {error} Or choose another reference with a references file."
        ) from error


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
