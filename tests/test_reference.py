"""cnnx.reference: the textbook worked examples, hand-computed cases, and PyTorch as oracle."""

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given
from numpy.testing import assert_allclose, assert_array_equal

import _helpers as H
from cnnx import reference as R

WORKED = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "shared",
                      "worked_examples.json")
if not os.path.exists(WORKED):  # pragma: no cover - layout fallback
    WORKED = "/work/shared/worked_examples.json"

nan, inf = math.nan, math.inf

# the worked examples, inlined so the tests do not depend on an outside file
CONV_X = [[[0, 1, 1, 0, 2], [2, 2, 2, 2, 1], [1, 0, 0, 2, 0], [0, 1, 1, 0, 0], [1, 2, 0, 0, 2]],
          [[1, 0, 2, 2, 0], [0, 0, 0, 2, 0], [1, 2, 1, 2, 1], [1, 0, 0, 0, 0], [1, 2, 1, 1, 1]],
          [[2, 1, 2, 0, 0], [1, 0, 0, 1, 0], [0, 2, 1, 0, 1], [0, 1, 2, 2, 2], [2, 1, 0, 0, 1]]]
CONV_W = [[[[-1, 1, 0], [0, 1, 0], [0, 1, 1]],
           [[-1, -1, 0], [0, 0, 0], [0, -1, 0]],
           [[0, 0, -1], [0, 1, 0], [1, -1, -1]]],
          [[[1, 1, -1], [-1, -1, 1], [0, -1, 1]],
           [[0, 1, 0], [-1, 0, -1], [-1, 1, 0]],
           [[-1, 0, 0], [-1, 0, 1], [-1, 0, 0]]]]
CONV_B = [1, 0]
CONV_Y = [[6, 7, 5, 3, -1, -1, 2, -1, 4], [2, -5, -8, 1, -4, -4, 0, -5, -5]]

POOL_X = [[[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]],
          [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [3, 4, 5, 6]]]
POOL_Y = [[[6, 8], [3, 4]], [[5, 7], [9, 6]]]
POOL_IDX = [[[5, 7], [8, 15]], [[5, 7], [9, 15]]]
POOL_G = [[[1, 2], [2, 4]], [[3, 5], [8, 2]]]
POOL_GX = [[[0, 0, 0, 0], [0, 1, 0, 2], [2, 0, 0, 0], [0, 0, 0, 4]],
           [[0, 0, 0, 0], [0, 3, 0, 5], [0, 8, 0, 0], [0, 0, 0, 2]]]


def a(values, dtype=np.float64):
    return np.array(values, dtype=dtype)


# --------------------------------------------------------------------------
# worked examples
# --------------------------------------------------------------------------
def test_worked_examples_file_matches_inlined_copy():
    if not os.path.exists(WORKED):
        pytest.skip("worked_examples.json not available")
    with open(WORKED) as f:
        ex = json.load(f)
    assert ex["conv"]["x"] == CONV_X and ex["conv"]["weight"] == CONV_W
    assert ex["conv"]["bias"] == CONV_B
    assert np.array(ex["conv"]["expected_y"]).reshape(2, 9).tolist() == CONV_Y
    assert ex["max_pool"]["x"] == POOL_X and ex["max_pool"]["expected_y"] == POOL_Y
    assert ex["max_pool"]["grad_out"] == POOL_G


