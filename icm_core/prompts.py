"""Sparse reference prompts: points and scribbles -> reference token cells (paper §3.6).

The official 16x16 min-pooling turns a click or a thin stroke into zero tokens. Here every prompt point (and every
scribble cell) is mapped to its cell of the token grid, and the prompt is extended with the ``top_m`` cells that
its row of the reference's own self-attention map responds to most; negative points remove their cells and the
cells they respond to more strongly than any positive prompt does.

Points use the JSON of KJNodes' Points Editor and ComfyUI's SAM3 nodes: ``[{"x": 120, "y": 88}, ...]`` in the
reference image's pixel coordinates (other keys are ignored).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .modeling.similarity import cell_index, pool_token_mask

# Default number of cells added per prompt cell. At the 48x48 grid one cell is 16x16 px at 768 px; SD's 48x48
# self-attention rows are peaked on the query's own part of the object, so 16 cells (about a 4x4 patch, a
# 64x64 px region) extend a click to the part it is on without leaking into the background for objects that fill
# a few percent of the image. Several clicks or a scribble cover larger objects. Tune with real weights.
DEFAULT_TOP_M = 16


@dataclass(frozen=True)
class Point:
    """A prompt point in the reference image's pixel coordinates (x to the right, y down)."""

    x: float
    y: float


@dataclass(frozen=True)
class ExpansionConfig:
    """How far a prompt is extended.

    Attributes:
        top_m: cells added per prompt cell (its highest self-attention responses).
        relative_threshold: if set, an added cell must also respond at least this fraction of the prompt cell's
            strongest response (0 < t <= 1); None keeps all ``top_m``.
    """

    top_m: int = DEFAULT_TOP_M
    relative_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.top_m < 0:
            raise ValueError(f"top_m must be >= 0, got {self.top_m}")
        if self.relative_threshold is not None and not 0.0 < self.relative_threshold <= 1.0:
            raise ValueError(f"relative_threshold must be in (0, 1], got {self.relative_threshold}")


def parse_points(text: str | None, what: str = "points") -> tuple[Point, ...]:
    """Parse ``[{"x": .., "y": ..}, ...]`` (KJNodes / SAM3 points JSON). Empty text or ``[]`` gives no points."""
    if text is None or not text.strip():
        return ()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{what}: not valid JSON ({error.msg} at character {error.pos}); expected a list like "
            '[{"x": 120, "y": 88}, {"x": 300, "y": 140}].'
        ) from error
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f'{what}: expected a JSON list of {{"x": .., "y": ..}} objects, got {type(data).__name__}.')
    points = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or "x" not in item or "y" not in item:
            raise ValueError(f'{what}[{index}]: expected an object with "x" and "y", got {item!r}.')
        x, y = item["x"], item["y"]
        if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            raise ValueError(f"{what}[{index}]: x and y must be numbers, got x={x!r}, y={y!r}.")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"{what}[{index}]: x and y must be finite, got x={x!r}, y={y!r}.")
        points.append(Point(float(x), float(y)))
    return tuple(points)


def point_cells(
    points: Sequence[Point],
    size: tuple[int, int],
    grid: int,
    what: str = "point",
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token index (``y_cell * grid + x_cell``) of each point of an image of ``size`` (H, W): ``[P]`` int64.

    ``rows`` / ``cols``: the cell of every image row / column (default: the stretch fit); a point in a part of the
    image the model does not see (outside a crop) is an error.
    """
    height, width = size
    rows = cell_index(height, grid) if rows is None else rows
    cols = cell_index(width, grid) if cols is None else cols
    indices = []
    for index, point in enumerate(points):
        if not (0 <= point.x < width and 0 <= point.y < height):
            raise ValueError(
                f"{what} {index} at (x={point.x:g}, y={point.y:g}) is outside the {width}x{height} px reference "
                "image; points are pixel coordinates of the reference image."
            )
        row, column = int(rows[int(point.y)]), int(cols[int(point.x)])
        if row < 0 or column < 0:
            raise ValueError(f"{what} {index} at (x={point.x:g}, y={point.y:g}) lies outside the cropped area.")
        indices.append(row * grid + column)
    return torch.tensor(indices, dtype=torch.int64)


def expand_cells(
    attention: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    config: ExpansionConfig = ExpansionConfig(),
) -> torch.Tensor:
    """Extend prompt cells with their strongest self-attention responses.

    Args:
        attention: ``[g, g, g*g]`` (or ``[g*g, g*g]``) reference self-attention, query cell -> key cell.
        positive: ``[P]`` token indices of positive prompt cells (P >= 1).
        negative: ``[N]`` token indices of negative prompt cells.

    Returns:
        ``[g, g]`` bool: positive cells + their top-m responses, minus negative cells and the cells a negative
        prompt responds to more strongly than every positive prompt.
    """
    tokens = attention.shape[-1]
    grid = math.isqrt(tokens)
    rows = attention.reshape(tokens, tokens).float()
    positive = torch.unique(positive.long())
    negative = torch.unique(negative.long()) if negative is not None else torch.empty(0, dtype=torch.int64)
    if positive.numel() == 0:
        raise ValueError("the prompt has no positive point or scribble cell; add at least one positive point.")
    selected = torch.zeros(tokens, dtype=torch.bool)
    selected[positive] = True
    selected |= _responses(rows[positive], config)
    if negative.numel():
        positive_strength = rows[positive].max(dim=0).values
        negative_rows = rows[negative]
        dominated = _responses(negative_rows, config) & (negative_rows.max(dim=0).values > positive_strength)
        selected &= ~dominated
        selected[negative] = False
    return selected.view(grid, grid)


def _responses(rows: torch.Tensor, config: ExpansionConfig) -> torch.Tensor:
    """Cells among the top-m responses of any of ``rows`` ([P, T]) -> [T] bool."""
    chosen = torch.zeros(rows.shape[1], dtype=torch.bool)
    if config.top_m == 0:
        return chosen
    values, indices = rows.topk(min(config.top_m, rows.shape[1]), dim=1)
    keep = torch.ones_like(values, dtype=torch.bool)
    if config.relative_threshold is not None:
        keep = values >= config.relative_threshold * values[:, :1]
    chosen[indices[keep]] = True
    return chosen


def scribble_cells(
    scribble: torch.Tensor, grid: int, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> torch.Tensor:
    """Token indices of every cell a scribble touches (any coverage): ``[H, W] -> [S]`` int64."""
    cells = pool_token_mask(scribble, grid, min_coverage=1e-6, rows=rows, cols=cols)
    return cells.flatten().nonzero().flatten()
