"""Training samples: reference/target pairs from the groups of an ICM-57-layout folder, random square crops.

Sampling is a pure function of ``(seed, step)`` (and, with fixed crops, of ``(seed, image)``), so a resumed run
draws exactly what an uninterrupted run would have drawn.

Per step (:meth:`PairSampler.plan`):

* a **group** with probability proportional to its size (as if the first target were drawn uniformly from all
  images); one **reference** uniformly among the group's images that keep at least one RoI token after pooling
  (a group of one image uses that image as its own reference); ``batch_size`` **targets** uniformly with
  replacement among the group's other images. All targets of a step share the reference, so the decoder gets one
  token set ``[K, C]`` and BatchNorm sees the whole batch at once (the official code draws a reference per target).
* the **reference** is used whole: stretched to the model's square like :meth:`IconMatting.encode_reference`,
  its RoI = its ground-truth alpha (binarised at 0.5 by the token pooling).
* each **target** is cropped to the model's square size S: an image with a side below S is first resized
  (bilinear) so that its short side is S, then an S x S window is drawn uniformly. With ``fixed_crops`` the window
  of an image is drawn once from ``(seed, image)`` and kept for every step, and the UNet noise seed is ``seed``
  for every step -- the conditions under which frozen features can be cached (:mod:`.feature_cache`).
  Otherwise the window and the noise seed change every step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..io.datasets import DatasetError, DatasetGroup, DatasetItem, MattingDataset, check_same_size
from ..io.images import image_size, read_image, read_mask, stretch_to_square
from ..modeling.similarity import pool_token_mask
from .losses import is_binary_alpha


@dataclass(frozen=True)
class CropBox:
    """A training crop: resize the image to ``(height, width)`` (a no-op when equal to its size), then cut the
    ``size x size`` window at ``(top, left)``."""

    height: int
    width: int
    top: int
    left: int
    size: int

    @property
    def key(self) -> str:
        return f"{self.height}x{self.width}@{self.top},{self.left}+{self.size}"


@dataclass(frozen=True)
class StepPlan:
    """What one training step uses.

    Attributes:
        step: 0-based index of the optimizer step.
        group: group name; reference: the reference image; targets: ``batch_size`` target images.
        crops: one crop per target; noise_seed: seed of the ensemble noise of the reference and the targets.
    """

    step: int
    group: str
    reference: DatasetItem
    targets: tuple[DatasetItem, ...]
    crops: tuple[CropBox, ...]
    noise_seed: int


@dataclass(frozen=True)
class TargetSample:
    """A cropped target: image ``[3, S, S]`` in [0, 1], alpha ``[1, S, S]`` in [0, 1], segmentation flag."""

    image: torch.Tensor
    alpha: torch.Tensor
    segmentation: bool


def plan_crop(height: int, width: int, size: int, rng: np.random.Generator) -> CropBox:
    """A uniform ``size x size`` window of an ``height x width`` image (upscaled first when a side is < size)."""
    scale = max(1.0, size / min(height, width))
    resized_h, resized_w = max(size, round(height * scale)), max(size, round(width * scale))
    top = int(rng.integers(0, resized_h - size + 1))
    left = int(rng.integers(0, resized_w - size + 1))
    return CropBox(resized_h, resized_w, top, left, size)


def apply_crop(tensor: torch.Tensor, box: CropBox) -> torch.Tensor:
    """``[C, H, W]`` -> ``[C, size, size]`` (bilinear resize to the box's size first when needed)."""
    if tuple(tensor.shape[-2:]) != (box.height, box.width):
        tensor = F.interpolate(tensor[None], size=(box.height, box.width), mode="bilinear", align_corners=False)[0]
    return tensor[:, box.top : box.top + box.size, box.left : box.left + box.size].contiguous()


def load_target(item: DatasetItem, box: CropBox) -> TargetSample:
    """Read and crop a target; the segmentation flag is decided on the whole (uncropped) alpha."""
    image, alpha = read_image(item.image)[:3], read_mask(item.alpha)
    check_same_size(item, image, alpha)
    return TargetSample(apply_crop(image, box), apply_crop(alpha[None], box).clamp(0, 1), is_binary_alpha(alpha))


def load_reference(item: DatasetItem, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference image ``[3, S, S]`` in [0, 1] and RoI ``[S, S]`` (its alpha), stretched as by the pipeline."""
    image, alpha = read_image(item.image)[:3], read_mask(item.alpha)
    check_same_size(item, image, alpha)
    return stretch_to_square(image, size), stretch_to_square(alpha[None], size)[0]


def image_size_of(item: DatasetItem) -> tuple[int, int]:
    """``(H, W)`` of an item's image as read (EXIF rotation applied), from the file header only."""
    return image_size(item.image)


class PairSampler:
    """Deterministic per-step reference/target/crop draws over a dataset (see the module docstring).

    Args:
        dataset: the training dataset (at least one group).
        size: the model's square size S; token_grid: its S/16 token grid.
        batch_size: targets per step; seed: sampling seed; fixed_crops: one crop per image for all steps.
    """

    def __init__(
        self, dataset: MattingDataset, size: int, token_grid: int, batch_size: int, seed: int, fixed_crops: bool
    ) -> None:
        if not dataset.groups:
            raise DatasetError(f"{dataset.root}: the groups file {dataset.groups_file} defines no group.")
        self.dataset = dataset
        self.size, self.token_grid = size, token_grid
        self.batch_size, self.seed, self.fixed_crops = batch_size, seed, fixed_crops
        self._weights = np.array([len(g.items) for g in dataset.groups], dtype=np.float64)
        self._weights /= self._weights.sum()
        self._usable: dict[str, bool] = {}
        self._fixed: dict[str, CropBox] = {}

    def plan(self, step: int) -> StepPlan:
        rng = np.random.default_rng([self.seed, step])
        group = self.dataset.groups[int(rng.choice(len(self.dataset.groups), p=self._weights))]
        reference = self._pick_reference(group, rng)
        others = [item for item in group.items if item.name != reference.name] or [reference]
        targets = tuple(others[int(i)] for i in rng.integers(0, len(others), size=self.batch_size))
        crops = tuple(self._crop(item, rng) for item in targets)
        noise_seed = self.seed if self.fixed_crops else int(rng.integers(0, 2**31 - 1))
        return StepPlan(step, group.name, reference, targets, crops, noise_seed)

    def _crop(self, item: DatasetItem, rng: np.random.Generator) -> CropBox:
        if not self.fixed_crops:
            return plan_crop(*image_size_of(item), self.size, rng)
        if item.name not in self._fixed:
            image_rng = np.random.default_rng([self.seed, _stable_int(item.name)])
            self._fixed[item.name] = plan_crop(*image_size_of(item), self.size, image_rng)
        return self._fixed[item.name]

    def _pick_reference(self, group: DatasetGroup, rng: np.random.Generator) -> DatasetItem:
        for index in rng.permutation(len(group.items)):
            item = group.items[int(index)]
            if self._is_usable(item):
                return item
        raise DatasetError(
            f"group {group.name!r}: no image can serve as reference -- every alpha loses all its RoI tokens when "
            f"pooled to the {self.token_grid}x{self.token_grid} grid (a token needs its whole "
            f"{self.size // self.token_grid} px block inside alpha > 0.5). Remove the group or use larger objects."
        )

    def _is_usable(self, item: DatasetItem) -> bool:
        if item.name not in self._usable:
            _, mask = load_reference(item, self.size)
            self._usable[item.name] = bool(pool_token_mask(mask, self.token_grid).any())
        return self._usable[item.name]


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
