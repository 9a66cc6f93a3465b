"""Targets through the engine: read lazily in micro-batches, brought to the model's square and back to their size."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from ..fit import Placement, aligned_alpha, from_square, placement, to_square
from ..io.images import ImageLike, to_model_range, to_rgb
from ..postprocess import refine_alpha
from .context import RefinementConfig


def target_count(images: ImageLike | Iterable[ImageLike]) -> int | None:
    """How many targets ``images`` holds, or None for an iterable without a length (a generator)."""
    if isinstance(images, torch.Tensor):
        return images.shape[0] if images.ndim == 4 else 1
    return len(images) if hasattr(images, "__len__") else None


def micro_batches(
    images: ImageLike | Iterable[ImageLike], batch_size: int
) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """``(start index, [3, H, W] images)`` per micro-batch, converting lazily; errors name the target's index."""
    single = isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim < 4
    if single or not isinstance(images, Iterable):
        images = [images]
    chunk: list[torch.Tensor] = []
    start = 0
    for index, image in enumerate(images):
        chunk.append(to_rgb(image, f"target image {index}"))
        if len(chunk) == batch_size:
            yield start, chunk
            start, chunk = index + 1, []
    if chunk:
        yield start, chunk


def to_model_squares(
    chunk: list[torch.Tensor], side: int, fit: str
) -> tuple[list[Placement], torch.Tensor]:
    """``[3, H, W]`` images in [0, 1] -> their placements and ``[n, 3, side, side]`` squares in [-1, 1]."""
    placements = [placement(*image.shape[1:], side, fit) for image in chunk]
    square = torch.stack([to_model_range(to_square(image, where)) for image, where in zip(chunk, placements)])
    return placements, square


def restore_alpha(
    alpha: torch.Tensor, image: torch.Tensor, where: Placement, refinement: RefinementConfig | None
) -> torch.Tensor:
    """``[1, 1, S, S]`` -> ``[H, W]`` CPU float32, optionally refined at full resolution guided by ``image``."""
    if refinement is None:
        return from_square(alpha, where)[0, 0].cpu()
    coarse = aligned_alpha(alpha, where)
    guide = image[:3].to(coarse.device, torch.float32)[None]
    refined = refine_alpha(coarse, guide, radius=refinement.radius, eps=refinement.eps)
    return refined[0, 0].float().cpu()