def test_conv_worked_example_unbatched_int_input():
    # 3x5x5 input, two 3x3x3 filters, stride 2, zero padding 1, biases 1 and 0;
    # int arrays promote to float64
    y = R.conv2d(np.array(CONV_X), np.array(CONV_W), np.array(CONV_B), stride=2, padding=1)
    assert y.dtype == np.float64 and y.shape == (2, 3, 3)
    assert_array_equal(y.reshape(2, 9), CONV_Y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_worked_example_batched(dtype):
    x = np.stack([a(CONV_X, dtype), -a(CONV_X, dtype)])
    y = R.conv2d(x, a(CONV_W, dtype), a(CONV_B, dtype), stride=(2, 2), padding=(1, 1))
    assert y.dtype == dtype and y.shape == (2, 2, 3, 3)
    assert_array_equal(y[0].reshape(2, 9), CONV_Y)
    # negated input: the bias stays, the sum flips sign
    assert_array_equal(y[1].reshape(2, 9), -(a(CONV_Y) - [[1], [0]]) + [[1], [0]])


def test_max_pool_worked_example_forward_and_backward():
    y, idx = R.max_pool2d(np.array(POOL_X), 2, 2)
    assert y.dtype == np.float64 and idx.dtype == np.int64
    assert_array_equal(y, POOL_Y)
    assert_array_equal(idx, POOL_IDX)
    gx = R.max_pool2d_backward(a(POOL_G), idx, (2, 4, 4))
    assert gx.shape == (2, 4, 4)
    assert_array_equal(gx, POOL_GX)


# --------------------------------------------------------------------------
# hand-computed convolution cases
# --------------------------------------------------------------------------
def test_conv_same_padding_extra_goes_right():
    # even kernel: total padding 1 -> 0 left, 1 right (PyTorch)
    y = R.conv2d(a([[[[1, 2, 3, 4]]]]), a([[[[1, 10]]]]), padding="same")
    assert_array_equal(y, [[[[21, 32, 43, 4]]]])


def test_conv_same_padding_even_kernel_rows():
    x = a([[[[1], [2], [3]]]])          # 3x1
    w = a([[[[1], [1]]]])               # 2x1: pad 0 top, 1 bottom
    assert_array_equal(R.conv2d(x, w, padding="same"), [[[[3], [5], [3]]]])


def test_conv_valid_is_no_padding():
    x = a(np.arange(12).reshape(1, 1, 3, 4))
    w = a([[[[1, -1]]]])
    assert_array_equal(R.conv2d(x, w, padding="valid"), -np.ones((1, 1, 3, 3)))


def test_conv_dilation():
    # y[j] = x[j] + x[j + 2]
    y = R.conv2d(a([[[[1, 2, 3, 4, 5]]]]), a([[[[1, 1]]]]), dilation=2)
    assert_array_equal(y, [[[[4, 6, 8]]]])


def test_conv_groups_and_depthwise():
    x = a([[[[2]], [[3]]]])                    # (1, 2, 1, 1)
    assert_array_equal(R.conv2d(x, a([[[[5]]], [[[7]]]]), groups=2), [[[[10]], [[21]]]])
    assert_array_equal(R.conv2d(x, a([[[[5]], [[7]]]])), [[[[31]]]])
    # depthwise with channel multiplier 2: output channels 0,1 see input 0; 2,3 see input 1
    w = a([[[[1]]], [[[-1]]], [[[10]]], [[[100]]]])
    assert_array_equal(R.conv2d(x, w, groups=2).ravel(), [2, -2, 30, 300])


def test_conv_output_size_formula():
    # (W - F + 2P)/S + 1 = (5 - 3 + 2)/2 + 1 = 3; corners see 4 ones, edges 6, centre 9
    y = R.conv2d(np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), stride=2, padding=1)
    assert_array_equal(y, [[[[4, 6, 4], [6, 9, 6], [4, 6, 4]]]])


def test_conv_asymmetric_stride_padding():
    x = a(np.arange(1, 13).reshape(1, 1, 3, 4))
    y = R.conv2d(x, np.ones((1, 1, 1, 1)), stride=(2, 3), padding=(0, 1))
    # rows 0, 2; padded columns -1, 2  -> [0, x[.,2]] ; W_out = (4+2-1)//3+1 = 2
    assert_array_equal(y, [[[[0, 3], [0, 11]]]])


