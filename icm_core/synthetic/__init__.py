"""Synthetic images with exact ground truth.

* :mod:`.simple` -- two fixed scenes (a soft-edged star, a wide alpha ramp) used by the post-processing tests and
  the documentation figures.
* :mod:`.scenes` -- procedural in-context scenes: objects of several categories (soft edges, thin strands, holes,
  semi-transparent parts) on cluttered textured backgrounds with distractors of other categories; the alpha of
  the chosen category is exact. Deterministic from a seed, resolution independent.
* :mod:`.datasets` -- writes such scenes as a grouped matting dataset in the ICM-57 layout.
"""

from .scenes import CATEGORIES, Scene, render_scene
from .simple import foreground_scene, soft_edge_scene

__all__ = ["CATEGORIES", "Scene", "foreground_scene", "render_scene", "soft_edge_scene"]
