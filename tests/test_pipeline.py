"""Pipeline behaviour on the tiny untrained engine: shapes, determinism, reference reuse, clear errors."""

from __future__ import annotations

import pytest
import torch

from icm_core.config import ExtractionConfig
from icm_core.pipeline import EmptyReferenceError, IconMatting, ReferenceContext
from icm_core.tiny import build_tiny_backend, build_tiny_decoder, build_tiny_engine


@pytest.fixture(scope="module")
def engine() -> IconMatting:
    return build_tiny_engine(seed=0)


def _scene(seed: int, height: int = 128, width: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(3, height, width, generator=generator) * 0.3
    mask = torch.zeros(height, width)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1.0
    image[:, mask > 0] += 0.6
    return image.clamp(0, 1), mask


@pytest.fixture(scope="module")
def context(engine) -> ReferenceContext:
    image, mask = _scene(0)
    return engine.encode_reference(image, mask, seed=0)


def test_context_holds_pooled_tokens(engine, context):
    # A centred half-size square covers 4x4 whole cells of the 8x8 grid at 128 px.
    assert context.token_masks.shape == (1, 8, 8)
    assert int(context.token_masks.sum()) == 16 == context.num_tokens
    assert context.tokens.shape == (16, 48)
    assert context.reference_sizes == ((128, 128),)


def test_alpha_has_each_input_size_and_order(engine, context):
    targets = [_scene(1, 96, 200)[0], _scene(2, 300, 70)[0], _scene(3, 128, 128)[0]]
    alphas = engine.matte(context, targets, batch_size=2)
    assert [tuple(a.shape) for a in alphas] == [(96, 200), (300, 70), (128, 128)]
    for alpha in alphas:
        assert alpha.dtype == torch.float32 and 0.0 <= float(alpha.min()) and float(alpha.max()) <= 1.0
    single = engine.matte(context, targets[1])
    torch.testing.assert_close(single[0], alphas[1], atol=1e-5, rtol=0)


def test_same_seed_same_alpha_whatever_position_and_micro_batch(engine, context):
    targets = [_scene(i)[0] for i in range(1, 6)]
    reference = engine.matte(context, targets, seed=7, batch_size=5)
    reordered = engine.matte(context, targets[::-1], seed=7, batch_size=2)[::-1]
    one_by_one = engine.matte(context, targets, seed=7, batch_size=1)
    for a, b, c in zip(reference, reordered, one_by_one):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=0)
    other_seed = engine.matte(context, targets[:1], seed=8)
    assert float((other_seed[0] - reference[0]).abs().max()) > 1e-6


def test_reference_encoded_once_for_many_targets(engine):
    calls = []
    handle = engine.backend.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        image, mask = _scene(0)
        context = engine.encode_reference(image, mask)
        engine.matte(context, [_scene(i)[0] for i in range(1, 8)], batch_size=3)
    finally:
        handle.remove()
    ensemble = engine.extraction.ensemble_size
    assert calls == [1 * ensemble, 3 * ensemble, 3 * ensemble, 1 * ensemble]


def test_progress_reports_every_micro_batch(engine, context):
    seen = []
    engine.matte(context, [_scene(i)[0] for i in range(5)], batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_rgba_and_grey_inputs_are_accepted(engine, context):
    rgb = _scene(4)[0]
    rgba = torch.cat([rgb, torch.rand(1, 128, 128)])
    grey = rgb[:1]
    alphas = engine.matte(context, [rgb, rgba, grey])
    torch.testing.assert_close(alphas[0], alphas[1], atol=1e-6, rtol=0)
    assert alphas[2].shape == (128, 128)


def test_several_references_concatenate_tokens(engine):
    (image_a, mask_a), (image_b, mask_b) = _scene(0), _scene(5)
    single_a = engine.encode_reference(image_a, mask_a)
    single_b = engine.encode_reference(image_b, mask_b)
    both = engine.encode_reference([image_a, image_b], [mask_a, mask_b])
    assert both.num_tokens == single_a.num_tokens + single_b.num_tokens
    torch.testing.assert_close(both.tokens, torch.cat([single_a.tokens, single_b.tokens]))


def test_empty_roi_says_how_to_fix(engine):
    image, _ = _scene(0)
    thin = torch.zeros(128, 128)
    thin[60:62, 10:100] = 1.0  # a 2 px stroke covers no whole 16x16 block
    with pytest.raises(EmptyReferenceError, match="Widen the mask"):
        engine.encode_reference(image, thin)


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        (torch.rand(3, 128, 128), torch.ones(100, 128), "must have the image's exact size"),
        (torch.full((3, 128, 128), float("nan")), torch.ones(128, 128), "NaN or infinite"),
        (torch.rand(3, 40, 128), torch.ones(40, 128), "expected both sides >= 64"),
        (torch.rand(3, 128, 128) * 255, torch.ones(128, 128), r"expected floats in \[0, 1\]"),
        (torch.rand(5, 128, 128), torch.ones(128, 128), r"C in \(1, 3, 4\)"),
    ],
)
def test_bad_reference_inputs_fail_clearly(engine, image, mask, message):
    with pytest.raises(ValueError, match=message):
        engine.encode_reference(image, mask)


def test_target_errors_name_the_index(engine, context):
    good = _scene(1)[0]
    bad = torch.full((3, 128, 128), float("inf"))
    with pytest.raises(ValueError, match="target image 1"):
        engine.matte(context, [good, bad])


def test_decoder_width_must_match_unet():
    backend = build_tiny_backend()
    from icm_core.modeling.decoder import InContextDecoder
    from icm_core.config import DecoderConfig

    with pytest.raises(ValueError, match="decoder expects 1280-channel UNet features but the SD model gives 48"):
        IconMatting(backend, InContextDecoder(DecoderConfig(image_size=128)))
    with pytest.raises(ValueError, match="decoder works at 128px"):
        IconMatting(backend, build_tiny_decoder(image_size=128), ExtractionConfig(image_size=256))


def test_context_from_another_model_is_refused(engine, context):
    other = build_tiny_engine(seed=1)
    with pytest.raises(ValueError, match="encoded with another model"):
        other.matte(context, [_scene(1)[0]])
