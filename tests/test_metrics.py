"""Tests of icm_core.metrics (SAD, MSE, Grad, Conn). scipy is used here only as an independent cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from icm_core.metrics import (
    MattingErrors,
    compute_all,
    compute_conn,
    compute_grad,
    compute_mse,
    compute_sad,
    unknown_region,
)

SIGMA = 1.4

# 4x4 example: differences 0.5 at (0, 1), 0.25 at (1, 1), -0.25 at (2, 2); dyadic so every value is exact.
PRED = np.array(
    [[0.0, 0.5, 1.0, 1.0], [0.0, 0.25, 1.0, 1.0], [0.0, 0.0, 0.75, 1.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
)
GT = np.array(
    [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float64
)


def _mask(shape: tuple[int, int], pixels: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for y, x in pixels:
        m[y, x] = True
    return m


def _smooth_matte(h: int = 24, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(1.6 - np.hypot(yy - h / 2, xx - w / 2) / 6.0, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- SAD / MSE


def test_sad_mse_hand_computed_whole_image() -> None:
    assert compute_sad(PRED, GT) == pytest.approx(1.0 / 1000)
    assert compute_mse(PRED, GT) == pytest.approx((0.25 + 0.0625 + 0.0625) / 16)


def test_sad_mse_hand_computed_region() -> None:
    region = _mask((4, 4), [(0, 0), (1, 1), (2, 2)])  # skips the 0.5 difference at (0, 1)
    assert compute_sad(PRED, GT, region) == pytest.approx(0.5 / 1000)
    assert compute_mse(PRED, GT, region) == pytest.approx(0.125 / 3)  # divided by 3 region pixels, not 16
    all_diffs = _mask((4, 4), [(0, 1), (1, 1), (2, 2), (3, 3)])
    assert compute_sad(PRED, GT, all_diffs) == pytest.approx(1.0 / 1000)
    assert compute_mse(PRED, GT, all_diffs) == pytest.approx(0.375 / 4)


def test_mse_only_counts_region_pixels() -> None:
    pred = np.zeros((10, 10))
    gt = np.zeros((10, 10))
    gt[0, :5] = 1.0  # 5 wrong pixels
    region = np.zeros((10, 10), dtype=bool)
    region[0, :] = True  # 10 region pixels, 5 of them wrong
    assert compute_mse(pred, gt, region) == pytest.approx(0.5)
    assert compute_mse(pred, gt) == pytest.approx(0.05)
    assert compute_sad(pred, gt, region) == pytest.approx(0.005)


def test_numeric_01_region_equals_bool_region() -> None:
    region = _mask((4, 4), [(0, 0), (1, 1), (2, 2)])
    assert compute_sad(PRED, GT, region.astype(np.uint8)) == compute_sad(PRED, GT, region)
    assert compute_mse(PRED, GT, torch.from_numpy(region)) == compute_mse(PRED, GT, region)


def test_sad_scales_with_area_mse_does_not() -> None:
    rng = np.random.default_rng(0)
    pred, gt = rng.random((9, 7)), rng.random((9, 7))
    tiled_pred, tiled_gt = np.tile(pred, (2, 2)), np.tile(gt, (2, 2))
    assert compute_sad(tiled_pred, tiled_gt) == pytest.approx(4 * compute_sad(pred, gt), rel=1e-12)
    assert compute_mse(tiled_pred, tiled_gt) == pytest.approx(compute_mse(pred, gt), rel=1e-12)


def test_uint8_inputs_are_divided_by_255() -> None:
    pred8 = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    gt8 = np.array([[0, 0], [0, 102]], dtype=np.uint8)
    assert compute_sad(pred8, gt8) == pytest.approx((1.0 + 0.2) / 1000)
    assert compute_mse(pred8, gt8) == pytest.approx((1.0 + 0.04) / 4)
    # uint8 and float / 255 give the same results for all metrics, numpy or torch
    rng = np.random.default_rng(1)
    p8, g8 = rng.integers(0, 256, (12, 14), dtype=np.uint8), rng.integers(0, 256, (12, 14), dtype=np.uint8)
    ref = compute_all(p8 / 255.0, g8 / 255.0)
    for got in (compute_all(p8, g8), compute_all(torch.from_numpy(p8), torch.from_numpy(g8))):
        assert got.sad == pytest.approx(ref.sad, rel=1e-12)
        assert got.mse == pytest.approx(ref.mse, rel=1e-12)
        assert got.grad == pytest.approx(ref.grad, rel=1e-12)
        assert got.conn == pytest.approx(ref.conn, rel=1e-12)


def test_perfect_prediction_is_all_zero() -> None:
    gt = _smooth_matte()
    errors = compute_all(gt.copy(), gt)
    assert errors == MattingErrors(sad=0.0, mse=0.0, grad=0.0, conn=0.0)
    region = unknown_region(np.where(gt == 0, 0, np.where(gt == 1, 255, 128)).astype(np.uint8))
    assert compute_all(torch.from_numpy(gt).float(), torch.from_numpy(gt).float(), region).as_dict() == {
        "sad": 0.0,
        "mse": 0.0,
        "grad": 0.0,
        "conn": 0.0,
    }


def test_compute_all_matches_individual_metrics() -> None:
    rng = np.random.default_rng(2)
    gt = _smooth_matte()
    pred = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
    region = rng.random(gt.shape) < 0.5
    errors = compute_all(pred, gt, region)
    assert errors.sad == compute_sad(pred, gt, region)
    assert errors.mse == compute_mse(pred, gt, region)
    assert errors.grad == compute_grad(pred, gt, region)
    assert errors.conn == compute_conn(pred, gt, region)
    assert min(errors.as_dict().values()) > 0
    with pytest.raises(AttributeError):
        errors.sad = 0.0  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------- Grad


def _reference_kernel_2d(sigma: float, epsilon: float = 1e-2) -> np.ndarray:
    """The evaluation code's kernel, written out element by element: h[i, j] = G(i) G'(j) / ||h||_F."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon)))
    size = 2 * half + 1
    h = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            u, v = i - half, j - half
            gu = math.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
            gv = math.exp(-(v**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
            h[i, j] = gu * (-v * gv / sigma**2)
    return h / math.sqrt((h**2).sum())


def _reference_grad(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    hx = _reference_kernel_2d(SIGMA)

    def amp(a: np.ndarray) -> np.ndarray:
        return np.hypot(ndi.convolve(a, hx, mode="nearest"), ndi.convolve(a, hx.T, mode="nearest"))

    err = (amp(pred) - amp(gt)) ** 2
    return float((err if region is None else err[region]).sum() / 1000)


def test_reference_kernel_half_size_is_4_for_sigma_1_4() -> None:
    assert _reference_kernel_2d(SIGMA).shape == (9, 9)


def test_grad_constant_images_is_zero() -> None:
    assert compute_grad(np.full((20, 30), 0.3), np.full((20, 30), 0.7)) == pytest.approx(0.0, abs=1e-15)
    assert compute_grad(np.zeros((5, 5)), np.ones((5, 5))) == pytest.approx(0.0, abs=1e-15)


def test_grad_vertical_step_edge_explicit_formula() -> None:
    h, w, edge = 16, 20, 10
    gt = np.zeros((h, w))
    gt[:, edge:] = 1.0
    pred = np.full((h, w), 0.5)  # constant: zero gradient
    # Separable kernel: smooth (along y) has L2-normalised Gaussian weights, deriv (along x) L2-normalised x*G(x).
    x = np.arange(-4, 5, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * SIGMA**2))
    smooth_sum = g.sum() / np.linalg.norm(g)
    deriv = x * g / np.linalg.norm(x * g)
    # x-derivative of the step at column j: sum of deriv taps landing on columns >= edge; y-derivative is 0.
    gx = np.array([deriv[(j + x).astype(int) >= edge].sum() for j in range(w)]) * smooth_sum
    expected = h * float((gx**2).sum()) / 1000
    assert expected > 0
    assert compute_grad(pred, gt) == pytest.approx(expected, rel=1e-10)
    assert compute_grad(gt, pred) == pytest.approx(expected, rel=1e-10)
    # only the columns next to the edge contribute
    region = np.zeros((h, w), dtype=bool)
    region[:, edge - 1 : edge + 1] = True
    expected_region = h * float(gx[edge - 1] ** 2 + gx[edge] ** 2) / 1000
    assert compute_grad(pred, gt, region) == pytest.approx(expected_region, rel=1e-10)


def test_grad_matches_scipy_gaussian_filter_up_to_normalisation() -> None:
    rng = np.random.default_rng(3)
    gt = _smooth_matte()
    pred = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
    x = np.arange(-4, 5, dtype=np.float64)
    e = np.exp(-(x**2) / (2 * SIGMA**2))
    # scipy normalises G to sum 1 and differentiates it; the evaluation kernels are L2-normalised instead.
    scale = (e.sum() / np.linalg.norm(e)) * (SIGMA**2 * e.sum() / np.linalg.norm(x * e))

    def amp(a: np.ndarray) -> np.ndarray:
        gx = ndi.gaussian_filter(a, SIGMA, order=(0, 1), mode="nearest", radius=4)
        gy = ndi.gaussian_filter(a, SIGMA, order=(1, 0), mode="nearest", radius=4)
        return scale * np.hypot(gx, gy)

    expected = float(((amp(pred) - amp(gt)) ** 2).sum() / 1000)
    assert compute_grad(pred, gt) == pytest.approx(expected, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.floats(0, 1)),
    st.data(),
)
def test_grad_matches_reference_2d_convolution(gt: np.ndarray, data: st.DataObject) -> None:
    pred = data.draw(hnp.arrays(np.float64, gt.shape, elements=st.floats(0, 1)))
    region = data.draw(hnp.arrays(np.bool_, gt.shape))
    assert compute_grad(pred, gt) == pytest.approx(_reference_grad(pred, gt), rel=1e-9, abs=1e-15)
    assert compute_grad(pred, gt, region) == pytest.approx(_reference_grad(pred, gt, region), rel=1e-9, abs=1e-15)


# ----------------------------------------------------------------------------------------------- Conn


def _reference_conn(
    pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None, *, include_background: bool = False
) -> float:
    """Straight loop over thresholds with scipy labelling (4-connectivity, the default cross structure).

    ``include_background=True`` reproduces the widely copied ``argmax(bincount(labels))`` bug.
    """
    l_map = -np.ones(pred.shape)
    for i in range(1, 11):
        labels, _ = ndi.label((pred >= i / 10) & (gt >= i / 10))
        counts = np.bincount(labels.ravel())
        if include_background:
            omega = labels == np.argmax(counts)
        elif counts.size > 1:
            omega = labels == 1 + np.argmax(counts[1:])
        else:
            omega = np.zeros(pred.shape, dtype=bool)
        l_map[(l_map == -1) & ~omega] = (i - 1) / 10
    l_map[l_map == -1] = 1.0

    def phi(a: np.ndarray) -> np.ndarray:
        d = a - l_map
        return 1 - d * (d >= 0.15)

    err = np.abs(phi(pred) - phi(gt))
    return float((err if region is None else err[region]).sum() / 1000)


def test_conn_hand_computed_row() -> None:
    # min(pred, gt) = [1, 0.8, 0.1, 0.2, 0]. t=0.1: source {0,1,2,3}; t=0.2: {0,1} (pixel 3 is cut off);
    # t=0.9: {0}; t=1: {0}. So l = [1, 0.8, 0.1, 0.1, 0].
    # pred d = [0, 0, 0, 0.5, 0] -> phi [1, 1, 1, 0.5, 1]; gt d = [0, 0, 0.4, 0.1, 0] -> phi [1, 1, 0.6, 1, 1].
    pred = np.array([[1.0, 0.8, 0.1, 0.6, 0.0]])
    gt = np.array([[1.0, 0.8, 0.5, 0.2, 0.0]])
    assert compute_conn(pred, gt) == pytest.approx(0.9 / 1000)
    assert compute_conn(pred, gt, np.array([[False, False, True, False, False]])) == pytest.approx(0.4 / 1000)
    assert compute_conn(pred, gt, np.array([[True, True, False, True, True]])) == pytest.approx(0.5 / 1000)
    assert _reference_conn(pred, gt) == pytest.approx(0.9 / 1000)


def test_conn_background_larger_than_foreground() -> None:
    # 5x5: a 2x2 foreground blob (both 1) and a stray pred pixel of 0.5 where gt is 0. At every threshold the
    # foreground of pred&gt is just the blob (4 px) while the background has 21 px.
    gt = np.zeros((5, 5))
    gt[:2, :2] = 1.0
    pred = gt.copy()
    pred[4, 4] = 0.5
    # Correct: source = blob, l = 1 on it and 0 elsewhere; only the stray pixel differs: phi_pred 0.5 vs phi_gt 1.
    assert compute_conn(pred, gt) == pytest.approx(0.5 / 1000)
    assert _reference_conn(pred, gt) == pytest.approx(0.5 / 1000)
    # The "argmax including label 0" variant takes the background as source region and reports 0.
    buggy = _reference_conn(pred, gt, include_background=True)
    assert buggy == pytest.approx(0.0)
    assert compute_conn(pred, gt) != pytest.approx(buggy)


def test_conn_uses_4_connectivity() -> None:
    # Blob A (2x2, top-left) touches blob B {(2,2), (2,3), (3,3)} only diagonally. With 4-connectivity the source
    # is A at every threshold, so B gets l = 0 and pred's 0.9 at (3,3) gives phi 0.1 vs gt's 0: error 0.1.
    # (With 8-connectivity (3,3) would get l = 0.9 and the error would be 0.)
    gt = np.zeros((4, 4))
    gt[:2, :2] = 1.0
    for y, x in [(2, 2), (2, 3), (3, 3)]:
        gt[y, x] = 1.0
    pred = gt.copy()
    pred[3, 3] = 0.9
    assert compute_conn(pred, gt) == pytest.approx(0.1 / 1000)


def test_conn_empty_intersection() -> None:
    # pred and gt never overlap: l = 0 everywhere, so the error is the SAD of the parts above theta.
    pred = np.zeros((3, 3))
    gt = np.zeros((3, 3))
    pred[0, 0], gt[2, 2], gt[1, 1] = 0.6, 0.1, 0.3
    assert compute_conn(pred, gt) == pytest.approx((0.6 + 0.3) / 1000)


@pytest.mark.parametrize(
    ("a", "b"),
    [((0, 2), (2, 0)), ((1, 0), (1, 2))],  # A first in row-major order (column-major would put B first in case 1)
)
def test_conn_tie_goes_to_first_component_in_row_major_order(a: tuple[int, int], b: tuple[int, int]) -> None:
    # Two 1-px components tie at every t <= 0.5. A: pred = gt = 1 (never contributes). B: pred 0.5, gt 0.6.
    # If A is the source, B gets l = 0: pred d 0.5 (phi 0.5) vs gt d 0.6 (phi 0.4) -> error 0.1.
    # If B were the source, l_B = 0.5: pred d 0, gt d 0.1 < theta -> both phi 1 -> error 0.
    pred = np.zeros((3, 3))
    gt = np.zeros((3, 3))
    pred[a] = gt[a] = 1.0
    pred[b], gt[b] = 0.5, 0.6
    assert compute_conn(pred, gt) == pytest.approx(0.1 / 1000)
    assert _reference_conn(pred, gt) == pytest.approx(0.1 / 1000)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 10), st.integers(1, 10)),
        elements=st.integers(0, 20).map(lambda k: k / 20),
    ),
    st.data(),
)
def test_conn_matches_reference_loop(gt: np.ndarray, data: st.DataObject) -> None:
    pred = data.draw(hnp.arrays(np.float64, gt.shape, elements=st.integers(0, 20).map(lambda k: k / 20)))
    region = data.draw(hnp.arrays(np.bool_, gt.shape))
    assert compute_conn(pred, gt) == pytest.approx(_reference_conn(pred, gt), abs=1e-12)
    assert compute_conn(pred, gt, region) == pytest.approx(_reference_conn(pred, gt, region), abs=1e-12)