def test_conv_backward_1x1():
    x = a([[[[1, 2], [3, 4]]]])
    g = a([[[[1, -1], [2, 0.5]]]])
    gx, gw, gb = R.conv2d_backward(g, x, a([[[[3]]]]))
    assert_array_equal(gx, 3 * g)
    assert_array_equal(gw, [[[[7]]]])        # sum(g * x) = 1 - 2 + 6 + 2
    assert_array_equal(gb, [2.5])


def test_conv_backward_2x2_kernel():
    x = a(np.arange(9).reshape(1, 1, 3, 3))
    w = a([[[[1, 2], [3, 4]]]])
    gx, gw, gb = R.conv2d_backward(np.ones((1, 1, 2, 2)), x, w)
    # grad_x: each pixel collects the filter taps of the windows covering it
    assert_array_equal(gx, [[[[1, 3, 2], [4, 10, 6], [3, 7, 4]]]])
    # grad_w[m, k] = sum over windows of x[i + m, j + k]
    assert_array_equal(gw, [[[[8, 12], [20, 24]]]])
    assert_array_equal(gb, [4])
    assert gx.dtype == gw.dtype == gb.dtype == np.float64


def test_conv_backward_padding_terms_dropped_and_unbatched():
    # 1x1 input, 3x3 kernel, padding 1: only the centre tap touches the input
    w = a(np.arange(9).reshape(1, 1, 3, 3))
    gx, gw, gb = R.conv2d_backward(a([[[5]]]), a([[[2]]]), w, padding=1)
    assert gx.shape == (1, 1, 1)
    assert_array_equal(gx, [[[5 * 4]]])
    expected_gw = np.zeros((1, 1, 3, 3))
    expected_gw[0, 0, 1, 1] = 10
    assert_array_equal(gw, expected_gw)
    assert_array_equal(gb, [5])


def test_conv_empty_batch():
    w = np.ones((3, 2, 3, 3))
    y = R.conv2d(np.zeros((0, 2, 5, 5)), w, np.ones(3), padding=1)
    assert y.shape == (0, 3, 5, 5) and y.dtype == np.float64
    gx, gw, gb = R.conv2d_backward(np.zeros((0, 3, 5, 5)), np.zeros((0, 2, 5, 5)), w, padding=1)
    assert gx.shape == (0, 2, 5, 5)
    assert_array_equal(gw, np.zeros((3, 2, 3, 3)))
    assert_array_equal(gb, np.zeros(3))


def test_conv_algorithm_keyword_is_accepted():
    x, w = a(CONV_X), a(CONV_W)
    for algorithm in ("auto", "direct", "gemm"):
        y = R.conv2d(x, w, a(CONV_B), stride=2, padding=1, algorithm=algorithm)
        assert_array_equal(y.reshape(2, 9), CONV_Y)
        gx, gw, gb = R.conv2d_backward(np.ones_like(y), x, w, stride=2, padding=1,
                                       algorithm=algorithm)
        assert_array_equal(gb, [9, 9])


# --------------------------------------------------------------------------
# hand-computed pooling cases
# --------------------------------------------------------------------------
def test_max_pool_ties_go_to_first_element():
    y, idx = R.max_pool2d(np.full((1, 1, 2, 2), 7.0), 2)
    assert_array_equal(y, [[[[7]]]]) and assert_array_equal(idx, [[[[0]]]])
    y, idx = R.max_pool2d(a([[[[1, 3], [3, 1]]]]), 2)
    assert_array_equal(y, [[[[3]]]])
    assert_array_equal(idx, [[[[1]]]])


def test_max_pool_nan_last_wins_and_propagates():
    y, idx = R.max_pool2d(a([[[[nan, 1], [nan, 2]]]]), 2)
    assert np.isnan(y).all()
    assert_array_equal(idx, [[[[2]]]])
    # a NaN is never replaced by a number (5 > nan is False)
    y, idx = R.max_pool2d(a([[[[1, nan], [5, 2]]]]), 2)
    assert np.isnan(y).all()
    assert_array_equal(idx, [[[[1]]]])
    y, idx = R.max_pool2d(a([[[[inf, -inf], [nan, 2]]]]), 2)
    assert np.isnan(y).all()
    assert_array_equal(idx, [[[[2]]]])


