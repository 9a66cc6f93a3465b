"""Full-resolution post-processing: alpha refinement, foreground colour estimation, compositing.

Pure torch (NCHW, values in ``[0, 1]``), batched and device-agnostic:

* :func:`refine_alpha` - fast-guided-filter joint upsampling of a coarse matte to the image size.
* :func:`estimate_foreground` - blur-fusion foreground/background colours (Forte & Pitie 2021), in bands
  of rows (:func:`estimate_foreground_into` writes into given tensors).
* :func:`composite` - composite over a new background.
* :func:`box_filter` - the normalised box mean that refinement and foreground estimation are built on.
"""

from __future__ import annotations

from .compose import composite
from .foreground import estimate_foreground, estimate_foreground_into
from .guided_filter import box_filter, refine_alpha

__all__ = [
    "box_filter",
    "composite",
    "estimate_foreground",
    "estimate_foreground_into",
    "refine_alpha",
]
