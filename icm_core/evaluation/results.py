"""What an evaluation produces: the protocol it followed and its per-image, per-group and overall results.

Plain frozen dataclasses shared by :mod:`.evaluate` (which computes them) and :mod:`.report` (which writes them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..metrics import MattingErrors

Resolution = Literal["official", "original"]
Region = Literal["whole", "unknown"]
ProgressCallback = Callable[[int, int], None]
METRIC_NAMES = ("sad", "mse", "grad", "conn")


@dataclass(frozen=True)
class EvaluationProtocol:
    """How a dataset is evaluated (see the module docstring for the meaning of each choice).

    Attributes:
        resolution: ``"official"`` (centre square crop, metrics on the crop) or ``"original"`` (whole image,
            metrics at its original size).
        region: ``"whole"`` (all pixels) or ``"unknown"`` (trimap == 128; needs a trimap per target).
        references_file: JSON ``{group: name | [names]}``; None = first image of each group by name.
        groups_file: the groups JSON; None = searched next to the dataset (see :mod:`.dataset`).
        seed: noise seed for references and targets.
        batch_size: targets per UNet pass (>= 1).
        save_alphas: also write each predicted alpha as ``alphas/<group>/<image>.png`` (8-bit; the metrics
            use the float alpha, so recomputing them from these PNGs differs by the quantisation).
    """

    resolution: Resolution = "official"
    region: Region = "whole"
    references_file: Path | None = None
    groups_file: Path | None = None
    seed: int = 0
    batch_size: int = 1
    save_alphas: bool = False

    def __post_init__(self) -> None:
        if self.resolution not in ("official", "original"):
            raise ValueError(f"resolution must be 'official' or 'original', got {self.resolution!r}")
        if self.region not in ("whole", "unknown"):
            raise ValueError(f"region must be 'whole' or 'unknown', got {self.region!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class ImageResult:
    """Errors of one target image.

    Attributes:
        metric_size: ``(H, W)`` at which the metrics were computed (the crop under ``official``).
        seconds: wall time of matting this image (see the module docstring).
    """

    group: str
    image: str
    references: tuple[str, ...]
    errors: MattingErrors
    seconds: float
    metric_size: tuple[int, int]


@dataclass(frozen=True)
class GroupResult:
    """Mean errors of one group's targets.

    Attributes:
        mean: per-metric mean over the group's target images.
        seconds: mean matting seconds per image; reference_seconds: time to encode the group's context.
    """

    name: str
    references: tuple[str, ...]
    num_images: int
    mean: MattingErrors
    seconds: float
    reference_seconds: float


@dataclass(frozen=True)
class ItemFailure:
    """A target that was not evaluated, and why (``image`` names the target; the reason may name its reference)."""

    group: str
    image: str
    reason: str


@dataclass(frozen=True)
class EvaluationSummary:
    """Everything an evaluation produced.

    Attributes:
        overall_over_images: mean of the per-image metrics over all evaluated target images (every image weighs
            the same); None when no target could be evaluated.
        overall_over_groups: mean of the per-group means (every group weighs the same); None likewise.
        skipped_groups: groups left without a target once their references were taken out.
        failures: targets skipped because their files (or their group's reference) could not be used.
        files: ``{"csv": ..., "markdown": ..., "json": ...}`` report paths.
    """

    protocol: EvaluationProtocol
    dataset_root: Path
    engine_fingerprint: str
    images: tuple[ImageResult, ...]
    groups: tuple[GroupResult, ...]
    overall_over_images: MattingErrors | None
    overall_over_groups: MattingErrors | None
    skipped_groups: tuple[str, ...]
    files: dict[str, Path]
    failures: tuple[ItemFailure, ...] = ()


def mean_errors(errors: Sequence[MattingErrors]) -> MattingErrors:
    """Per-metric arithmetic mean (float64) of a non-empty sequence."""
    if not errors:
        raise ValueError("mean_errors needs at least one MattingErrors")
    return MattingErrors(**{name: float(np.mean([getattr(e, name) for e in errors])) for name in METRIC_NAMES})
