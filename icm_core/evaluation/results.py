"""What an evaluation produces: the protocol it followed and its per-image, per-group and overall results.

Plain frozen dataclasses shared by :mod:`.evaluate` (which computes them) and :mod:`.report` (which writes them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import ExtractionConfig
from ..fit import FITS
from ..metrics import MattingErrors
from ..prompts import DEFAULT_TOP_M

Resolution = Literal["official", "original"]
Region = Literal["whole", "unknown"]
PromptKind = Literal["mask", "points", "scribble"]
PROMPT_KINDS = ("mask", "points", "scribble")
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
        prompt: how each reference's RoI is given: ``"mask"`` (its ground-truth alpha), ``"points"`` (simulated
            clicks, expanded over the token grid) or ``"scribble"`` (a simulated stroke, expanded likewise); see
            :mod:`.simulated_prompts`.
        num_points: simulated clicks per reference (>= 1) for ``points``, and the clicks the scribble joins.
        top_m: cells added per prompt cell when a points/scribble prompt is expanded (>= 0).
        num_references: the first N images of each group by name are its references (>= 1); more than one
            cannot be combined with ``references_file``.
        fit: how images meet the model's square: ``"stretch"``, ``"pad"`` or ``"crop"`` (see :mod:`icm_core.fit`).
        refine: refine every alpha at full resolution (``RefinementConfig()``, guided filter).
    """

    resolution: Resolution = "official"
    region: Region = "whole"
    references_file: Path | None = None
    groups_file: Path | None = None
    seed: int = 0
    batch_size: int = 1
    save_alphas: bool = False
    prompt: PromptKind = "mask"
    num_points: int = 3
    top_m: int = DEFAULT_TOP_M
    num_references: int = 1
    fit: str = "stretch"
    refine: bool = False

    def __post_init__(self) -> None:
        if self.resolution not in ("official", "original"):
            raise ValueError(f"resolution must be 'official' or 'original', got {self.resolution!r}")
        if self.region not in ("whole", "unknown"):
            raise ValueError(f"region must be 'whole' or 'unknown', got {self.region!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self._check_prompt()
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {self.fit!r}")

    def _check_prompt(self) -> None:
        if self.prompt not in PROMPT_KINDS:
            raise ValueError(f"prompt must be one of {', '.join(PROMPT_KINDS)}, got {self.prompt!r}")
        if isinstance(self.num_points, bool) or not isinstance(self.num_points, int) or self.num_points < 1:
            raise ValueError(f"num_points must be an integer >= 1, got {self.num_points!r}")
        if isinstance(self.top_m, bool) or not isinstance(self.top_m, int) or self.top_m < 0:
            raise ValueError(f"top_m must be an integer >= 0, got {self.top_m!r}")
        if isinstance(self.num_references, bool) or not isinstance(self.num_references, int) or self.num_references < 1:
            raise ValueError(f"num_references must be an integer >= 1, got {self.num_references!r}")
        if self.num_references > 1 and self.references_file is not None:
            raise ValueError(
                f"num_references={self.num_references} and a references file ({self.references_file}) both choose "
                "the references; give one of them (the file names each group's references itself)."
            )


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
        seconds: mean matting seconds per image; reference_seconds: time to encode the group's context (and to
            expand its prompts).
        reference_tokens: reference tokens in the group's context.
        prompt_points: per reference, the simulated clicks ``((x, y), ...)`` (pixels of the reference as given to
            the engine; the scribble joins them); empty under ``prompt="mask"``.
    """

    name: str
    references: tuple[str, ...]
    num_images: int
    mean: MattingErrors
    seconds: float
    reference_seconds: float
    reference_tokens: int = 0
    prompt_points: tuple[tuple[tuple[float, float], ...], ...] = ()


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
        extraction: the engine's timestep, ensemble size and working image size.
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
    extraction: ExtractionConfig | None = None


def mean_errors(errors: Sequence[MattingErrors]) -> MattingErrors:
    """Per-metric arithmetic mean (float64) of a non-empty sequence."""
    if not errors:
        raise ValueError("mean_errors needs at least one MattingErrors")
    return MattingErrors(**{name: float(np.mean([getattr(e, name) for e in errors])) for name in METRIC_NAMES})