# ----------------------------------------------------------------------------------------------- properties

_alpha_pair = st.tuples(st.integers(1, 10), st.integers(1, 10)).flatmap(
    lambda shape: st.tuples(
        hnp.arrays(np.float64, shape, elements=st.floats(0, 1)),
        hnp.arrays(np.float64, shape, elements=st.floats(0, 1)),
        hnp.arrays(np.bool_, shape),
    )
)


@settings(max_examples=60, deadline=None)
@given(_alpha_pair)
def test_properties_nonnegative_symmetric_zero_on_identical(arrays: tuple[np.ndarray, ...]) -> None:
    pred, gt, region = arrays
    for r in (None, region):
        ab = compute_all(pred, gt, r)
        ba = compute_all(gt, pred, r)
        assert min(ab.as_dict().values()) >= 0
        # SAD and MSE are symmetric by definition; Grad and Conn are too (l depends on pred & gt symmetrically).
        assert ab == ba
        assert compute_all(pred, pred.copy(), r) == MattingErrors(0.0, 0.0, 0.0, 0.0)
    assert compute_sad(pred, gt, region) <= compute_sad(pred, gt) + 1e-15


# ----------------------------------------------------------------------------------------------- trimap / validation


def test_unknown_region_uint8_and_float() -> None:
    trimap = np.array([[0, 128, 255], [128, 0, 255]], dtype=np.uint8)
    expected = np.array([[False, True, False], [True, False, False]])
    np.testing.assert_array_equal(unknown_region(trimap), expected)
    np.testing.assert_array_equal(unknown_region(trimap / 255.0), expected)
    np.testing.assert_array_equal(unknown_region(torch.from_numpy(trimap)), expected)
    np.testing.assert_array_equal(unknown_region(torch.tensor([[0.0, 0.5, 1.0], [0.5, 0.0, 1.0]])), expected)
    with pytest.raises(ValueError, match="0, 1"):
        unknown_region(np.array([[0.0, 2.0]]))
    with pytest.raises(ValueError, match="2-D"):
        unknown_region(np.zeros((2, 2, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("pred", "gt", "match"),
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), r"expected pred shape == gt shape \(4, 5\), got \(4, 4\)"),
        (np.full((2, 2), 1.5), np.zeros((2, 2)), r"expected float values in \[0, 1\], got range \[1.5, 1.5\]"),
        (np.zeros((2, 2)), np.full((2, 2), -0.1), r"gt: expected float values in \[0, 1\]"),
        (np.array([[0.0, np.nan]]), np.zeros((1, 2)), "pred: expected finite values in .*got NaN"),
        (np.array([[0.0, np.inf]]), np.zeros((1, 2)), r"got range \[0, inf\]"),
        (np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), r"expected a non-empty 2-D \(H, W\) array, got shape \(1, 2, 2\)"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "non-empty"),
        (np.zeros((2, 2), dtype=np.int32), np.zeros((2, 2)), "expected dtype uint8 .* got int32"),
    ],
)
def test_invalid_inputs_raise(pred: np.ndarray, gt: np.ndarray, match: str) -> None:
    for fn in (compute_sad, compute_mse, compute_grad, compute_conn, compute_all):
        with pytest.raises(ValueError, match=match):
            fn(pred, gt)


def test_invalid_region_and_parameters_raise() -> None:
    a = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"region: expected shape \(3, 3\).*got \(3, 4\)"):
        compute_sad(a, a, np.ones((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="unknown_region"):
        compute_sad(a, a, np.full((3, 3), 128, dtype=np.uint8))  # a trimap is not a region mask
    with pytest.raises(ValueError, match="step"):
        compute_conn(a, a, step=0.3)
    with pytest.raises(ValueError, match="sigma"):
        compute_grad(a, a, sigma=-1.0)


def test_empty_region_gives_zero() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    assert compute_all(PRED, GT, empty) == MattingErrors(0.0, 0.0, 0.0, 0.0)


def test_torch_float_inputs() -> None:
    pred = torch.from_numpy(PRED).to(torch.float32)
    gt = torch.from_numpy(GT).to(torch.bfloat16)
    assert compute_sad(pred, gt) == pytest.approx(1.0 / 1000)
    assert compute_mse(pred.requires_grad_(), gt) == pytest.approx(0.375 / 16)
