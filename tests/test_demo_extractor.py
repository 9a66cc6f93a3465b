"""The demo model's constructed feature extractor: the tiny SD layout, and features that keep colour and texture
per token so a reference can say "this thing" (what the random tiny extractor cannot)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icm_core.config import ExtractionConfig
from icm_core.features.backend import extract_features
from icm_core.modeling.similarity import pool_token_mask
from icm_core.synthetic import CATEGORIES, render_scene
from icm_core.synthetic.demo_extractor import GAIN, build_demo_backend
from icm_core.tiny import build_tiny_backend

EXTRACTION = ExtractionConfig(image_size=128, ensemble_size=2)


@pytest.fixture(scope="module")
def backend():
    return build_demo_backend(seed=0)


def _flat(rgb: tuple[float, float, float], size: int = 128) -> torch.Tensor:
    """``[1, 3, S, S]`` image in [-1, 1] of one colour given in [0, 1]."""
    return (torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, size, size) * 2 - 1).clone()


def _halves(left: tuple[float, float, float], right: tuple[float, float, float]) -> torch.Tensor:
    image = _flat(left)
    image[..., 64:] = _flat(right)[..., 64:]
    return image


def test_same_architecture_as_the_tiny_model():
    demo, tiny = build_demo_backend(seed=0), build_tiny_backend(seed=0)
    for ours, theirs in ((demo.unet, tiny.unet), (demo.vae, tiny.vae)):
        shapes = {name: tuple(p.shape) for name, p in ours.named_parameters()}
        assert shapes == {name: tuple(p.shape) for name, p in theirs.named_parameters()}
    assert demo.feature_channels == tiny.feature_channels == 48


def test_building_is_deterministic(backend):
    again = build_demo_backend(seed=0)
    for (name, first), (_, second) in zip(backend.unet.named_parameters(), again.unet.named_parameters()):
        assert torch.equal(first, second), name
    other = build_demo_backend(seed=1)
    assert not torch.equal(other.unet.conv_in.weight, backend.unet.conv_in.weight)


@pytest.mark.parametrize("rgb", [(0.5, 0.5, 0.5), (0.9, 0.2, 0.1), (0.2, 0.4, 0.9), (0.9, 0.8, 0.2)])
def test_latent_is_the_colour_transform_of_the_pixels(backend, rgb):
    r, g, b = rgb
    expected = GAIN * torch.tensor([(r + g + b) / 3 - 0.5, r - g, (r + g) / 2 - b, 0.0])
    posterior = backend.latent_distribution(_flat(rgb))
    inner = posterior.mean[0, :, 2:-2, 2:-2]  # away from the zero padding of the 3x3 convolutions
    assert inner.shape[0] == 4
    assert torch.allclose(inner.mean(dim=(1, 2)), expected, atol=2e-3)
    assert float(inner.std(dim=(1, 2)).max()) < 1e-3  # a flat colour gives a flat latent
    assert float(posterior.std.max()) < 1e-5  # the posterior is (nearly) a point


def test_contrast_channel_marks_textured_regions(backend):
    image = _flat((0.5, 0.5, 0.5))
    checker = ((torch.arange(128)[:, None] // 2 + torch.arange(128)[None, :] // 2) % 2).float()
    image[:, :, :, :64] += 0.4 * (checker[:, :64] - 0.5)
    latent = backend.latent_distribution(image).mean[0, 3]
    textured, flat = latent[2:-2, 2:6].mean(), latent[2:-2, 10:14].mean()
    assert float(textured) > float(flat) + 1.0


def test_tokens_of_the_same_colour_are_alike_and_others_are_not(backend):
    features = extract_features(backend, _halves((0.9, 0.2, 0.1), (0.2, 0.4, 0.9)), EXTRACTION, 0, True)
    tokens = F.normalize(features.high[0].flatten(1).T, dim=1).view(8, 8, -1)
    red, blue = tokens[:, 1], tokens[:, 6]  # columns well inside each half
    assert float((red @ red.T).min()) > 0.9
    assert float((red @ blue.T).max()) < 0.5


def test_self_attention_stays_within_the_same_colour(backend):
    features = extract_features(backend, _halves((0.9, 0.2, 0.1), (0.2, 0.4, 0.9)), EXTRACTION, 0, True)
    attention = features.attention_high[0].reshape(8, 8, 8, 8)  # [query y, x, key y, x]
    on_own_half = attention[:, :3, :, :4].sum(dim=(2, 3))  # queries in the red half, keys in the red half
    assert float(on_own_half.min()) > 0.8


def _reference_similarity_auc(backend, category: str) -> float:
    """ROC AUC of a reference's best token similarity: the category's cells vs cells without it, 4 targets."""
    reference = render_scene(category, 10000, 128, reference=True)
    image = lambda scene: torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1)))[None] * 2 - 1
    feature = extract_features(backend, image(reference), EXTRACTION, 0, False).high[0]
    picked = pool_token_mask(torch.from_numpy(reference.alpha), 8, 1.0)
    tokens = F.normalize(feature[:, picked].T, dim=1)
    positive, negative = [], []
    for seed in range(10004, 10008):
        target = render_scene(category, seed, 128)
        keys = F.normalize(extract_features(backend, image(target), EXTRACTION, 0, False).high[0].flatten(1).T, dim=1)
        best = (keys @ tokens.T).max(dim=1).values
        coverage = F.adaptive_avg_pool2d(torch.from_numpy(target.alpha)[None, None], 8).flatten()
        positive += best[coverage > 0.5].tolist()
        negative += best[coverage < 0.05].tolist()
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def test_reference_tokens_find_their_category_far_better_than_the_random_extractor(backend):
    demo = np.mean([_reference_similarity_auc(backend, category) for category in CATEGORIES])
    random = np.mean([_reference_similarity_auc(build_tiny_backend(seed=0), category) for category in CATEGORIES[:4]])
    assert demo > 0.85, demo  # measured 0.88 (random extractor: 0.68)
    assert random < 0.8, random


def test_the_command_line_builds_it_with_tiny_extractor_demo(tmp_path, capsys):
    from icm_core.commands import cli
    from icm_core.commands.options import build_engine
    from tests.cli_helpers import cli_error_line

    parser = cli.build_parser()
    demo = build_engine(parser.parse_args(["evaluate", str(tmp_path), "--out", str(tmp_path), "--tiny", "--tiny-extractor", "demo"]))
    random = build_engine(parser.parse_args(["evaluate", str(tmp_path), "--out", str(tmp_path), "--tiny"]))
    expected = build_demo_backend(seed=0)
    assert torch.equal(demo.backend.unet.conv_in.weight, expected.unet.conv_in.weight)
    assert torch.equal(random.backend.unet.conv_in.weight, build_tiny_backend(seed=0).unet.conv_in.weight)
    assert demo.extraction.ensemble_size == 2 and demo.decoder.config.image_size == 128
    line = cli_error_line(capsys, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--tiny-extractor", "demo"])
    assert line == "error: --tiny-extractor demo chooses the weights of --tiny's model; add --tiny."


def test_weights_digest_ignores_header_order_but_not_a_weight(tmp_path):
    from safetensors.torch import save_file

    from icm_core.synthetic.demo_model import weights_digest

    tensors = {"b": torch.arange(6.0).view(2, 3), "a": torch.tensor(3, dtype=torch.int64)}
    save_file(tensors, str(tmp_path / "one.safetensors"), metadata={"x": "1", "y": "2"})
    save_file(dict(reversed(tensors.items())), str(tmp_path / "two.safetensors"), metadata={"y": "2", "x": "1"})
    changed = dict(tensors, b=tensors["b"].clone().index_fill_(1, torch.tensor([2]), 7.0))
    save_file(changed, str(tmp_path / "three.safetensors"))
    one, two, three = (weights_digest(tmp_path / f"{n}.safetensors") for n in ("one", "two", "three"))
    assert one == two != three


def test_regeneration_is_reproducible_and_never_touches_an_existing_folder(tmp_path, monkeypatch):
    """The recipe's command on a two-step recipe: same tensors twice, a refused existing --work, atomic --install."""
    from dataclasses import replace

    from icm_core.synthetic import demo_model
    from icm_core.synthetic.datasets import SyntheticSplit
    from icm_core.synthetic.demo_model import RECIPE, regenerate, weights_digest

    small = replace(
        RECIPE, split=SyntheticSplit(3, size=128, first_seed=0, references=1, categories=("star", "leaf")),
        steps=2, warmup_steps=1, cooldown_steps=1, batch_size=2,
    )  # fmt: skip
    first, second = regenerate(tmp_path / "a", small), regenerate(tmp_path / "b", small)
    assert weights_digest(first) == weights_digest(second)
    assert weights_digest(first) != weights_digest(demo_model.DEMO_DECODER)

    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match="already exists"):
        regenerate(kept, small)
    assert [p.name for p in kept.iterdir()] == ["notes.txt"] and (kept / "notes.txt").read_text() == "the user's"

    shipped = tmp_path / "assets" / "demo_decoder.safetensors"
    shipped.parent.mkdir()
    shipped.write_bytes(b"old")
    monkeypatch.setattr(demo_model, "DEMO_DECODER", shipped)
    monkeypatch.setattr(demo_model, "RECIPE", small)
    assert demo_model._main(["--work", str(tmp_path / "c"), "--install"]) == 0
    assert weights_digest(shipped) == weights_digest(first)
    assert sorted(p.name for p in shipped.parent.iterdir()) == ["demo_decoder.safetensors"]