def test_max_pool_all_minus_inf_gives_first_in_bounds_index():
    x = np.full((1, 1, 2, 2), -inf)
    y, idx = R.max_pool2d(x, 2)
    assert_array_equal(y, [[[[-inf]]]])
    assert_array_equal(idx, [[[[0]]]])
    # with padding 1 each 2x2 window holds one input element: its index
    y, idx = R.max_pool2d(x, 2, stride=2, padding=1)
    assert_array_equal(y, np.full((1, 1, 2, 2), -inf))
    assert_array_equal(idx, [[[[0, 1], [2, 3]]]])


def test_max_pool_padding_is_never_picked():
    y, idx = R.max_pool2d(np.full((1, 1, 3, 3), -5.0), 3, stride=1, padding=1)
    assert_array_equal(y, np.full((1, 1, 3, 3), -5.0))
    assert_array_equal(idx, [[[[0, 0, 1], [0, 0, 1], [3, 3, 4]]]])


def test_max_pool_dilation_and_ceil_mode():
    y, idx = R.max_pool2d(a([[[[5, 1, 4, 2, 3]]]]), (1, 2), stride=1, dilation=(1, 3))
    assert_array_equal(y, [[[[5, 3]]]])      # max(x[j], x[j+3])
    assert_array_equal(idx, [[[[0, 4]]]])
    x = a([[[[1, 2, 3, 4, 5]]]])
    y, idx = R.max_pool2d(x, (1, 2))
    assert_array_equal(y, [[[[2, 4]]]])
    y, idx = R.max_pool2d(x, (1, 2), ceil_mode=True)
    assert_array_equal(y, [[[[2, 4, 5]]]])
    assert_array_equal(idx, [[[[1, 3, 4]]]])


def test_max_pool_backward_overlapping_windows_add_up():
    y, idx = R.max_pool2d(a([[[[1, 9, 1]]]]), (1, 2), stride=1)
    assert_array_equal(idx, [[[[1, 1]]]])
    gx = R.max_pool2d_backward(a([[[[1, 2]]]]), idx, (1, 1, 1, 3))
    assert_array_equal(gx, [[[[0, 3, 0]]]])


def test_max_pool_empty_batch():
    y, idx = R.max_pool2d(np.zeros((0, 2, 4, 4)), 2)
    assert y.shape == idx.shape == (0, 2, 2, 2) and idx.dtype == np.int64
    gx = R.max_pool2d_backward(np.zeros((0, 2, 2, 2)), idx, (0, 2, 4, 4))
    assert gx.shape == (0, 2, 4, 4)


def test_avg_pool_textbook():
    y = R.avg_pool2d(a(np.arange(16).reshape(1, 1, 4, 4)), 2)
    assert_array_equal(y, [[[[2.5, 4.5], [10.5, 12.5]]]])


def test_avg_pool_padding_divisors():
    x = a([[[[1, 2], [3, 4]]]])
    # every 2x2 window holds one input element and three zeros of padding
    assert_array_equal(R.avg_pool2d(x, 2, padding=1), x / 4)
    assert_array_equal(R.avg_pool2d(x, 2, padding=1, count_include_pad=False), x)
    assert_array_equal(R.avg_pool2d(x, 2, padding=1, divisor_override=2), x / 2)
    assert_array_equal(R.avg_pool2d(x, 2, padding=1, divisor_override=-1), -x)


