"""Query-chunked attention: same numbers as plain attention, and the chunks really are bounded by ``chunk_bytes``."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from icm_core.features.attention import CPU_QUERY_ROWS, chunked_attention_with_probabilities

BATCH, HEADS, TOKENS, DIM = 3, 2, 50, 8
SCALE = DIM**-0.5
# Score-matrix ops: their outputs are the per-chunk score/probability buffers (and the attention output).
_SCORE_OPS = {"bmm", "mm", "matmul", "baddbmm", "mul", "div", "_softmax"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from intra-op threads, and on a busy machine they spin (10x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _inputs(batch=BATCH, heads=HEADS, tokens=TOKENS, dim=DIM):
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, heads, tokens, dim, generator=generator) for _ in range(3))


def _plain_attention(query, key, value, scale):
    """Unchunked softmax attention in float64: ``(output [B, H, N, d], head-mean probabilities [B, N, N])``."""
    weights = (query.double() @ key.double().transpose(-1, -2) * scale).softmax(dim=-1)
    return (weights @ value.double()).float(), weights.mean(dim=1).float()


class _ScoreBuffers(TorchDispatchMode):
    """Records the inputs of every softmax and the byte size of every score-matrix op's output."""

    def __init__(self) -> None:
        super().__init__()
        self.softmax_inputs: list[tuple[tuple[int, ...], torch.dtype]] = []
        self.largest_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name == "_softmax":
            self.softmax_inputs.append((tuple(args[0].shape), args[0].dtype))
        if name in _SCORE_OPS and isinstance(result, torch.Tensor):
            self.largest_bytes = max(self.largest_bytes, result.numel() * result.element_size())
        return result


def _run_recorded(query, key, value, chunk_bytes, per_row):
    with _ScoreBuffers() as recorder:
        output, probabilities = chunked_attention_with_probabilities(query, key, value, SCALE, chunk_bytes, per_row)
    return output, probabilities, recorder


def _row_bytes(per_row: bool) -> int:
    """fp32 bytes of one query's scores over all keys, for every head (and every batch row when batch-wide)."""
    return 4 * HEADS * TOKENS * (1 if per_row else BATCH)


def _expected_softmax_shapes(rows: int, per_row: bool) -> list[tuple[int, ...]]:
    steps = [min(rows, TOKENS - start) for start in range(0, TOKENS, rows)]
    if per_row:
        return [(1, HEADS, step, TOKENS) for _ in range(BATCH) for step in steps]
    return [(BATCH, HEADS, step, TOKENS) for step in steps]


# 1 query per chunk, chunks that do not divide 50 tokens (7, 16), one that does (25), and the whole matrix (50).
@pytest.mark.parametrize("rows", [1, 7, 16, 25, TOKENS])
@pytest.mark.parametrize("per_row", [True, False])
def test_chunked_equals_unchunked_reference(rows, per_row):
    query, key, value = _inputs()
    chunk_bytes = rows * _row_bytes(per_row) + (_row_bytes(per_row) // 2 if rows > 1 else 0)
    output, probabilities, recorder = _run_recorded(query, key, value, chunk_bytes, per_row)
    expected_output, expected_probabilities = _plain_attention(query, key, value, SCALE)
    torch.testing.assert_close(probabilities, expected_probabilities, atol=1e-6, rtol=0)
    torch.testing.assert_close(output, expected_output, atol=1e-5, rtol=0)
    assert probabilities.dtype == torch.float32 and probabilities.shape == (BATCH, TOKENS, TOKENS)
    assert [shape for shape, _ in recorder.softmax_inputs] == _expected_softmax_shapes(rows, per_row)
    assert {dtype for _, dtype in recorder.softmax_inputs} == {torch.float32}
    assert recorder.largest_bytes <= chunk_bytes, (recorder.largest_bytes, chunk_bytes)


@pytest.mark.parametrize("per_row", [True, False])
def test_small_chunks_really_bound_the_score_buffer(per_row):
    """A chunk budget of 3 queries: the whole score matrix would be ~17x larger than any buffer allowed."""
    query, key, value = _inputs()
    chunk_bytes = 3 * _row_bytes(per_row)
    _, _, recorder = _run_recorded(query, key, value, chunk_bytes, per_row)
    full_scores = BATCH * HEADS * TOKENS * TOKENS * 4
    assert full_scores > 16 * chunk_bytes
    assert recorder.largest_bytes <= chunk_bytes, (recorder.largest_bytes, chunk_bytes)
    assert len(recorder.softmax_inputs) == math.ceil(TOKENS / 3) * (BATCH if per_row else 1)


def test_cpu_default_is_per_row_and_bounded_by_chunk_bytes():
    """On CPU tensors the default steps one batch row at a time and still honours ``chunk_bytes``."""
    query, key, value = _inputs()
    chunk_bytes = 7 * _row_bytes(per_row=True)
    output, probabilities, recorder = _run_recorded(query, key, value, chunk_bytes, None)
    assert [shape for shape, _ in recorder.softmax_inputs] == _expected_softmax_shapes(7, per_row=True)
    assert recorder.largest_bytes <= chunk_bytes
    expected_output, expected_probabilities = _plain_attention(query, key, value, SCALE)
    torch.testing.assert_close(probabilities, expected_probabilities, atol=1e-6, rtol=0)


def test_per_row_steps_stay_cache_sized_under_a_large_budget():
    tokens = CPU_QUERY_ROWS * 2 + 44
    query, key, value = _inputs(batch=1, heads=1, tokens=tokens, dim=4)
    _, probabilities, recorder = _run_recorded(query, key, value, 1 << 30, True)
    steps = [shape[2] for shape, _ in recorder.softmax_inputs]
    assert steps == [CPU_QUERY_ROWS, CPU_QUERY_ROWS, 44]
    _, expected_probabilities = _plain_attention(query, key, value, SCALE)
    torch.testing.assert_close(probabilities, expected_probabilities, atol=1e-6, rtol=0)


@pytest.mark.parametrize("per_row", [True, False])
def test_a_budget_below_one_query_still_computes_one_query_per_step(per_row):
    query, key, value = _inputs()
    output, probabilities, recorder = _run_recorded(query, key, value, 1, per_row)
    assert [shape for shape, _ in recorder.softmax_inputs] == _expected_softmax_shapes(1, per_row)
    expected_output, expected_probabilities = _plain_attention(query, key, value, SCALE)
    torch.testing.assert_close(probabilities, expected_probabilities, atol=1e-6, rtol=0)
    torch.testing.assert_close(output, expected_output, atol=1e-5, rtol=0)
