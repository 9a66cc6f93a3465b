"""Matting datasets in the ICM-57 layout, grouped for in-context evaluation and fine-tuning.

Folder layout (stems must match across folders)::

    ROOT/image/<stem>.jpg|.jpeg|.png    the images (RGB)
    ROOT/alpha/<stem>.png               ground-truth alpha (grey level, or the alpha channel of an RGBA file)
    ROOT/trimap/<stem>.png              optional trimaps (0 background, 128 unknown, 255 foreground)
    <groups>.json                       which images form a group (one context = one group)

Groups file: found at ``groups_file`` when given, else ``ROOT/<ROOT name>.json``, else
``<ROOT parent>/<ROOT name>.json`` (the official repository keeps ``datasets/ICM57.json`` next to
``datasets/ICM57/``), else the only ``*.json`` inside ROOT. Two structures are accepted:

* **official ICM-57** (``datasets/ICM57.json`` of tiny-smart/in-context-matting): an object keyed by image stem,
  each value an object with at least ``"class"``, ``"sub_class"`` and ``"HalfOrFull"`` (plus e.g.
  ``"dataset_name"``, ``"TransparentOrOpaque"``). As in the official data module the group of an image is
  ``f"{class}-{sub_class}-{HalfOrFull}"`` with Python's ``str`` of each field (a null ``sub_class`` reads
  ``"None"``), e.g. ``"animal-None-half"``.
* **plain groups**: ``{"group name": ["stem", "stem", ...], ...}``.

Names may carry an image extension (``"x.jpg"``); it is dropped. A name listed in the JSON without its image
or alpha file is an error (so a half-copied dataset never silently shrinks); files on disk that the JSON does
not list are ignored (logged). Inside a group, images are sorted by stem, which fixes the default reference
(see :func:`split_group`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from .images import read_grey

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
OFFICIAL_GROUP_FIELDS = ("class", "sub_class", "HalfOrFull")


class DatasetError(ValueError):
    """The dataset folder, its groups file or a references file is not usable as given."""


@dataclass(frozen=True)
class DatasetItem:
    """One annotated image.

    Attributes:
        name: file stem shared by the image, alpha and trimap files.
        image: path of the RGB image.
        alpha: path of the ground-truth alpha (grey level in 0..255).
        trimap: path of the trimap (0/128/255) or None when the dataset has none for this image.
    """

    name: str
    image: Path
    alpha: Path
    trimap: Path | None


@dataclass(frozen=True)
class DatasetGroup:
    """Images that share one context (e.g. one ICM-57 class), sorted by name."""

    name: str
    items: tuple[DatasetItem, ...]

    def item(self, name: str) -> DatasetItem:
        for item in self.items:
            if item.name == name:
                return item
        raise DatasetError(
            f"group {self.name!r} has no image {name!r}; expected one of {[i.name for i in self.items]}."
        )


@dataclass(frozen=True)
class MattingDataset:
    """A scanned dataset: groups in name order, and the groups file they came from."""

    root: Path
    groups: tuple[DatasetGroup, ...]
    groups_file: Path

    @property
    def num_images(self) -> int:
        return sum(len(group.items) for group in self.groups)

    def group(self, name: str) -> DatasetGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise DatasetError(f"no group {name!r} in {self.groups_file}; groups: {[g.name for g in self.groups]}")


def load_dataset(root: str | Path, groups_file: str | Path | None = None) -> MattingDataset:
    """Scan an ICM-57-layout folder and its groups JSON (see the module docstring)."""
    root = Path(root)
    for folder in ("image", "alpha"):
        if not (root / folder).is_dir():
            raise DatasetError(
                f"dataset root {root} has no '{folder}/' folder; expected ROOT/image/*.jpg|png and "
                "ROOT/alpha/*.png (ICM-57 layout, optional ROOT/trimap/*.png). Point to the dataset root."
            )
    groups_path = _find_groups_file(root, None if groups_file is None else Path(groups_file))
    try:
        raw = json.loads(groups_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read the groups file {groups_path}: {error}; expected valid JSON.") from error
    membership = _parse_groups(raw, groups_path)
    images = _index_folder(root / "image", IMAGE_SUFFIXES)
    alphas = _index_folder(root / "alpha", (".png",))
    trimaps = _index_folder(root / "trimap", (".png",)) if (root / "trimap").is_dir() else {}
    missing = [name for names in membership.values() for name in names if name not in images or name not in alphas]
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) listed in {groups_path.name} lack their image or alpha file under {root}: "
            + ", ".join(sorted(missing)[:10]) + ("..." if len(missing) > 10 else "")
            + ". Expected image/<name>.jpg|png and alpha/<name>.png for every listed name; fix the folder or JSON."
        )
    listed = {name for names in membership.values() for name in names}
    unlisted = sorted(set(images) - listed)
    if unlisted:
        logger.info(
            "%d image(s) on disk are not in %s and are ignored: %s", len(unlisted), groups_path.name, unlisted[:5]
        )
    groups = tuple(
        DatasetGroup(
            name=group,
            items=tuple(DatasetItem(n, images[n], alphas[n], trimaps.get(n)) for n in sorted(set(names))),
        )
        for group, names in sorted(membership.items())
    )
    logger.info("dataset %s: %d groups, %d images", root, len(groups), sum(len(g.items) for g in groups))
    return MattingDataset(root=root, groups=groups, groups_file=groups_path)


def load_reference_choice(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read a references file: JSON ``{"group": "stem"}`` or ``{"group": ["stem", ...]}`` (several references)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read the references file {path}: {error}; expected JSON.") from error
    if not isinstance(raw, dict):
        raise DatasetError(
            f"references file {path}: expected a JSON object group -> name(s), got {type(raw).__name__}."
        )
    choice: dict[str, tuple[str, ...]] = {}
    for group, names in raw.items():
        values = [names] if isinstance(names, str) else names
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise DatasetError(
                f"references file {path}: group {group!r} maps to {names!r}; expected an image name or a "
                "non-empty list of image names."
            )
        choice[str(group)] = tuple(_strip_suffix(v) for v in values)
    return choice


def split_group(
    group: DatasetGroup, references: Mapping[str, Sequence[str]] | None = None
) -> tuple[tuple[DatasetItem, ...], tuple[DatasetItem, ...]]:
    """The ``(references, targets)`` of a group under the fixed reference rule.

    Default: the first image of the group by name is the only reference. With a references mapping that names
    this group, those images are the references (their RoI tokens are concatenated). In both cases reference
    images are not evaluated as targets; a group that keeps no target yields an empty targets tuple.
    """
    names = tuple(references[group.name]) if references and group.name in references else (group.items[0].name,)
    chosen = tuple(group.item(name) for name in names)
    targets = tuple(item for item in group.items if item.name not in set(names))
    return chosen, targets


def read_trimap(path: str | Path) -> np.ndarray:
    """A trimap file -> ``H x W`` uint8 (0 background, 128 unknown, 255 foreground); RGB files use their grey level,
    16-bit files are scaled to 0..255 (the image reader of :mod:`icm_core.image_io`)."""
    return read_grey(path).mul(255).round().to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------------------- helpers


def _find_groups_file(root: Path, explicit: Path | None) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            raise DatasetError(f"groups file not found: expected a JSON file at {explicit}.")
        return explicit
    candidates = [root / f"{root.resolve().name}.json", root.resolve().parent / f"{root.resolve().name}.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    inside = sorted(root.glob("*.json"))
    if len(inside) == 1:
        return inside[0]
    raise DatasetError(
        f"no groups JSON for {root}: looked for {candidates[0]}, {candidates[1]} and a single *.json in the root "
        f"(found {len(inside)}). Pass the file explicitly (--groups-file), e.g. the official datasets/ICM57.json."
    )


def _parse_groups(raw: object, path: Path) -> dict[str, list[str]]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"groups file {path}: expected a non-empty JSON object, got {type(raw).__name__}.")
    values = list(raw.values())
    if all(isinstance(value, dict) for value in values):
        membership: dict[str, list[str]] = {}
        for name, info in raw.items():
            absent = [field for field in OFFICIAL_GROUP_FIELDS if field not in info]
            if absent:
                raise DatasetError(
                    f"groups file {path}: entry {name!r} lacks {absent}; expected the official ICM-57 fields "
                    f"{list(OFFICIAL_GROUP_FIELDS)} for every image."
                )
            group = "-".join(str(info[field]) for field in OFFICIAL_GROUP_FIELDS)
            membership.setdefault(group, []).append(_strip_suffix(str(name)))
        return membership
    if all(isinstance(value, list) and all(isinstance(v, str) for v in value) for value in values):
        return {str(group): [_strip_suffix(v) for v in names] for group, names in raw.items() if names}
    raise DatasetError(
        f"groups file {path}: unrecognised structure; expected the official ICM-57 form "
        '{"<image>": {"class": ..., "sub_class": ..., "HalfOrFull": ...}} or {"<group>": ["<image>", ...]}.'
    )


def _index_folder(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in index:
                raise DatasetError(
                    f"{folder} holds two files for {path.stem!r} ({index[path.stem].name}, {path.name}); "
                    "expected one per name. Remove one."
                )
            index[path.stem] = path
    return index


def _strip_suffix(name: str) -> str:
    lowered = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_same_size(item: DatasetItem, image: torch.Tensor, alpha: torch.Tensor) -> None:
    """Raise DatasetError unless an image ``[C, H, W]`` and its alpha ``[H, W]`` have the same size."""
    if tuple(image.shape[-2:]) != tuple(alpha.shape):
        raise DatasetError(
            f"{item.name}: image {item.image.name} is {image.shape[-1]}x{image.shape[-2]} but alpha "
            f"{item.alpha.name} is {alpha.shape[1]}x{alpha.shape[0]}; expected the same size."
        )
