"""What Expand Point Prompt sends to its points editor in the browser (``web/icm_points_editor.js``).

Plain Python + torch (no ComfyUI import): the node saves the reference as a temporary preview image and adds the
payload of :func:`expansion_ui` to its UI output, so the editor can show the reference whatever node feeds it and
draw the cells the last run chose, in the reference's pixel coordinates.
"""

from __future__ import annotations

import torch

from ..icm_core.fit import placement
from ..icm_core.prompts import Point

REFERENCE_UI_KEY = "icm_points_reference"  # [{"filename", "subfolder", "type"}]: the reference as the node saw it
CELLS_UI_KEY = "icm_points_cells"  # [payload of expansion_ui]


def cell_spans(cells: torch.Tensor, grid: int) -> list[list[int] | None]:
    """Pixel span ``[first, end)`` of each of the ``grid`` cells along one image axis, ``None`` for a cell no pixel
    falls into (padding of the ``pad`` fit, or outside a crop).

    Args:
        cells: ``[L]`` int64, the cell of every pixel along the axis (-1: not seen by the model), non-decreasing
            apart from the -1 entries (``Placement.cell_rows`` / ``cell_cols``).
    """
    spans: list[list[int] | None] = [None] * grid
    for pixel, cell in enumerate(cells.tolist()):
        if cell < 0:
            continue
        span = spans[cell]
        if span is None:
            spans[cell] = [pixel, pixel + 1]
        else:
            span[1] = pixel + 1
    return spans


def _points_json(points: tuple[Point, ...]) -> list[dict[str, float]]:
    return [{"x": p.x, "y": p.y} for p in points]


def expansion_ui(
    token_mask: torch.Tensor,
    prompt_cells: torch.Tensor,
    size: tuple[int, int],
    side: int,
    fit: str,
    positive: tuple[Point, ...],
    negative: tuple[Point, ...],
) -> dict:
    """The expanded cells of one reference in its pixel coordinates (JSON-ready).

    Args:
        token_mask: ``[g, g]`` bool, the cells chosen by the expansion (``PromptExpansion.token_mask``).
        prompt_cells: ``[g, g]`` bool, the cells hit by the prompt itself.
        size: the reference's ``(H, W)``.
        side: the model's square side (768 for the official model); ``fit`` as given to the node.
        positive, negative: the points the run used (the editor marks the cells stale once they change).

    Returns:
        ``{"grid": g, "width": W, "height": H, "fit": fit, "rows": [[y0, y1) | None] * g,
        "cols": [[x0, x1) | None] * g, "cells": [[row, col], ...], "prompt_cells": [[row, col], ...],
        "positive": [{"x", "y"}], "negative": [{"x", "y"}]}``: a chosen cell covers the image pixels
        ``cols[col][0] <= x < cols[col][1]``, ``rows[row][0] <= y < rows[row][1]``.
    """
    grid = token_mask.shape[0]
    where = placement(size[0], size[1], side, fit)
    return {
        "grid": grid,
        "width": size[1],
        "height": size[0],
        "fit": fit,
        "rows": cell_spans(where.cell_rows(grid), grid),
        "cols": cell_spans(where.cell_cols(grid), grid),
        "cells": token_mask.nonzero().tolist(),
        "prompt_cells": prompt_cells.nonzero().tolist(),
        "positive": _points_json(positive),
        "negative": _points_json(negative),
    }
