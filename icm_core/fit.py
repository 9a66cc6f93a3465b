"""How an image of any size and aspect is brought to the model's square, and the alpha brought back.

Fits:
    ``stretch`` (default): resize to S x S, ignoring the aspect ratio. Every pixel is used; objects get squashed
        for very wide or tall images, which the model tolerates well.
    ``pad``: letterbox — scale the longer side to S, pad the rest with the image's mean colour.
    ``crop``: the official evaluation — scale the shorter side to S and centre-crop; the alpha outside the crop
        is 0 (unknown), so use it for parity with published numbers, not for production.

The alpha always comes back at exactly the input's H x W, aligned with it. A :class:`Placement` records the
mapping, and also tells which token cell every pixel of the image falls into (for reference masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

FITS = ("stretch", "pad", "crop")


@dataclass(frozen=True)
class Placement:
    """Where an ``height x width`` image lies in the ``side x side`` square: ``square = image * scale + offset``.

    Attributes:
        height, width: the image's size.
        side: the square's side S.
        scale_y, scale_x: pixels of the square per image pixel.
        offset_y, offset_x: position of the image's top-left corner in the square (negative when cropped).
    """

    height: int
    width: int
    side: int
    scale_y: float
    scale_x: float
    offset_y: float
    offset_x: float

    def cell_rows(self, grid: int, device: torch.device | None = None) -> torch.Tensor:
        """Token-cell row of every image row (by pixel centre), ``[H]`` int64; -1 where outside the square."""
        return _cells(self.height, self.scale_y, self.offset_y, self.side, grid, device)

    def cell_cols(self, grid: int, device: torch.device | None = None) -> torch.Tensor:
        """Token-cell column of every image column, ``[W]`` int64; -1 where outside the square."""
        return _cells(self.width, self.scale_x, self.offset_x, self.side, grid, device)


def _cells(length: int, scale: float, offset: float, side: int, grid: int, device: torch.device | None) -> torch.Tensor:
    centres = (torch.arange(length, device=device, dtype=torch.float64) + 0.5) * scale + offset
    cells = torch.floor(centres * grid / side).long()
    return torch.where((centres >= 0) & (centres < side), cells.clamp(0, grid - 1), torch.full_like(cells, -1))


def placement(height: int, width: int, side: int, fit: str = "stretch") -> Placement:
    """The placement of an image in the square for a fit."""
    if fit == "stretch":
        return Placement(height, width, side, side / height, side / width, 0.0, 0.0)
    if fit == "pad":
        scale = side / max(height, width)
        return Placement(height, width, side, scale, scale, (side - height * scale) / 2, (side - width * scale) / 2)
    if fit == "crop":
        scale = side / min(height, width)
        return Placement(height, width, side, scale, scale, (side - height * scale) / 2, (side - width * scale) / 2)
    raise ValueError(f"fit must be one of {FITS}, got {fit!r}")


def _scaled_size(where: Placement) -> tuple[int, int]:
    return max(1, round(where.height * where.scale_y)), max(1, round(where.width * where.scale_x))


def to_square(image: torch.Tensor, where: Placement) -> torch.Tensor:
    """``[C, H, W]`` -> ``[C, S, S]`` (bilinear, antialiased when shrinking; padding in the image's mean colour)."""
    size = _scaled_size(where)
    scaled = image[None]
    if size != tuple(image.shape[-2:]):
        scaled = F.interpolate(scaled, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left, side = round(where.offset_y), round(where.offset_x), where.side
    if top >= 0 and left >= 0:
        if (top, left) == (0, 0) and size == (side, side):
            return scaled[0]
        canvas = image.mean(dim=(-2, -1)).view(1, -1, 1, 1).expand(1, image.shape[0], side, side).clone()
        canvas[..., top : top + size[0], left : left + size[1]] = scaled
        return canvas[0]
    rows, cols = max(0, -top), max(0, -left)
    return scaled[0, :, rows : rows + side, cols : cols + side]


def aligned_alpha(alpha: torch.Tensor, where: Placement) -> torch.Tensor:
    """``[B, 1, S, S]`` -> the image's part at the square's scale, ``[B, 1, h, w]`` (0 where a crop cut it off).

    This is the low-resolution alpha of the whole image (input of full-resolution refinement).
    """
    size = _scaled_size(where)
    top, left, side = round(where.offset_y), round(where.offset_x), where.side
    if top >= 0 and left >= 0:
        return alpha[..., top : top + size[0], left : left + size[1]]
    region = alpha.new_zeros(*alpha.shape[:2], *size)
    rows, cols = max(0, -top), max(0, -left)
    region[..., rows : rows + side, cols : cols + side] = alpha
    return region


def from_square(alpha: torch.Tensor, where: Placement) -> torch.Tensor:
    """``[B, 1, S, S]`` -> ``[B, 1, H, W]`` aligned with the image (0 outside a crop), in [0, 1]."""
    region = aligned_alpha(alpha, where)
    if tuple(region.shape[-2:]) != (where.height, where.width):
        region = F.interpolate(region, size=(where.height, where.width), mode="bilinear", align_corners=False)
    return region.clamp(0.0, 1.0)


def center_square(tensor: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Centre crop of ``[..., H, W]`` to ``[..., m, m]``, m = min(H, W), offset ``(max - min) // 2``."""
    height, width = tensor.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return tensor[..., top : top + side, left : left + side]