def test_avg_pool_ceil_mode_window_cut_at_padded_edge():
    x = a([[[[1, 2, 3, 4, 5]]]])
    # last window [4, 6) is cut at W + P = 5: its size is 1, so it averages to 5, not 2.5
    assert_array_equal(R.avg_pool2d(x, (1, 2), ceil_mode=True), [[[[1.5, 3.5, 5]]]])
    x = a([[[[1, 2, 3, 4]]]])
    kw = dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1), ceil_mode=True)
    # windows [-1, 2), [1, 4), [3, 5): sizes 3, 3, 2 with padding; 2, 3, 1 without
    assert_array_equal(R.avg_pool2d(x, **kw), [[[[1, 3, 2]]]])
    assert_array_equal(R.avg_pool2d(x, count_include_pad=False, **kw), [[[[1.5, 3, 4]]]])


def test_avg_pool_backward_splits_evenly():
    gx = R.avg_pool2d_backward(a([[[[4]]]]), (1, 1, 2, 2), 2)
    assert_array_equal(gx, np.ones((1, 1, 2, 2)))       # the sum 4 is preserved
    gx = R.avg_pool2d_backward(a([[[[2, 4]]]]), (1, 1, 1, 3), (1, 2), stride=1)
    assert_array_equal(gx, [[[[1, 3, 2]]]])
    gx = R.avg_pool2d_backward(a([[[8]]]), (1, 2, 2), 2, padding=1, stride=3,
                               count_include_pad=False)
    assert gx.shape == (1, 2, 2)
    assert_array_equal(gx, [[[8, 0], [0, 0]]])        # the window's only input element
    gx = R.avg_pool2d_backward(a([[[8]]]), (1, 2, 2), 2, padding=1, stride=3)
    assert_array_equal(gx, [[[2, 0], [0, 0]]])        # 8 / 4 (3 shares fell in the padding)


def test_relu_and_backward():
    x = a([-1, 0, 2, nan, inf, -inf, -0.0])
    y = R.relu(x)
    assert_array_equal(y, [0, 0, 2, nan, inf, 0, 0])
    g = a([1, 2, 3, 4, 5, 6, 7])
    assert_array_equal(R.relu_backward(g, x), [0, 0, 3, 4, 5, 0, 0])
    assert_array_equal(R.relu(a([[-2, 2]], np.float32)), a([[0, 2]], np.float32))


@pytest.mark.parametrize("dtype, expected", [
    (np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float16),
    (np.int32, np.float64), (np.int64, np.float64), (np.uint8, np.float64),
    (np.bool_, np.float64),
])
def test_result_dtypes(dtype, expected):
    x = (np.arange(16).reshape(1, 1, 4, 4) % 2).astype(dtype)
    w = np.ones((1, 1, 2, 2), dtype=dtype)
    y = R.conv2d(x, w)
    assert y.dtype == expected
    assert_array_equal(y, np.full((1, 1, 3, 3), 2.0))
    y, idx = R.max_pool2d(x, 2)
    assert y.dtype == expected
    assert_array_equal(y, np.ones((1, 1, 2, 2)))
    assert_array_equal(idx, [[[[1, 3], [9, 11]]]])   # first 1 of each 0,1/0,1 window
    assert R.avg_pool2d(x, 2).dtype == expected
    assert_array_equal(R.avg_pool2d(x, 2), np.full((1, 1, 2, 2), 0.5))
    assert R.relu(x).dtype == expected
    assert_array_equal(R.relu(x), x.astype(np.float64))


def test_mixed_dtypes_promote():
    y = R.conv2d(np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 1, 1), np.float64))
    assert y.dtype == np.float64
    g = R.relu_backward(np.ones(3, np.float32), np.array([1, -1, 2]))
    assert g.dtype == np.float64
    assert_array_equal(g, [1, 0, 1])


# --------------------------------------------------------------------------
# PyTorch as oracle (float64)
# --------------------------------------------------------------------------
TOL64 = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@given(cfg=H.conv_configs())
def test_conv2d_vs_torch(torch, cfg):
    x, w, b = H.conv_arrays(cfg)
    expected = H.torch_conv2d(x, w, b, **cfg["kwargs"])
    y = R.conv2d(x, w, b, **cfg["kwargs"])
    assert y.shape == expected.shape
    assert_allclose(y, expected, **TOL64)


