"""Procedural in-context scenes: deterministic, exact alpha of the chosen category, the hard cases present, and the
ICM-57-layout writer that the evaluation and training read."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from icm_core.io.datasets import load_dataset
from icm_core.io.images import read_image, read_mask
from icm_core.modeling.similarity import pool_token_mask
from icm_core.synthetic import CATEGORIES, render_scene
from icm_core.synthetic.datasets import SyntheticSplit, stem, write_synthetic_dataset


def _digest(scene) -> str:
    return hashlib.sha256(scene.image.tobytes() + scene.alpha.tobytes()).hexdigest()


def test_a_scene_is_a_pure_function_of_category_seed_and_size():
    first, again = render_scene("furball", 7, 96), render_scene("furball", 7, 96)
    assert _digest(first) == _digest(again)
    assert _digest(render_scene("furball", 8, 96)) != _digest(first)
    assert _digest(render_scene("star", 7, 96)) != _digest(first)
    assert first.image.shape == (96, 96, 3) and first.alpha.shape == (96, 96)
    assert first.image.dtype == np.float32 and 0 <= first.image.min() and first.image.max() <= 1


def test_the_same_scene_at_another_size_is_the_same_layout():
    small, large = render_scene("gear", 3, 128), render_scene("gear", 3, 512)
    shrunk = torch.nn.functional.interpolate(torch.from_numpy(large.alpha)[None, None], size=128, mode="area")[0, 0]
    assert float((shrunk - torch.from_numpy(small.alpha)).abs().mean()) < 0.01
    assert small.distractors == large.distractors


def test_wide_scenes_keep_object_sizes():
    square, wide = render_scene("ring", 5, 128), render_scene("ring", 5, (128, 192))
    assert wide.image.shape == (128, 192, 3)
    assert abs(float(wide.alpha.sum()) / float(square.alpha.sum()) - 1) < 0.35  # same object size, other placement


def test_alpha_is_the_category_only_and_distractors_are_drawn():
    scene = render_scene("cross", 11, 160)
    assert scene.category == "cross" and scene.distractors and "cross" not in scene.distractors
    assert (scene.alpha < 0.01).mean() > 0.5 and scene.alpha.max() == pytest.approx(1.0)
    # inside the alpha the image carries the category's own colours (pink / magenta for the cross)
    image = torch.from_numpy(scene.image)
    object_pixels = torch.from_numpy(scene.alpha > 0.5)
    assert object_pixels.any() and (image[object_pixels].mean(0) - torch.tensor([0.9, 0.35, 0.7])).abs().max() < 0.25


@pytest.mark.parametrize(
    "category, check",
    [
        ("furball", lambda a: ((a > 0.05) & (a < 0.95)).mean() > 0.01),  # thin strands: many partial pixels
        ("bubble", lambda a: 0.45 < np.median(a[a > 0.05]) < 0.8),  # semi-transparent interior
        ("cloud", lambda a: ((a > 0.05) & (a < 0.95)).mean() > ((a >= 0.95).mean())),  # mostly soft
    ],
)
def test_the_hard_cases_are_in_the_alpha(category, check):
    assert check(render_scene(category, 2, 256, reference=True).alpha)


def test_ring_and_gear_have_holes():
    for category in ("ring", "gear"):
        alpha = render_scene(category, 4, 256, reference=True).alpha
        filled = alpha > 0.5
        # a hole: background pixels enclosed by the object (not reachable from the border)
        import cv2

        background = (~filled).astype(np.uint8)
        count, labels = cv2.connectedComponents(background, connectivity=4)
        border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
        assert set(range(1, count)) - border, f"{category} has no enclosed hole"


def test_reference_scenes_keep_tokens_on_the_demo_models_grid():
    """The demo model works at 128 px: an 8 x 8 token grid; every reference scene keeps a whole-cell token."""
    for category in CATEGORIES:
        for seed in range(10_000, 10_004):
            alpha = torch.from_numpy(render_scene(category, seed, 128, reference=True).alpha)
            assert pool_token_mask(alpha, 8, 1.0).any(), (category, seed)


def test_unknown_category_and_tiny_size_are_refused():
    with pytest.raises(ValueError, match="unknown category 'cat'; expected one of star, ring"):
        render_scene("cat", 0)
    with pytest.raises(ValueError, match="at least 32 px"):
        render_scene("star", 0, 16)


def test_dataset_writer_writes_the_icm57_layout(tmp_path):
    split = SyntheticSplit(3, size=64, first_seed=100, references=1, categories=("star", "ring"))
    groups_file = write_synthetic_dataset(tmp_path / "set", split)
    assert json.loads(groups_file.read_text()) == {"star": ["star_000", "star_001", "star_002"],
                                                   "ring": ["ring_000", "ring_001", "ring_002"]}  # fmt: skip
    dataset = load_dataset(tmp_path / "set")
    assert sorted(group.name for group in dataset.groups) == ["ring", "star"]
    scene = render_scene("ring", 101, 64)
    image, alpha = read_image(tmp_path / "set" / "image" / "ring_001.png"), read_mask(tmp_path / "set" / "alpha" / "ring_001.png")
    assert torch.allclose(image, torch.from_numpy(scene.image).permute(2, 0, 1), atol=0.5 / 255 + 1e-6)
    assert torch.allclose(alpha, torch.from_numpy(scene.alpha), atol=0.5 / 255 + 1e-6)
    reference = render_scene("ring", 100, 64, reference=True)
    assert torch.allclose(read_mask(tmp_path / "set" / "alpha" / "ring_000.png"), torch.from_numpy(reference.alpha), atol=0.5 / 255 + 1e-6)
    assert stem("ring", 1) == "ring_001"


def test_dataset_writer_never_touches_an_existing_folder(tmp_path):
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="already exists"):
        write_synthetic_dataset(existing, SyntheticSplit(1, size=64))
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left behind
