"""Write procedural scenes (:mod:`.scenes`) as a grouped matting dataset in the ICM-57 layout.

Layout (what :func:`icm_core.io.datasets.load_dataset` reads)::

    ROOT/image/<category>_<nnn>.png    RGB scene
    ROOT/alpha/<category>_<nnn>.png    8-bit ground-truth alpha of the category's objects
    ROOT/<ROOT name>.json              plain groups: {"<category>": ["<category>_000", ...], ...}

One group per category. Inside a group, the first ``references`` images (by name) are reference scenes (one
larger object, so a mask of it keeps RoI tokens even on a coarse token grid); the evaluation and the training
sampler then find them first. Image ``n`` of a category is ``render_scene(category, first_seed + n, size, ...)``,
so two splits with disjoint seed ranges share no scene.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .scenes import CATEGORIES, render_scene

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticSplit:
    """Which scenes a dataset holds.

    Attributes:
        images_per_category: images per group (>= 1).
        size: image side in pixels, or ``(height, width)``.
        first_seed: seed of each category's first image; image n uses ``first_seed + n``.
        references: how many of each group's first images are reference scenes (0..images_per_category).
        categories: the groups (default: every category).
        reference_every: if > 0, also every ``reference_every``-th later image is a reference scene (training
            sets: more usable references).
        reference_size: size of the reference scenes when it differs from ``size`` (e.g. square references
            beside wide targets); None = ``size``.
    """

    images_per_category: int
    size: int | tuple[int, int] = 128
    first_seed: int = 0
    references: int = 1
    categories: tuple[str, ...] = CATEGORIES
    reference_every: int = 0
    reference_size: int | tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.images_per_category < 1:
            raise ValueError(f"images_per_category must be >= 1, got {self.images_per_category}.")
        if not 0 <= self.references <= self.images_per_category:
            raise ValueError(f"references must be in 0..{self.images_per_category}, got {self.references}.")
        unknown = sorted(set(self.categories) - set(CATEGORIES))
        if unknown or not self.categories:
            raise ValueError(f"categories must be a non-empty subset of {', '.join(CATEGORIES)}; got {unknown}.")

    def is_reference(self, index: int) -> bool:
        """Whether image ``index`` of a group is rendered as a reference scene."""
        return index < self.references or (self.reference_every > 0 and index % self.reference_every == 0)


def stem(category: str, index: int) -> str:
    """File stem of image ``index`` of ``category``: ``"star_007"``."""
    return f"{category}_{index:03d}"


def write_synthetic_dataset(root: Path, split: SyntheticSplit) -> Path:
    """Render ``split`` into the new folder ``root`` (ICM-57 layout) and return the groups JSON path.

    The dataset is written into a temporary folder next to ``root`` and renamed into place at the end, so an
    interrupted run leaves nothing half-written under ``root``.

    Raises:
        FileExistsError: ``root`` already exists (never written into or replaced).
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; choose a new folder for the synthetic dataset.")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        groups = _render_into(staging, split)
        (staging / f"{root.name}.json").write_text(json.dumps(groups, indent=1) + "\n", encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; a dataset is an ordinary folder
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %d images in %d groups to %s", sum(map(len, groups.values())), len(groups), root)
    return root / f"{root.name}.json"


def _render_into(folder: Path, split: SyntheticSplit) -> dict[str, list[str]]:
    (folder / "image").mkdir()
    (folder / "alpha").mkdir()
    groups: dict[str, list[str]] = {}
    for category in split.categories:
        names = groups.setdefault(category, [])
        for index in range(split.images_per_category):
            reference = split.is_reference(index)
            size = split.reference_size if reference and split.reference_size is not None else split.size
            scene = render_scene(category, split.first_seed + index, size, reference)
            name = stem(category, index)
            Image.fromarray(_to_uint8(scene.image)).save(folder / "image" / f"{name}.png")
            Image.fromarray(_to_uint8(scene.alpha)).save(folder / "alpha" / f"{name}.png")
            names.append(name)
    return groups


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)