@given(cfg=H.conv_configs())
def test_conv2d_backward_vs_torch(torch, cfg):
    x, w, _ = H.conv_arrays(cfg)
    out_shape = H.torch_conv2d(x, w, None, **cfg["kwargs"]).shape
    g = np.random.default_rng(cfg["seed"] + 1).standard_normal(out_shape)
    expected = H.torch_conv2d_backward(g, x, w, **cfg["kwargs"])
    got = R.conv2d_backward(g, x, w, **cfg["kwargs"])
    for name, r, e in zip(("grad_x", "grad_weight", "grad_bias"), got, expected):
        assert r.shape == e.shape, name
        assert_allclose(r, e, err_msg=name, **TOL64)


@given(cfg=H.pool_configs("max"))
def test_max_pool2d_vs_torch(torch, cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = H.with_specials(rng, cfg["x_shape"], fraction=rng.choice([0.0, 0.1, 0.4]))
    y_t, idx_t = H.torch_max_pool2d(x, **cfg["kwargs"])
    y, idx = R.max_pool2d(x, **cfg["kwargs"])
    assert_array_equal(y, y_t)          # NaN meets NaN, inf meets inf
    assert_array_equal(idx, idx_t)
    assert idx.dtype == np.int64


@given(cfg=H.pool_configs("max"))
def test_max_pool2d_backward_vs_torch(torch, cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = H.with_ties(rng, cfg["x_shape"])
    y_t, idx_t = H.torch_max_pool2d(x, **cfg["kwargs"])
    g = rng.standard_normal(y_t.shape)
    expected = H.torch_max_pool2d_backward(g, x, **cfg["kwargs"])
    got = R.max_pool2d_backward(g, idx_t, x.shape)     # torch's indices
    assert_allclose(got, expected, **TOL64)


@given(cfg=H.pool_configs("avg"))
def test_avg_pool2d_vs_torch(torch, cfg):
    x = H.normal(np.random.default_rng(cfg["seed"]), cfg["x_shape"])
    expected = H.torch_avg_pool2d(x, **cfg["kwargs"])
    y = R.avg_pool2d(x, **cfg["kwargs"])
    assert y.shape == expected.shape
    assert_allclose(y, expected, **TOL64)


@given(cfg=H.pool_configs("avg"))
def test_avg_pool2d_backward_vs_torch(torch, cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = H.normal(rng, cfg["x_shape"])
    g = rng.standard_normal(H.torch_avg_pool2d(x, **cfg["kwargs"]).shape)
    expected = H.torch_avg_pool2d_backward(g, x, **cfg["kwargs"])
    got = R.avg_pool2d_backward(g, x.shape, **cfg["kwargs"])
    assert got.shape == expected.shape
    assert_allclose(got, expected, **TOL64)


@pytest.mark.parametrize("seed", range(5))
def test_relu_and_backward_vs_torch(torch, seed):
    rng = np.random.default_rng(seed)
    x = H.with_specials(rng, (2, 3, 4, 5))
    g = rng.standard_normal(x.shape)
    assert_array_equal(R.relu(x), H.torch_relu(x))
    assert_array_equal(R.relu_backward(g, x), H.torch_relu_backward(g, x))


def test_max_pool_window_entirely_in_padding_is_refused():
    # H=1, kernel 2 rows, padding 1, dilation 2: the window rows are -1 and 1, both outside
    # the input.  PyTorch returns -inf with an out-of-range index; cnnx (_shapes) refuses.
    kw = dict(kernel_size=(2, 1), stride=1, padding=(1, 0), dilation=(2, 1))
    with pytest.raises(ValueError, match="lies entirely in the padding"):
        R.max_pool2d(a([[[[0, 1, 2]]]]), **kw)
