"""Quality regression guard: the shipped demo model on the held-out synthetic scenes (``benchmarks/quality.py``).

The thresholds come from the measurements in ``docs/quality.md`` with margin: a change that makes the pipeline matte
worse (features, similarity, decoder, prompts, several references, refinement) fails here, even when every number
still matches the official code on random weights.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import quality

pytestmark = pytest.mark.slow  # ~2-4 min on 2 CPU cores; the default command (and CI) runs it

GUARDED = {
    "untrained": quality.Variant("model", "untrained", decoder="untrained"),
    "trained": quality.Variant("model", "trained"),
    "points": quality.Variant("prompt", "points", protocol={"prompt": "points", "top_m": 1}),
    "points_default_top_m": quality.Variant("prompt", "points", protocol={"prompt": "points"}),
    "four_references": quality.Variant("references", "4", protocol={"num_references": 4}),
    "refine_off_4x": quality.Variant("refinement", "off", rendering="4x"),
    "refine_on_4x": quality.Variant("refinement", "on", rendering="4x", protocol={"refine": True}),
}


@pytest.fixture(scope="module")
def sad(tmp_path_factory) -> dict[str, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yardstick = quality.Yardstick(tmp_path_factory.mktemp("quality") / "work")
        rows = quality.measure_with(yardstick, list(GUARDED.values()))
        right, wrong = quality.context_check(yardstick)
    finally:
        torch.set_num_threads(threads)
    assert all(row.targets == 64 for row in rows)
    return {name: row.errors.sad for name, row in zip(GUARDED, rows)} | {"right": right, "wrong": wrong}


def test_training_made_the_demo_model_at_least_five_times_better(sad):
    assert sad["trained"] * TRAINED_VS_UNTRAINED <= sad["untrained"], sad


def test_the_demo_model_mattes_in_context(sad):
    """A reference of another category makes the same targets clearly worse: the model mattes "this thing", not
    "the objects" (docs/quality.md, *in context*)."""
    assert sad["wrong"] >= WRONG_REFERENCE_VS_RIGHT * sad["right"], sad


def test_clicks_with_expansion_come_close_to_a_full_mask(sad):
    """Three clicks expanded by one cell each match the full mask; the default top-m (the real model's, tuned for a
    48 x 48 grid) adds a quarter of this 8 x 8 grid per click and costs a little."""
    assert sad["points"] <= POINTS_VS_MASK * sad["trained"], sad
    assert sad["points_default_top_m"] <= POINTS_DEFAULT_TOP_M_VS_MASK * sad["trained"], sad


def test_four_references_cost_little(sad):
    assert sad["four_references"] <= FOUR_REFERENCES_VS_ONE * sad["trained"], sad


def test_refinement_helps_at_four_times_the_model_size(sad):
    assert sad["refine_on_4x"] <= REFINEMENT_ON_VS_OFF * sad["refine_off_4x"], sad


# Measured ratios (docs/quality.md) and the limits used here, with margin for other CPUs and library versions.
TRAINED_VS_UNTRAINED = 5  # measured 9.9 (SAD 0.847 vs 8.363)
WRONG_REFERENCE_VS_RIGHT = 1.3  # measured 1.51 (0.847 right, 1.281 wrong)
POINTS_VS_MASK = 1.1  # measured 0.99 (3 clicks, top-m 1)
POINTS_DEFAULT_TOP_M_VS_MASK = 1.3  # measured 1.16 (3 clicks, top-m 16)
FOUR_REFERENCES_VS_ONE = 1.2  # measured 1.09 (the decoder saw 1-15 reference tokens in training, 4 references give more)
REFINEMENT_ON_VS_OFF = 1.0  # measured 0.981 (Grad 9.76 vs 11.33)
