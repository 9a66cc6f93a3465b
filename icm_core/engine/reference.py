"""Reference images -> RoI tokens: masks pooled to the token grid, tokens picked from the UNet features, and
sparse prompts (points, scribbles) expanded over the grid through the reference's self-attention (paper §3.6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import ExtractionConfig
from ..errors import NonFiniteError
from ..features.backend import FeatureBackend, extract_features
from ..fit import placement, to_square
from ..io.images import ImageLike, to_mask, to_model_range
from ..modeling.similarity import pool_token_mask, select_reference_tokens, token_mask_to_image
from ..prompts import ExpansionConfig, Point, expand_cells, point_cells, scribble_cells
from .context import EmptyReferenceError, PromptExpansion
from .finite import first_non_finite_row, model_non_finite


def model_square(image: torch.Tensor, side: int, fit: str) -> torch.Tensor:
    """``[3, H, W]`` in [0, 1] -> ``[3, side, side]`` in [-1, 1], placed by ``fit``."""
    return to_model_range(to_square(image, placement(*image.shape[1:], side, fit)))


def token_cells(image: torch.Tensor, side: int, grid: int, fit: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel rows and columns of ``image`` each cell of the ``grid`` x ``grid`` token grid covers."""
    where = placement(*image.shape[1:], side, fit)
    return where.cell_rows(grid), where.cell_cols(grid)


def split_masks(masks: ImageLike, count: int) -> list[ImageLike]:
    """One mask per reference from a single mask or a ``[count, H, W]`` / ``[count, 1, H, W]`` batch."""
    if isinstance(masks, torch.Tensor) and masks.ndim == 3 and masks.shape[0] == count and count > 1:
        return list(masks)
    if isinstance(masks, torch.Tensor) and masks.ndim == 4:
        return [mask[0] if mask.ndim == 3 else mask for mask in masks]
    return [masks]


def mask_token_masks(
    references: list[torch.Tensor],
    masks: ImageLike | Sequence[ImageLike],
    extraction: ExtractionConfig,
    grid: int,
    min_coverage: float,
    fit: str,
) -> list[torch.Tensor]:
    """One ``[grid, grid]`` bool token mask per reference from its RoI mask; an empty one is an error."""
    mask_items = list(masks) if isinstance(masks, (list, tuple)) else split_masks(masks, len(references))
    if len(mask_items) != len(references):
        raise ValueError(f"got {len(references)} reference images but {len(mask_items)} masks; give one each.")
    token_masks = []
    for index, (image, raw_mask) in enumerate(zip(references, mask_items)):
        mask = to_mask(raw_mask, tuple(image.shape[1:]), f"reference mask {index}")
        rows, cols = token_cells(image, extraction.image_size, grid, fit)
        token_mask = pool_token_mask(mask, grid, min_coverage, rows, cols)
        if not token_mask.any():
            raise EmptyReferenceError(_empty_mask_message(index, mask, extraction.image_size, grid, min_coverage))
        token_masks.append(token_mask)
    return token_masks


def _empty_mask_message(index: int, mask: torch.Tensor, side: int, grid: int, min_coverage: float) -> str:
    cell = side // grid
    return (
        f"reference mask {index} selects no reference token: a token needs "
        f"{'its whole' if min_coverage >= 1.0 else f'{min_coverage:.0%} of its'} {cell}x{cell} px cell "
        f"(at {side}x{side}) inside the mask, and this mask "
        f"covers {float((mask > 0.5).float().mean()) * 100:.2f}% of the image. Widen the mask (thin "
        "strokes and single points vanish), lower the coverage needed, or expand a point/scribble prompt."
    )


def reference_tokens(
    backend: FeatureBackend,
    extraction: ExtractionConfig,
    references: list[torch.Tensor],
    token_masks: Sequence[torch.Tensor],
    seed: int,
    fit: str,
) -> torch.Tensor:
    """``[K, C]`` float32 CPU tokens of every reference's selected cells, concatenated in reference order."""
    if len(token_masks) != len(references):
        raise ValueError(f"got {len(references)} reference images but {len(token_masks)} token masks.")
    grid = extraction.attention_resolutions[1]
    tokens = []
    for index, (image, token_mask) in enumerate(zip(references, token_masks)):
        if tuple(token_mask.shape) != (grid, grid) or not token_mask.any():
            raise EmptyReferenceError(
                f"token mask {index} must be a non-empty [{grid}, {grid}] grid, got shape "
                f"{tuple(token_mask.shape)} with {int(token_mask.sum())} tokens."
            )
        square = model_square(image, extraction.image_size, fit)[None]
        features = extract_features(backend, square, extraction, seed, record_attention=False)
        if first_non_finite_row(features.high) is not None:
            raise NonFiniteError(model_non_finite(f"reference image {index}", "UNet features"))
        tokens.append(select_reference_tokens(features.high[0].float().cpu(), token_mask.bool().cpu()))
    return torch.cat(tokens)


def reference_attention(
    backend: FeatureBackend, extraction: ExtractionConfig, reference: torch.Tensor, seed: int, fit: str
) -> torch.Tensor:
    """Self-attention of a ``[3, H, W]`` reference on the token grid: ``[g, g, g*g]`` float32 CPU (query, key)."""
    square = model_square(reference, extraction.image_size, fit)
    features = extract_features(backend, square[None], extraction, seed, record_attention=True)
    return features.attention_high[0].float().cpu()


def prompt_cells(
    reference: torch.Tensor,
    positive: Sequence[Point],
    negative: Sequence[Point],
    scribble: ImageLike | None,
    side: int,
    grid: int,
    fit: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat cell indices ``(prompt, negatives)`` hit by the positive points + scribble and by the negative
    points; an empty prompt is an error (raised before any model runs)."""
    size = tuple(reference.shape[1:])
    rows, cols = token_cells(reference, side, grid, fit)
    cells = [point_cells(positive, size, grid, "positive point", rows, cols)]
    if scribble is not None:
        cells.append(scribble_cells(to_mask(scribble, size, "scribble"), grid, rows, cols))
    prompt = torch.cat(cells)
    if prompt.numel() == 0:
        raise ValueError("empty prompt: give at least one positive point or a non-empty scribble mask.")
    return prompt, point_cells(negative, size, grid, "negative point", rows, cols)


def expansion(
    reference: torch.Tensor,
    attention: torch.Tensor,
    prompt: torch.Tensor,
    negatives: torch.Tensor,
    config: ExpansionConfig,
    side: int,
    grid: int,
    fit: str,
) -> PromptExpansion:
    """The prompt cells expanded through the reference's ``[g, g, g*g]`` self-attention (see :mod:`..prompts`)."""
    token_mask = expand_cells(attention, prompt, negatives, config)
    if not token_mask.any():
        raise EmptyReferenceError("the negative points removed every token; move them off the object.")
    prompt_mask = torch.zeros(grid * grid, dtype=torch.bool)
    prompt_mask[prompt] = True
    rows, cols = token_cells(reference, side, grid, fit)
    return PromptExpansion(
        token_mask=token_mask,
        mask=token_mask_to_image(token_mask, tuple(reference.shape[1:]), rows, cols),
        prompt_cells=prompt_mask.view(grid, grid),
    )
