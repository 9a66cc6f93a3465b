"""Full-resolution post-processing: alpha refinement, foreground colour estimation, compositing.

Pure torch (NCHW, values in ``[0, 1]``), batched and device-agnostic:

* :func:`refine_alpha` - fast-guided-filter joint upsampling of a coarse matte to the image size.
* :func:`estimate_foreground` - blur-fusion foreground/background colours (Forte & Pitie 2021), in bands
  of rows (:func:`estimate_foreground_into` writes into given tensors).
* :func:`to_rgba`, :func:`composite` - pack RGBA / composite over a new background.
* :func:`box_filter`, :func:`guided_filter`, :func:`fast_guided_filter` - the building blocks.
"""

from __future__ import annotations

from .compose import composite, to_rgba
from .foreground import estimate_foreground, estimate_foreground_into
from .guided_filter import box_filter, fast_guided_filter, guided_filter, refine_alpha

__all__ = [
    "box_filter",
    "composite",
    "estimate_foreground",
    "estimate_foreground_into",
    "fast_guided_filter",
    "guided_filter",
    "refine_alpha",
    "to_rgba",
]
