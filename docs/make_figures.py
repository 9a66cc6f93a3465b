"""Builds docs/refinement_and_colours.png from the synthetic scenes the tests use (``python docs/make_figures.py``).

Top row: a 4x-downsampled ground-truth alpha brought back to full size by plain bilinear upsampling vs the
guided-filter refinement (``refine_alpha``), with their errors. Bottom row: a soft-edged cut-out composited on
white using the image's own colours (halo of the old background) vs blur-fusion estimated colours.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icm_core.image_io import save_image_atomic, to_uint8  # noqa: E402
from icm_core.postprocess import composite, estimate_foreground, refine_alpha  # noqa: E402
from icm_core.synthetic import foreground_scene, soft_edge_scene  # noqa: E402

TILE = 256


def _tile(image: torch.Tensor, caption: str) -> Image.Image:
    picture = Image.fromarray(to_uint8(image)).convert("RGB").resize((TILE, TILE), Image.NEAREST)
    canvas = Image.new("RGB", (TILE, TILE + 22), "white")
    canvas.paste(picture, (0, 0))
    ImageDraw.Draw(canvas).text((4, TILE + 4), caption, fill="black")
    return canvas


def main() -> Path:
    image, alpha = soft_edge_scene(256)
    coarse = F.interpolate(alpha, scale_factor=0.25, mode="area")
    bilinear = F.interpolate(coarse, size=alpha.shape[-2:], mode="bilinear", align_corners=False)
    refined = refine_alpha(coarse, image)
    mse = lambda x: float(((x - alpha) ** 2).mean())  # noqa: E731
    crop = (slice(None), slice(None), slice(40, 140), slice(60, 160))  # zoom on an edge
    row_top = [
        _tile(image[crop][0], "image (zoom)"),
        _tile(bilinear[crop][0, 0], f"bilinear x4: MSE {mse(bilinear):.1e}"),
        _tile(refined[crop][0, 0], f"refined: MSE {mse(refined):.1e}"),
        _tile(alpha[crop][0, 0], "ground truth"),
    ]
    scene, ramp, true_fg, _ = foreground_scene(192)
    white = (1.0, 1.0, 1.0)
    naive = composite(scene, ramp, white)
    estimated_fg, _ = estimate_foreground(scene, ramp)
    estimated = composite(estimated_fg, ramp, white)
    truth = composite(true_fg, ramp, white)
    band = ((ramp > 0.05) & (ramp < 0.95)).expand_as(scene)
    error = lambda x: float((x - true_fg).abs()[band].mean())  # noqa: E731
    row_bottom = [
        _tile(scene[0], "image (soft edge)"),
        _tile(naive[0], f"image colours: err {error(scene):.3f}"),
        _tile(estimated[0], f"estimated: err {error(estimated_fg):.3f}"),
        _tile(truth[0], "true foreground"),
    ]
    figure = Image.new("RGB", (4 * TILE + 30, 2 * (TILE + 22) + 10), "white")
    for row, tiles in enumerate((row_top, row_bottom)):
        for column, tile in enumerate(tiles):
            figure.paste(tile, (column * (TILE + 10), row * (TILE + 32)))
    return save_image_atomic(figure, Path(__file__).resolve().parent / "refinement_and_colours.png")


if __name__ == "__main__":
    print(main())
