"""What users take away from a matte: alpha, foreground with estimated colours, RGBA, composite.

The foreground colours come from blur-fusion foreground estimation (not ``alpha * image``): in the soft band of
hair and fur the observed colour mixes in the background, and the estimator removes it, so cut-outs carry no halo.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from .errors import NonFiniteError
from .postprocess import composite as compose_over
from .postprocess.foreground import estimate_foreground_into

OUTPUT_KINDS = ("alpha", "rgba", "foreground", "composite")


@dataclass(frozen=True)
class MatteOutputs:
    """Outputs of one image (float32 in [0, 1], on the device of the inputs).

    When both are asked for, ``foreground`` is a view of ``rgba[:3]`` (one buffer: outputs of a 24 MP photo stay
    within ~28 bytes per pixel, plus ~16 bytes per pixel of working memory while they are made).

    Attributes:
        alpha: ``[H, W]``.
        foreground: ``[3, H, W]`` estimated foreground colours (None unless asked for).
        rgba: ``[4, H, W]`` foreground colours + alpha (None unless asked for).
        composite: ``[3, H, W]`` foreground over the background (None unless asked for).
    """

    alpha: torch.Tensor
    foreground: torch.Tensor | None = None
    rgba: torch.Tensor | None = None
    composite: torch.Tensor | None = None


def make_outputs(
    image: torch.Tensor,
    alpha: torch.Tensor,
    kinds: Collection[str] = OUTPUT_KINDS,
    background: torch.Tensor | Sequence[float] = (0.0, 0.0, 0.0),
    estimate_colors: bool = True,
    *,
    estimate_colours: bool | None = None,
) -> MatteOutputs:
    """Build the requested outputs for one image.

    Args:
        image: ``[C, H, W]`` in [0, 1] (RGB; an alpha channel is ignored, grey is expanded).
        alpha: ``[H, W]`` in [0, 1].
        kinds: any of ``alpha``, ``rgba``, ``foreground``, ``composite``.
        background: ``[3, H, W]`` image or an ``(r, g, b)`` colour in [0, 1] for the composite.
        estimate_colors: estimate foreground colors (blur fusion); False uses the image's own colors.
        estimate_colours: deprecated spelling of ``estimate_colors`` (warns).
    """
    if estimate_colours is not None:
        warnings.warn("make_outputs(estimate_colours=...) is deprecated; use estimate_colors=...", DeprecationWarning,
                      stacklevel=2)
        estimate_colors = estimate_colours
    if tuple(alpha.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"alpha {tuple(alpha.shape)} must match the image size {tuple(image.shape[-2:])}")
    for name, tensor in (("alpha", alpha), ("image", image)):
        if not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"make_outputs: the {name} holds NaN/Inf values; expected finite values in [0, 1].")
    alpha = alpha.to(image.device, torch.float32)
    rgb = (image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)).float()
    needs_colour = {"foreground", "rgba", "composite"} & set(kinds)
    if not needs_colour:
        return MatteOutputs(alpha=alpha)
    rgba = None
    if "rgba" in kinds:  # the estimate is written straight into the RGBA output's colour channels
        rgba = torch.empty((4, *alpha.shape), dtype=torch.float32, device=image.device)
        rgba[3] = alpha
    if estimate_colors:
        foreground = rgba[:3] if rgba is not None else torch.empty_like(rgb)
        estimate_foreground_into(rgb, alpha[None], foreground)
    else:
        foreground = rgb
        if rgba is not None:
            rgba[:3] = rgb
    if isinstance(background, torch.Tensor):
        background = background.to(image.device, torch.float32)[None]
    return MatteOutputs(
        alpha=alpha,
        foreground=foreground if "foreground" in kinds else None,
        rgba=rgba,
        composite=compose_over(foreground[None], alpha[None, None], background)[0] if "composite" in kinds else None,
    )


def parse_color(text: str) -> tuple[float, float, float]:
    """``"#00ff00"`` / ``"0,255,0"`` -> ``(0.0, 1.0, 0.0)``."""
    value = text.strip()
    try:
        if value.startswith("#") and len(value) == 7:
            return tuple(int(value[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]
        parts = [float(part) for part in value.split(",")]
    except ValueError as error:
        raise ValueError(f"colour {text!r}: expected '#rrggbb' or 'r,g,b' with 0..255 values") from error
    if len(parts) != 3 or not all(0 <= part <= 255 for part in parts):
        raise ValueError(f"colour {text!r}: expected '#rrggbb' or 'r,g,b' with 0..255 values")
    return tuple(part / 255.0 for part in parts)  # type: ignore[return-value]


parse_colour = parse_color  # the former spelling, kept for existing callers (the ComfyUI node among them)
