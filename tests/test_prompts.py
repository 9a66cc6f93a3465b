"""Sparse prompts (points, scribbles), token-cell geometry, multi-reference and saved contexts."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icm_core.context_io import load_context, save_context
from icm_core.modeling.similarity import guidance_map, pool_token_mask, token_coverage, token_mask_to_image
from icm_core.pipeline import EmptyReferenceError, combine_contexts
from icm_core.prompts import ExpansionConfig, Point, expand_cells, parse_points, point_cells, scribble_cells
from icm_core.tiny import build_tiny_engine


def _block_attention(grid: int, block: int) -> torch.Tensor:
    """Each query attends uniformly to the cells of its own block x block tile, faintly to the rest."""
    rows = torch.arange(grid).repeat_interleave(grid)
    cols = torch.arange(grid).repeat(grid)
    tile = (rows // block) * grid + cols // block
    same = (tile[:, None] == tile[None, :]).float()
    attention = same + 1e-3 * torch.rand(grid * grid, grid * grid, generator=torch.Generator().manual_seed(0))
    return (attention / attention.sum(1, keepdim=True)).view(grid, grid, grid * grid)


def test_expansion_picks_exactly_the_attended_tile():
    attention = _block_attention(grid=8, block=2)
    token = 3 * 8 + 4  # cell (row 3, col 4): tile rows 2-3, cols 4-5
    selected = expand_cells(attention, torch.tensor([token]), config=ExpansionConfig(top_m=4))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:4, 4:6] = True
    assert torch.equal(selected, expected)


def test_relative_threshold_drops_weak_responses():
    attention = _block_attention(grid=8, block=2)
    selected = expand_cells(attention, torch.tensor([0]), config=ExpansionConfig(top_m=10, relative_threshold=0.5))
    assert int(selected.sum()) == 4  # the 4 cells of its tile; the other 6 of the top 10 are ~1000x weaker


def test_negative_points_remove_their_cells_and_dominated_responses():
    attention = _block_attention(grid=8, block=4)  # four 4x4 tiles
    positive = torch.tensor([0])  # tile rows 0-3, cols 0-3
    only_positive = expand_cells(attention, positive, config=ExpansionConfig(top_m=16))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = True
    assert torch.equal(only_positive, expected)
    # A negative click removes its own cell even inside the positive's tile (here it attends to another tile).
    attention.view(64, 64)[27] = attention.view(64, 64)[63]
    inside = expand_cells(attention, positive, torch.tensor([3 * 8 + 3]), ExpansionConfig(top_m=16))
    assert torch.equal(inside, expected & ~(torch.arange(64).view(8, 8) == 27))
    # A negative click in another tile removes nothing the positive reached on its own tile.
    far = expand_cells(attention, positive, torch.tensor([7 * 8 + 7]), ExpansionConfig(top_m=16))
    assert torch.equal(far, expected)
    # With a large top_m the positive leaks into the bottom-right tile; a negative there dominates and removes it.
    wide = expand_cells(attention, positive, config=ExpansionConfig(top_m=40))
    assert wide[4:, 4:].any()
    cleaned = expand_cells(attention, positive, torch.tensor([4 * 8 + 4]), ExpansionConfig(top_m=40))
    assert not cleaned[4:, 4:].any() and cleaned[:4, :4].all()


def test_points_map_to_cells_and_outside_points_fail():
    cells = point_cells([Point(0, 0), Point(299.9, 99.9), Point(150, 50)], size=(100, 300), grid=8)
    assert cells.tolist() == [0, 63, 4 * 8 + 4]
    with pytest.raises(ValueError, match=r"positive point 0 at \(x=300, y=10\) is outside the 300x100 px"):
        point_cells([Point(300, 10)], size=(100, 300), grid=8, what="positive point")


def test_scribble_touches_cells_with_any_coverage():
    scribble = torch.zeros(64, 64)
    scribble[10, 3:60] = 1.0  # a 1 px line through row 1 of the 8x8 grid
    assert sorted(scribble_cells(scribble, 8).tolist()) == list(range(8, 16))


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(64, 900), width=st.integers(64, 900), seed=st.integers(0, 2**16), grid=st.sampled_from([8, 48])
)
def test_expanded_mask_round_trips_to_the_same_cells(height, width, seed, grid):
    cells = torch.rand(grid, grid, generator=torch.Generator().manual_seed(seed)) > 0.7
    image_mask = token_mask_to_image(cells, (height, width))
    assert image_mask.shape == (height, width)
    assert torch.equal(pool_token_mask(image_mask, grid), cells)  # official whole-cell rule
    assert torch.equal(pool_token_mask(image_mask, grid, min_coverage=0.01), cells)


def test_coverage_is_the_official_block_pooling_at_native_size():
    mask = (torch.rand(128, 128, generator=torch.Generator().manual_seed(1)) > 0.2).float()
    blocks = torch.nn.functional.avg_pool2d(mask[None, None], 16)[0, 0]
    torch.testing.assert_close(token_coverage(mask, 8), blocks)


@given(st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_points_parser_never_fails_with_anything_but_value_error(text):
    try:
        points = parse_points(text)
    except ValueError:
        return
    assert all(isinstance(p, Point) for p in points)


@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)), max_size=8))
def test_points_parser_reads_kjnodes_json(pairs):
    text = json.dumps([{"x": x, "y": y, "label": 1} for x, y in pairs])
    assert parse_points(text) == tuple(Point(x, y) for x, y in pairs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[{'x': 1}]", "not valid JSON"),
        ('[{"x": 1}]', 'expected an object with "x" and "y"'),
        ('[{"x": "a", "y": 2}]', "must be numbers"),
        ('{"points": 3}', 'expected an object with "x" and "y"'),
        ("42", "expected a JSON list"),
    ],
)
def test_points_parser_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_points(text)


@pytest.fixture(scope="module")
def engine():
    return build_tiny_engine(seed=0)


def _reference(seed: int = 0) -> torch.Tensor:
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(seed)) * 0.3
    image[:, 40:90, 50:120] += 0.6
    return image.clamp(0, 1)


def test_single_point_gives_tokens_where_the_official_pooling_gives_none(engine):
    image = _reference()
    click = torch.zeros(128, 160)
    click[64, 80] = 1.0
    with pytest.raises(EmptyReferenceError):
        engine.encode_reference(image, click)
    expansion = engine.expand_prompt(image, positive=[Point(80, 64)], config=ExpansionConfig(top_m=5))
    assert 1 <= int(expansion.token_mask.sum()) <= 6
    assert expansion.prompt_cells.sum() == 1 and (expansion.prompt_cells & expansion.token_mask).any()
    context = engine.encode_reference(image, expansion.mask)  # the node chain: Expand -> Encode (official pooling)
    assert torch.equal(context.token_masks[0], expansion.token_mask)
    with pytest.raises(ValueError, match="empty prompt"):
        engine.expand_prompt(image)


def test_two_reference_guidance_is_the_sum_of_single_guidances(engine):
    mask_a = torch.zeros(128, 160)
    mask_a[40:90, 50:120] = 1
    context_a = engine.encode_reference(_reference(0), mask_a)
    context_b = engine.encode_reference(_reference(1), mask_a)
    both = combine_contexts(context_a, context_b)
    features = torch.randn(2, 48, 8, 8, generator=torch.Generator().manual_seed(3))
    norm = engine.decoder.token_norm
    with torch.no_grad():
        total = guidance_map(both.tokens, features, norm)
        parts = guidance_map(context_a.tokens, features, norm) + guidance_map(context_b.tokens, features, norm)
    torch.testing.assert_close(total, parts, atol=1e-5, rtol=0)
    assert both.num_tokens == context_a.num_tokens + context_b.num_tokens


def test_saved_context_round_trip_gives_identical_alphas(engine, tmp_path):
    mask = torch.zeros(128, 160)
    mask[40:90, 50:120] = 1
    context = engine.encode_reference(_reference(), mask)
    path = save_context(context, tmp_path / "ctx.safetensors", description="orange box")
    loaded = load_context(path)
    assert torch.equal(loaded.tokens, context.tokens) and torch.equal(loaded.token_masks, context.token_masks)
    assert (loaded.reference_sizes, loaded.fingerprint, loaded.prompt_kind) == (
        context.reference_sizes, context.fingerprint, context.prompt_kind)
    targets = [_reference(5), _reference(6)]
    for a, b in zip(engine.matte(context, targets), engine.matte(loaded, targets)):
        assert torch.equal(a, b)
    other = build_tiny_engine(seed=0, ensemble_size=3)  # same weights, another configuration
    with pytest.raises(ValueError, match="encoded with another model or configuration"):
        other.matte(loaded, targets)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match="is not a saved IconMatting reference context"):
        load_context(tmp_path / "weights.safetensors")
