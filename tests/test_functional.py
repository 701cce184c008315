"""cnnx.functional (the compiled kernels): worked examples, compiled vs reference
(hypothesis, every option, every conv algorithm, 1 and 2 threads), vs PyTorch,
numerical gradients, memory layouts, dtypes, empty batches and bad inputs."""

import math
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import _helpers as H
import cnnx
from cnnx import functional as Fn
from cnnx import reference as R
from cnnx.testing import assert_close, check_gradient, compare_with_reference, tolerances

nan, inf = math.nan, math.inf
ALGORITHMS = ("direct", "gemm", "auto")
THREADS = (1, 2)
DTYPES = st.sampled_from([np.float64, np.float32, np.float32, np.float64, np.float16])


@contextmanager
def num_threads(n):
    """``n`` kernel threads; with n > 1 even for small inputs (which cnnx would otherwise
    run on one thread, see functional._PARALLEL_MIN_WORK)."""
    previous, old_min = cnnx.set_num_threads(n), Fn._PARALLEL_MIN_WORK
    if n > 1:
        Fn._PARALLEL_MIN_WORK = 0
    try:
        yield
    finally:
        Fn._PARALLEL_MIN_WORK = old_min
        cnnx.set_num_threads(previous)


def a(values, dtype=np.float64):
    return np.array(values, dtype=dtype)


def assert_same(x, y, err_msg=""):
    """Equal shape, dtype and values (NaN meets NaN)."""
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape and x.dtype == y.dtype, (err_msg, x.shape, y.shape, x.dtype,
                                                         y.dtype)
    assert_array_equal(x, y, err_msg=err_msg)


def same_at_thread_counts(fn, expected):
    """fn() at 1 and 2 threads: each close to ``expected``, the two the same bits."""
    got = []
    for n in THREADS:
        with num_threads(n):
            got.append(fn())
        assert_close(got[-1], expected, err_msg=f"threads={n}: ")
    assert_same(got[1], got[0], "2 threads vs 1")
    return got


def max_pool_as_reference(x, *args, **kwargs):
    """Fn.max_pool2d(x, ...) at 1 and 2 threads: values and indices the reference's (NaN
    meets NaN); returns the reference's (y, indices) and the last cnnx (y, indices)."""
    y_ref, idx_ref = R.max_pool2d(x, *args, **kwargs)
    for n in THREADS:
        with num_threads(n):
            y, idx = Fn.max_pool2d(x, *args, **kwargs)
        assert_same(y, y_ref, f"threads={n}")
        assert_same(idx, idx_ref, f"threads={n}")
    return (y_ref, idx_ref), (y, idx)


# --------------------------------------------------------------------------
# worked examples (textbook)
# --------------------------------------------------------------------------
CONV_X = [[[0, 1, 1, 0, 2], [2, 2, 2, 2, 1], [1, 0, 0, 2, 0], [0, 1, 1, 0, 0], [1, 2, 0, 0, 2]],
          [[1, 0, 2, 2, 0], [0, 0, 0, 2, 0], [1, 2, 1, 2, 1], [1, 0, 0, 0, 0], [1, 2, 1, 1, 1]],
          [[2, 1, 2, 0, 0], [1, 0, 0, 1, 0], [0, 2, 1, 0, 1], [0, 1, 2, 2, 2], [2, 1, 0, 0, 1]]]
CONV_W = [[[[-1, 1, 0], [0, 1, 0], [0, 1, 1]],
           [[-1, -1, 0], [0, 0, 0], [0, -1, 0]],
           [[0, 0, -1], [0, 1, 0], [1, -1, -1]]],
          [[[1, 1, -1], [-1, -1, 1], [0, -1, 1]],
           [[0, 1, 0], [-1, 0, -1], [-1, 1, 0]],
           [[-1, 0, 0], [-1, 0, 1], [-1, 0, 0]]]]
CONV_Y = [[6, 7, 5, 3, -1, -1, 2, -1, 4], [2, -5, -8, 1, -4, -4, 0, -5, -5]]
POOL_X = [[[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]],
          [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [3, 4, 5, 6]]]
POOL_G = [[[1, 2], [2, 4]], [[3, 5], [8, 2]]]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_conv_worked_example(algorithm, dtype):
    y = Fn.conv2d(np.array(CONV_X, dtype), np.array(CONV_W, dtype), np.array([1, 0], dtype),
                  stride=2, padding=1, algorithm=algorithm)
    assert y.shape == (2, 3, 3)
    assert y.dtype == (np.float64 if dtype == np.int64 else dtype)
    assert_array_equal(y.reshape(2, 9), CONV_Y)


def test_max_pool_worked_example():
    y, idx = Fn.max_pool2d(a(POOL_X), 2, 2)
    assert_array_equal(y, [[[6, 8], [3, 4]], [[5, 7], [9, 6]]])
    assert idx.dtype == np.int64
    assert_array_equal(idx, [[[5, 7], [8, 15]], [[5, 7], [9, 15]]])
    gx = Fn.max_pool2d_backward(a(POOL_G), idx, (2, 4, 4))
    assert_array_equal(gx, [[[0, 0, 0, 0], [0, 1, 0, 2], [2, 0, 0, 0], [0, 0, 0, 4]],
                            [[0, 0, 0, 0], [0, 3, 0, 5], [0, 8, 0, 0], [0, 0, 0, 2]]])


def test_small_hand_cases():
    assert_array_equal(Fn.conv2d(a([[[[1, 2, 3, 4]]]]), a([[[[1, 10]]]]), padding="same"),
                       [[[[21, 32, 43, 4]]]])
    assert_array_equal(Fn.avg_pool2d(a([[[[1, 2, 3, 4, 5]]]]), (1, 2), ceil_mode=True),
                       [[[[1.5, 3.5, 5]]]])
    y, idx = Fn.max_pool2d(a([[[[nan, 1], [nan, 2]]]]), 2)
    assert np.isnan(y).all() and idx.item() == 2
    y, idx = Fn.max_pool2d(np.full((1, 1, 2, 2), -inf), 2, stride=2, padding=1)
    assert_array_equal(y, np.full((1, 1, 2, 2), -inf))
    assert_array_equal(idx, [[[[0, 1], [2, 3]]]])
    assert_array_equal(Fn.relu(a([-1, 0, 2, nan])), [0, 0, 2, nan])
    assert_array_equal(Fn.relu_backward(a([1, 2, 3, 4]), a([-1, 0, 2, nan])), [0, 0, 3, 4])


# --------------------------------------------------------------------------
# compiled vs reference (hypothesis): every option, algorithm and thread count
# --------------------------------------------------------------------------
@given(cfg=H.conv_configs(), dtype=DTYPES)
def test_conv2d_vs_reference(cfg, dtype):
    x, w, b = H.conv_arrays(cfg, dtype)
    expected = R.conv2d(x, w, b, **cfg["kwargs"])
    for algorithm in ALGORITHMS:
        for n in THREADS:
            with num_threads(n):
                y = Fn.conv2d(x, w, b, algorithm=algorithm, **cfg["kwargs"])
            assert_close(y, expected, err_msg=f"algorithm={algorithm} threads={n}: ")


@given(cfg=H.conv_configs(), dtype=DTYPES)
def test_conv2d_backward_vs_reference(cfg, dtype):
    x, w, _ = H.conv_arrays(cfg, dtype)
    out_shape = R.conv2d(x, w, **cfg["kwargs"]).shape
    g = H.normal(np.random.default_rng(cfg["seed"] + 1), out_shape, dtype)
    expected = R.conv2d_backward(g, x, w, **cfg["kwargs"])
    for algorithm in ALGORITHMS:
        for n in THREADS:
            with num_threads(n):
                got = Fn.conv2d_backward(g, x, w, algorithm=algorithm, **cfg["kwargs"])
            assert isinstance(got, tuple) and len(got) == 3
            for name, r, e in zip(("grad_x", "grad_weight", "grad_bias"), got, expected):
                assert_close(r, e, err_msg=f"{name} algorithm={algorithm} threads={n}: ")


@given(cfg=H.pool_configs("max"), dtype=DTYPES)
def test_max_pool2d_vs_reference(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    x = H.with_specials(rng, cfg["x_shape"], dtype, fraction=rng.choice([0.0, 0.1, 0.4]))
    y_ref, idx_ref = R.max_pool2d(x, **cfg["kwargs"])
    for n in THREADS:
        with num_threads(n):
            y, idx = Fn.max_pool2d(x, **cfg["kwargs"])
        assert_same(y, y_ref, f"values, threads={n}")          # a max is exact
        assert_same(idx, idx_ref, f"indices, threads={n}")


@given(cfg=H.pool_configs("max"), dtype=DTYPES)
def test_max_pool2d_backward_vs_reference(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    x = H.with_ties(rng, cfg["x_shape"], dtype)
    _, idx = R.max_pool2d(x, **cfg["kwargs"])
    g = H.normal(rng, idx.shape, dtype)
    for n in THREADS:
        with num_threads(n):
            compare_with_reference("max_pool2d_backward", g, idx, x.shape)


@given(cfg=H.pool_configs("avg"), dtype=DTYPES)
def test_avg_pool2d_vs_reference(cfg, dtype):
    x = H.normal(np.random.default_rng(cfg["seed"]), cfg["x_shape"], dtype)
    for n in THREADS:
        with num_threads(n):
            compare_with_reference("avg_pool2d", x, **cfg["kwargs"])


@given(cfg=H.pool_configs("avg"), dtype=DTYPES)
def test_avg_pool2d_backward_vs_reference(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    x_shape = cfg["x_shape"]
    g = H.normal(rng, R.avg_pool2d(np.zeros(x_shape), **cfg["kwargs"]).shape, dtype)
    for n in THREADS:
        with num_threads(n):
            compare_with_reference("avg_pool2d_backward", g, x_shape, **cfg["kwargs"])


@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1),
       dtype=DTYPES)
def test_relu_vs_reference(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    x = H.with_specials(rng, tuple(shape), dtype)
    g = H.normal(rng, x.shape, dtype)
    for n in THREADS:
        with num_threads(n):
            y, _ = compare_with_reference("relu", x)
            assert_same(y, R.relu(x))
            gx, _ = compare_with_reference("relu_backward", g, x)
            assert_same(gx, R.relu_backward(g, x))


# Medium sizes: several work items per thread (num_threads(2) forces the 2-thread paths,
# and the per-thread reductions, whatever the size).
MEDIUM_CONV = [
    dict(x=(2, 8, 12, 12), w=(8, 8, 3, 3), kwargs=dict(padding=1)),
    dict(x=(2, 8, 14, 13), w=(6, 4, 2, 3), kwargs=dict(stride=(2, 1), groups=2, dilation=(1, 2))),
    dict(x=(2, 8, 24, 24), w=(8, 1, 3, 3), kwargs=dict(padding="same", groups=8)),
]


@pytest.mark.parametrize("case", MEDIUM_CONV, ids=["dense", "grouped", "depthwise"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_medium_threads_1_and_2_vs_reference(case, dtype):
    rng = np.random.default_rng(7)
    x, w = H.normal(rng, case["x"], dtype), H.normal(rng, case["w"], dtype)
    b = H.normal(rng, (case["w"][0],), dtype)
    y_ref = R.conv2d(x, w, b, **case["kwargs"])
    g = H.normal(rng, y_ref.shape, dtype)
    grads_ref = R.conv2d_backward(g, x, w, **case["kwargs"])
    for algorithm in ALGORITHMS:
        for n in THREADS:
            with num_threads(n):
                assert_close(Fn.conv2d(x, w, b, algorithm=algorithm, **case["kwargs"]), y_ref,
                             err_msg=f"{algorithm} threads={n}: ")
                grads = Fn.conv2d_backward(g, x, w, algorithm=algorithm, **case["kwargs"])
            for name, r, e in zip(("grad_x", "grad_w", "grad_b"), grads, grads_ref):
                assert_close(r, e, err_msg=f"{name} {algorithm} threads={n}: ")


# One sample, several row tiles: the GEMM backward's threads share its chunks of row tiles,
# the even ones, then the odd ones (chunks k and k + 2 never add into the same rows of grad_x).
BATCH1_CONV = [
    dict(x=(1, 3, 30, 17), w=(5, 3, 7, 7), kwargs=dict(stride=2, padding=3)),
    dict(x=(1, 4, 23, 19), w=(6, 4, 3, 3), kwargs=dict(padding=1)),            # wide layout
    dict(x=(1, 2, 29, 11), w=(3, 2, 5, 3), kwargs=dict(dilation=(3, 1), padding=(4, 1))),
    dict(x=(1, 3, 26, 9), w=(4, 3, 2, 2), kwargs=dict(stride=(3, 2))),         # no overlap
    dict(x=(1, 5, 12, 10), w=(7, 5, 1, 1), kwargs=dict()),                     # pointwise
]


@pytest.mark.parametrize("case", BATCH1_CONV, ids=["k7s2", "k3wide", "dilated", "s3", "1x1"])
@pytest.mark.parametrize("tile_rows", [1, 2, 3])
def test_conv_backward_gemm_batch1_tiles_shared_by_threads(case, tile_rows, monkeypatch):
    rng = np.random.default_rng(11)
    x, w = H.normal(rng, case["x"], np.float64), H.normal(rng, case["w"], np.float64)
    g = H.normal(rng, R.conv2d(x, w, None, **case["kwargs"]).shape, np.float64)
    grads_ref = R.conv2d_backward(g, x, w, **case["kwargs"])
    # tiles of tile_rows output rows (TILE_ELEMENTS // K columns), so that there are several
    W_out = g.shape[3]
    monkeypatch.setattr(Fn, "TILE_MIN_COLUMNS", 1)
    monkeypatch.setattr(Fn, "TILE_ELEMENTS", tile_rows * W_out * w[0].size)
    seen = []
    real = Fn._conv.backward_gemm
    monkeypatch.setattr(Fn._conv, "backward_gemm", lambda *a: seen.append(a[-1]) or real(*a))
    got = []
    for n in THREADS:
        with num_threads(n):
            got.append(Fn.conv2d_backward(g, x, w, algorithm="gemm", **case["kwargs"]))
        for name, r, e in zip(("grad_x", "grad_w", "grad_b"), got[-1], grads_ref):
            assert_close(r, e, err_msg=f"{name} threads={n}: ")
    assert seen == [False, True]   # 2 threads shared the tiles
    assert_same(got[1][0], got[0][0], "grad_x, 2 threads vs 1")   # the same adds, in order


@pytest.mark.parametrize("kh,stride,dilation", [(7, 2, 1), (3, 1, 1), (5, 1, 3), (2, 3, 1),
                                                (1, 1, 1), (11, 1, 2)])
@pytest.mark.parametrize("rows", [1, 2, 3, 8])
@pytest.mark.parametrize("H", [9, 60, 200])
def test_backward_tile_chunks_never_overlap(kh, stride, dilation, rows, H):
    """Chunks k and k + 2 of row tiles touch disjoint input rows (so two threads can add
    them at once); one tile fewer per chunk would not (unless it is about n_tiles / 8),
    brute force over the receptive fields."""
    x = np.zeros((1, 1, H + dilation * (kh - 1), 4))
    w = np.zeros((1, 1, kh, 1))
    spec = cnnx._shapes.prepare_conv2d(x, w, None, (stride, 1), 0, (dilation, 1), 1)[3]
    c, n_chunks = Fn._conv.backward_tile_chunk(spec, rows)
    n_tiles = -(-spec.H_out // rows)
    assert n_chunks == -(-n_tiles // c) and n_chunks <= 8 or c * rows * stride <= kh * dilation

    def rows_of(tiles, k):   # input rows that chunk k (of ``tiles`` tiles) reads
        return {i * stride + u * dilation for i in range(k * tiles * rows, (k + 1) * tiles * rows)
                for u in range(kh)}

    assert not rows_of(c, 0) & rows_of(c, 2)
    if c > -(-n_tiles // 8):
        assert rows_of(c - 1, 0) & rows_of(c - 1, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_and_relu_medium_threads_1_and_2_vs_reference(dtype):
    rng = np.random.default_rng(8)
    x = H.with_specials(rng, (2, 8, 48, 48), dtype, fraction=0.05)
    y_ref, idx_ref = R.max_pool2d(x, 3, stride=1, padding=1)
    g = H.normal(rng, y_ref.shape, dtype)
    gmax_ref = R.max_pool2d_backward(g, idx_ref, x.shape)
    xs = H.normal(rng, x.shape, dtype)
    avg_ref = R.avg_pool2d(xs, 3, stride=1, padding=1, count_include_pad=False)
    gavg_ref = R.avg_pool2d_backward(g, x.shape, 3, stride=1, padding=1, count_include_pad=False)
    relu_ref, grelu_ref = R.relu(x), R.relu_backward(xs, x)
    for n in THREADS:
        with num_threads(n):
            y, idx = Fn.max_pool2d(x, 3, stride=1, padding=1)
            assert_same(y, y_ref, f"threads={n}")
            assert_same(idx, idx_ref, f"threads={n}")
            assert_close(Fn.max_pool2d_backward(g, idx_ref, x.shape), gmax_ref)
            assert_close(Fn.avg_pool2d(xs, 3, stride=1, padding=1, count_include_pad=False),
                         avg_ref)
            assert_close(Fn.avg_pool2d_backward(g, x.shape, 3, stride=1, padding=1,
                                                count_include_pad=False), gavg_ref)
            assert_same(Fn.relu(x), relu_ref)
            assert_same(Fn.relu_backward(xs, x), grelu_ref)


# GEMM workspaces are tiles, not whole-batch im2col buffers: these shapes need several
# tiles (rows of one big image; several small images per tile with a remainder tile).
TILING_CASES = {
    "row-tiles": dict(x=(2, 16, 66, 66), w=(16, 16, 3, 3),
                      kwargs=dict(stride=(1, 2), padding=(1, 2), dilation=(2, 1))),
    "image-tiles": dict(x=(7, 16, 12, 12), w=(8, 16, 3, 3), kwargs=dict(padding=(0, 1))),
    "grouped-image-tiles": dict(x=(5, 12, 10, 9), w=(9, 4, 2, 3),
                                kwargs=dict(groups=3, stride=(2, 1))),
}


@pytest.mark.parametrize("case", sorted(TILING_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_gemm_tiling_agrees_with_direct(case, dtype):
    cfg = TILING_CASES[case]
    rng = np.random.default_rng(9)
    x, w = H.normal(rng, cfg["x"], dtype), H.normal(rng, cfg["w"], dtype)
    b = H.normal(rng, (cfg["w"][0],), dtype)
    with num_threads(1):
        y_direct = Fn.conv2d(x, w, b, algorithm="direct", **cfg["kwargs"])
        g = H.normal(rng, y_direct.shape, dtype)
        grads_direct = Fn.conv2d_backward(g, x, w, algorithm="direct", **cfg["kwargs"])
    for algorithm in ("gemm", "auto"):
        for n in THREADS:
            with num_threads(n):
                assert_close(Fn.conv2d(x, w, b, algorithm=algorithm, **cfg["kwargs"]), y_direct,
                             err_msg=f"{algorithm} threads={n}: ")
                grads = Fn.conv2d_backward(g, x, w, algorithm=algorithm, **cfg["kwargs"])
            for name, r, e in zip(("grad_x", "grad_w", "grad_b"), grads, grads_direct):
                assert_close(r, e, err_msg=f"{name} {algorithm} threads={n}: ")


# The forward's 'wide' im2col layout (stride 1: one long copy per im2col row over the padded
# width, garbage columns dropped): edge geometries, forced on whatever the size rule says.
WIDE_CASES = {
    "no-padding": dict(x=(3, 2, 7, 9), w=(4, 2, 3, 2), kwargs={}),
    "padding-asym": dict(x=(2, 3, 6, 5), w=(5, 3, 3, 3), kwargs=dict(padding=(2, 1))),
    "same-even-kernel": dict(x=(2, 2, 5, 6), w=(3, 2, 2, 4), kwargs=dict(padding="same")),
    "dilation": dict(x=(2, 2, 9, 8), w=(3, 2, 3, 2), kwargs=dict(padding=(1, 0), dilation=(2, 3))),
    "groups": dict(x=(3, 6, 7, 7), w=(9, 2, 3, 3), kwargs=dict(groups=3, padding=1)),
    "kernel-fills-padded-input": dict(x=(2, 2, 3, 4), w=(3, 2, 5, 6), kwargs=dict(padding=1)),
    "one-output-row": dict(x=(2, 3, 3, 9), w=(2, 3, 3, 3), kwargs={}),
    "one-output-column": dict(x=(2, 3, 8, 3), w=(2, 3, 2, 3), kwargs={}),
    "row-tiles": dict(x=(2, 16, 66, 66), w=(8, 16, 3, 3), kwargs=dict(padding=(0, 2))),
    "row-tiles-unpadded": dict(x=(1, 40, 40, 40), w=(4, 40, 3, 3), kwargs={}),
    "image-tiles": dict(x=(9, 3, 12, 12), w=(6, 3, 5, 5), kwargs=dict(padding=2)),
}


# strides > 1: the wide layout over polyphase planes (forward only)
WIDE_STRIDED_CASES = {
    "stride2-pad1": dict(x=(3, 3, 9, 10), w=(4, 3, 3, 3), kwargs=dict(stride=2, padding=1)),
    "stride-2x3-asym": dict(x=(2, 2, 11, 13), w=(3, 2, 3, 4),
                            kwargs=dict(stride=(2, 3), padding=(2, 1))),
    "stride2-dilation2": dict(x=(2, 2, 12, 12), w=(3, 2, 3, 3),
                              kwargs=dict(stride=2, dilation=2, padding=1)),
    "stride3-dilation2": dict(x=(2, 2, 13, 14), w=(3, 2, 3, 2),
                              kwargs=dict(stride=3, dilation=(2, 3))),
    "stride-larger-than-kernel": dict(x=(2, 3, 11, 12), w=(2, 3, 2, 2),
                                      kwargs=dict(stride=(4, 3), padding=(0, 1))),
    "stride2-one-output": dict(x=(2, 2, 4, 5), w=(3, 2, 4, 5), kwargs=dict(stride=2)),
    "stride2-one-output-row": dict(x=(2, 2, 3, 9), w=(3, 2, 3, 3), kwargs=dict(stride=2)),
    "stride2-groups": dict(x=(3, 4, 9, 9), w=(6, 2, 3, 3), kwargs=dict(stride=2, groups=2,
                                                                       padding=1)),
    "stride2-row-tiles": dict(x=(1, 40, 70, 70), w=(4, 40, 3, 3), kwargs=dict(stride=2,
                                                                              padding=1)),
    "stride2-image-tiles": dict(x=(9, 3, 12, 12), w=(6, 3, 5, 5), kwargs=dict(stride=2,
                                                                             padding=2)),
}


@pytest.mark.parametrize("case", sorted(WIDE_CASES) + sorted(WIDE_STRIDED_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_gemm_wide_layout_vs_reference(monkeypatch, case, dtype):
    cfg = {**WIDE_CASES, **WIDE_STRIDED_CASES}[case]
    rng = np.random.default_rng(11)
    x, w = H.normal(rng, cfg["x"], dtype), H.normal(rng, cfg["w"], dtype)
    b = H.normal(rng, (cfg["w"][0],), dtype)
    kw = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **cfg["kwargs"]}
    expected = R.conv2d(x, w, b, **cfg["kwargs"])
    monkeypatch.setattr(Fn, "WIDE_MAX_RATIO", 1e9)
    monkeypatch.setattr(Fn, "WIDE_MAX_C_OUT", 1 << 30)
    for n in THREADS:
        with num_threads(n):
            assert_close(Fn.conv2d(x, w, b, algorithm="gemm", **cfg["kwargs"]), expected,
                         err_msg=f"wide threads={n}: ")
    spec = Fn.prepare_conv2d(x, w, b, **kw)[3]
    assert Fn._gemm_wide(spec)
    monkeypatch.setattr(Fn, "WIDE_MAX_RATIO", 0)
    assert not Fn._gemm_wide(spec)
    assert_close(Fn.conv2d(x, w, b, algorithm="gemm", **cfg["kwargs"]), expected,
                 err_msg="narrow: ")


def _backward_truth(g, x, w, kwargs):
    """conv2d_backward by the reference, or by 'direct' (checked against the reference
    elsewhere) where the pure-Python loops would be too slow."""
    if x.size < 5000:
        return R.conv2d_backward(g, x, w, **kwargs)
    return Fn.conv2d_backward(g, x, w, algorithm="direct", **kwargs)


def _check_gemm_backward(g, x, w, kwargs, expected, repeatable):
    """conv2d_backward(algorithm='gemm') at each thread count: close to ``expected`` (grad_x,
    grad_w, grad_b), and the gradients named in ``repeatable`` identical run to run."""
    for n in THREADS:
        with num_threads(n):
            grads = Fn.conv2d_backward(g, x, w, algorithm="gemm", **kwargs)
            again = Fn.conv2d_backward(g, x, w, algorithm="gemm", **kwargs)
        for name, r, e in zip(("grad_x", "grad_w", "grad_b"), grads, expected):
            assert_close(r, e, err_msg=f"{name} threads={n}: ")
        for name, r, e in zip(("grad_x", "grad_w"), again, grads):
            if name in repeatable:
                assert_same(r, e, f"{name} threads={n}: run to run")


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("case", sorted(WIDE_CASES))
def test_conv_gemm_wide_backward_vs_reference(monkeypatch, case, transposed):
    """backward_gemm in the wide layout (float32, finite weight), forced on; both
    grad_weight orientations; 1 and 2 threads; run to run identical."""
    cfg = WIDE_CASES[case]
    rng = np.random.default_rng(13)
    x, w = H.normal(rng, cfg["x"], np.float32), H.normal(rng, cfg["w"], np.float32)
    g = H.normal(rng, R.conv2d(x, w, None, **cfg["kwargs"]).shape, np.float32)
    expected = _backward_truth(g, x, w, cfg["kwargs"])
    monkeypatch.setattr(Fn, "WIDE_MAX_RATIO", 1e9)
    monkeypatch.setattr(Fn, "WIDE_MAX_C_OUT", 1 << 30)
    monkeypatch.setattr(Fn, "_gemm_gw_transposed", lambda spec: transposed)
    kw = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **cfg["kwargs"]}
    assert Fn._gemm_wide_backward(Fn.prepare_conv2d(x, w, None, **kw)[3], w)
    _check_gemm_backward(g, x, w, cfg["kwargs"], expected, ("grad_x", "grad_w"))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # grad_b: inf + -inf
@pytest.mark.parametrize("case", ["padding-asym", "no-padding", "dilation"])
def test_conv_gemm_wide_backward_non_finite(monkeypatch, case):
    """Wide backward with inf/NaN in x and grad_out: the garbage columns are zeroed, so
    the result has the narrow layout's NaN/inf pattern; a non-finite weight turns the
    wide layout off (its garbage grad_col columns would be 0 * inf)."""
    cfg = WIDE_CASES[case]
    rng = np.random.default_rng(14)
    x = H.with_specials(rng, cfg["x"], np.float32, fraction=0.05)
    w = H.normal(rng, cfg["w"], np.float32)
    g = H.with_specials(rng, R.conv2d(H.normal(rng, cfg["x"]), w, None, **cfg["kwargs"]).shape,
                        np.float32, fraction=0.05)
    monkeypatch.setattr(Fn, "WIDE_MAX_RATIO", 1e9)
    monkeypatch.setattr(Fn, "WIDE_MAX_C_OUT", 1 << 30)
    wide = Fn.conv2d_backward(g, x, w, algorithm="gemm", **cfg["kwargs"])
    monkeypatch.setattr(Fn, "WIDE_MAX_RATIO", 0)
    narrow = Fn.conv2d_backward(g, x, w, algorithm="gemm", **cfg["kwargs"])
    for name, r, e in zip(("grad_x", "grad_w"), wide, narrow):
        assert_array_equal(np.isnan(r), np.isnan(e), err_msg=name)
        assert_close(r, e, err_msg=f"{name}: ")
    monkeypatch.setattr(Fn, "WIDE_MAX_RATIO", 1e9)
    kw = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **cfg["kwargs"]}
    spec = Fn.prepare_conv2d(x, w, None, **kw)[3]
    assert Fn._gemm_wide_backward(spec, w)
    for bad in (np.inf, -np.inf, np.nan):
        w_bad = w.copy()
        w_bad.flat[0] = bad
        assert not Fn._gemm_wide_backward(spec, w_bad)
    assert not Fn._gemm_wide_backward(spec, w.astype(np.float64))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("case", sorted(TILING_CASES) + ["pointwise", "one-output"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_gemm_grad_weight_orientations_vs_reference(monkeypatch, case, dtype, transposed):
    """backward_gemm's grad_weight GEMM both ways round (m = K, or m = C_out/groups into a
    transposed per-thread accumulator), whatever the size rule would pick."""
    cfg = {**TILING_CASES,
           "pointwise": dict(x=(3, 6, 5, 4), w=(4, 3, 1, 1), kwargs=dict(groups=2)),
           "one-output": dict(x=(2, 3, 4, 5), w=(5, 3, 4, 5), kwargs={})}[case]
    rng = np.random.default_rng(12)
    x, w = H.normal(rng, cfg["x"], dtype), H.normal(rng, cfg["w"], dtype)
    g = H.normal(rng, R.conv2d(x, w, None, **cfg["kwargs"]).shape, dtype)
    expected = _backward_truth(g, x, w, cfg["kwargs"])
    monkeypatch.setattr(Fn, "_gemm_gw_transposed", lambda spec: transposed)
    _check_gemm_backward(g, x, w, cfg["kwargs"], expected, ("grad_w",))


@pytest.mark.parametrize("case", sorted(TILING_CASES))
def test_conv_gemm_tiling_vs_torch(torch, case):
    cfg = TILING_CASES[case]
    rng = np.random.default_rng(10)
    x, w = H.normal(rng, cfg["x"]), H.normal(rng, cfg["w"])
    b = H.normal(rng, (cfg["w"][0],))
    y_t = H.torch_conv2d(x, w, b, **cfg["kwargs"])
    g = H.normal(rng, y_t.shape)
    grads_t = H.torch_conv2d_backward(g, x, w, **cfg["kwargs"])
    for algorithm in ALGORITHMS:
        for n in THREADS:
            with num_threads(n):
                assert_vs_torch(Fn.conv2d(x, w, b, algorithm=algorithm, **cfg["kwargs"]), y_t)
                grads = Fn.conv2d_backward(g, x, w, algorithm=algorithm, **cfg["kwargs"])
            for name, r, e in zip(("grad_x", "grad_w", "grad_b"), grads, grads_t):
                assert_vs_torch(r, e, f"{name} {algorithm} threads={n}")


# The blocked direct kernels (_conv.correlate / correlate_weight_grad): outputs 6 or 4 per
# register block (2..13 per group below), taps summed in runs of 128 (129 and 270 taps),
# stride phases (strides 1..3 and 8), dilation, asymmetric padding, groups.
BLOCKED_CASES = {
    "out2": dict(x=(2, 3, 9, 8), w=(2, 3, 3, 3), kwargs=dict(padding=1)),
    "out3-pad-asym": dict(x=(2, 2, 11, 7), w=(3, 2, 3, 2), kwargs=dict(padding=(2, 0))),
    "out5-same": dict(x=(1, 4, 10, 12), w=(5, 4, 4, 3), kwargs=dict(padding="same")),
    "out7-dilated": dict(x=(2, 3, 13, 11), w=(7, 3, 3, 3), kwargs=dict(padding=2, dilation=2)),
    "out10-stride2": dict(x=(3, 3, 15, 16), w=(10, 3, 3, 3), kwargs=dict(stride=2, padding=1)),
    "out11-stride3-dil": dict(x=(2, 2, 20, 19), w=(11, 2, 3, 4),
                              kwargs=dict(stride=(3, 2), padding=(1, 3), dilation=(2, 3))),
    "out12-stride8": dict(x=(2, 2, 30, 27), w=(12, 2, 3, 5), kwargs=dict(stride=8, padding=2)),
    "out6-stride-7x5": dict(x=(2, 3, 30, 40), w=(6, 3, 4, 3), kwargs=dict(stride=(7, 5))),
    "out13-taps129": dict(x=(2, 129, 5, 6), w=(13, 129, 1, 1), kwargs=dict(padding=1)),
    "out8-taps270": dict(x=(2, 30, 7, 7), w=(8, 30, 3, 3), kwargs=dict(padding=1)),
    "groups": dict(x=(2, 6, 9, 10), w=(9, 2, 3, 3), kwargs=dict(groups=3, padding=1)),
    "wide-kernel": dict(x=(1, 2, 6, 30), w=(4, 2, 2, 9), kwargs=dict(padding=(1, 4))),
}


@pytest.mark.parametrize("band_values", [1 << 14, 40], ids=["default-bands", "tiny-bands"])
@pytest.mark.parametrize("case", sorted(BLOCKED_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_blocked_direct_vs_reference(monkeypatch, case, dtype, band_values):
    """algorithm='direct' takes the blocked kernels for dense groups of 2+ outputs (forward,
    the stride-1 input gradient, the weight gradient): close to the reference, the same bits
    at 1 and 2 threads and run to run; with tiny bands, many bands per image."""
    import _reliability_helpers as RH

    cfg = BLOCKED_CASES[case]
    rng = np.random.default_rng(17)
    x, w = H.normal(rng, cfg["x"], dtype), H.normal(rng, cfg["w"], dtype)
    b = H.normal(rng, (cfg["w"][0],), dtype)
    kw = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **cfg["kwargs"]}
    spec = Fn.prepare_conv2d(x, w, b, **kw)[3]
    monkeypatch.setattr(Fn, "BLOCKED_BAND_VALUES", band_values)
    assert Fn._blocked_forward_band(spec, w) > 0
    assert Fn._blocked_weight_grad_band(spec, True) > 0
    stride1 = (spec.stride_h, spec.stride_w) == (1, 1)
    assert (Fn._blocked_input_grad_band(spec, w) > 0) == (stride1 and spec.C_in // spec.groups > 1)
    if band_values < 1 << 14:
        assert Fn._blocked_forward_band(spec, w) < spec.H_out or spec.H_out == 1
    y_ref = R.conv2d(x, w, b, **cfg["kwargs"])
    g = H.normal(rng, y_ref.shape, dtype)
    grads_ref = R.conv2d_backward(g, x, w, **cfg["kwargs"])
    first = None
    for n in (1, 2, 2):
        with RH.forced_threads(n):
            got = (Fn.conv2d(x, w, b, algorithm="direct", **cfg["kwargs"]),
                   *Fn.conv2d_backward(g, x, w, algorithm="direct", **cfg["kwargs"]))
        for name, r, e in zip(("y", "grad_x", "grad_w", "grad_b"), got, (y_ref, *grads_ref)):
            assert_close(r, e, err_msg=f"{case} {name} threads={n}: ")
            assert r.flags.c_contiguous and r.dtype == dtype
        if first is None:
            first = got
        for name, r, e in zip(("y", "grad_x", "grad_w", "grad_b"), got, first):
            assert_same(r, e, f"{case} {name}: {n} threads vs 1")


@pytest.mark.parametrize("shape, stride", [
    ((2, 3, 8, 600), 2),        # 300 outputs a row: runs of 3 rows, crossing planes
    ((1, 2, 5, 2048), (1, 2)),  # 1024 outputs a row (the most one run holds), rows overlap
    ((1, 2, 4, 2050), 2),       # 1025: window by window instead
    ((5, 7, 9, 9), 2),          # odd sizes: the last row and column left out
    ((3, 5, 8, 8), 2),          # rows of 4 outputs read in place, width 8 (max_pool_rows_2x2)
    ((2, 3, 16, 17), 2),        # width 17: rows of 8, the generic width
    ((2, 3, 6, 16), (1, 2)),    # width 16, rows overlap
    ((2, 3, 32, 32), 2),        # width 32
    ((1, 4, 10, 56), 2),        # generic width, rows of 28 outputs
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_2x2_staged_rows_vs_reference(shape, stride, dtype):
    """2x2 max pooling with column stride 2 and no padding reads rows of a multiple of 4
    outputs in place (_pool.max_pool_rows_2x2), and copies the windows' rows of several
    output rows of other lengths into one run (_pool.max_pool_staged_rows): values,
    first-max ties and NaNs as the reference, at 1 and 2 threads."""
    rng = np.random.default_rng(23)
    x = H.with_specials(rng, shape, dtype, fraction=0.05)
    max_pool_as_reference(x, 2, stride)


@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 3, 6, 24), (1, 2, 4, 32), (1, 1, 2, 9)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_2x2_rows_every_tie_and_nan_pattern(shape, dtype):
    """Rows of 4, 12 and 16 outputs (the four-lane steps of _max2x2.h) and a row of 4 with
    a column left over, every window drawn from six values (NaN, -inf, -1, -0.0, 0.0, 1):
    ties, -0.0 against 0.0 and several NaNs in one window in each lane, at 1 and 2 threads;
    values, signs and indices as the reference."""
    rng = np.random.default_rng(71)
    values = np.array([np.nan, -np.inf, -1.0, -0.0, 0.0, 1.0], dtype=dtype)
    x = values[rng.integers(0, len(values), size=(40,) + shape[1:])]
    (y_ref, _), (y, _) = max_pool_as_reference(x, 2)
    assert_array_equal(np.signbit(y), np.signbit(y_ref))


@pytest.mark.parametrize("shape, kwargs", [
    ((4, 64, 7, 7), dict(kernel_size=7)),                      # global: runs of 49
    ((3, 5, 3, 3), dict(kernel_size=3)),       # runs of 9: one batch of 8 planes + 7 single
    ((1, 9, 4, 4), dict(kernel_size=4)),       # runs of 16 (two vectors), 8 planes + 1
    ((1, 6, 2, 2), dict(kernel_size=2)),       # runs of 4: doubles 4 planes + 2 single
    ((2, 12, 3, 5), dict(kernel_size=(4, 5), padding=(1, 0))),  # global, row padding
    ((2, 3, 2, 2), dict(kernel_size=2)),                       # runs of 4 (< one vector)
    ((2, 5, 2, 4), dict(kernel_size=2, stride=1)),             # runs of 8 (one AVX vector)
    ((1, 3, 5, 3), dict(kernel_size=3, stride=1)),             # 3 windows of 9
    ((2, 3, 14, 7), dict(kernel_size=(3, 7), stride=(2, 1), padding=(1, 0))),  # row padding
    ((2, 2, 9, 5), dict(kernel_size=(4, 5), stride=(3, 4), ceil_mode=True)),   # overhang
    ((1, 2, 5, 3), dict(kernel_size=3, dilation=(2, 1), padding=(1, 0))),      # not this path
])
@pytest.mark.parametrize("fill", ["specials", "all_nan", "all_-inf", "signed_zeros"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_whole_rows_vs_reference(shape, kwargs, fill, dtype):
    """Windows of whole input rows (W_out = 1: global max pooling) as one contiguous run per
    window, one running maximum per vector lane (_argmax.h), global windows eight (float32)
    or four (float64) planes at a time (cnnx_argmax_f_8 / _d_4): values and indices as the
    reference -- first-max ties, NaN wins (the last one), all -inf at the first tap, -0.0
    and 0.0 tied -- at 1 and 2 threads."""
    rng = np.random.default_rng(53)
    x = H.with_specials(rng, shape, dtype, fraction=0.05)
    if fill == "all_nan":
        x[...] = np.nan
    elif fill == "all_-inf":
        x[...] = -np.inf
    elif fill == "signed_zeros":
        x = np.where(rng.random(shape) < 0.5, -0.0, 0.0).astype(dtype)
        x.flat[::11] = -1
    (y_ref, idx_ref), (y, idx) = max_pool_as_reference(x, **kwargs)
    assert_array_equal(np.signbit(y), np.signbit(y_ref))
    g = H.normal(rng, y.shape, dtype)
    same_at_thread_counts(lambda: Fn.max_pool2d_backward(g, idx, shape),
                          R.max_pool2d_backward(g, idx_ref, shape))


@pytest.mark.parametrize("shape, kwargs", [
    ((1, 2, 21, 2000), dict(kernel_size=3, stride=2, padding=1)),   # bands of 2 output rows
    ((2, 3, 13, 1500), dict(kernel_size=3, stride=1, padding=1)),   # 7 bands of 2 rows
    ((2, 3, 11, 12), dict(kernel_size=2, stride=(3, 2), padding=1)),  # rows between windows
    ((2, 3, 9, 10), dict(kernel_size=(1, 3), stride=(1, 2))),
    ((2, 3, 9, 10), dict(kernel_size=(3, 1), stride=(2, 1), padding=(1, 0))),
    ((2, 2, 10, 11), dict(kernel_size=3, stride=2, ceil_mode=True)),  # overhang past the end
    ((3, 2, 7, 7), dict(kernel_size=(2, 3), stride=(2, 1), padding=1, ceil_mode=True)),
    ((64, 3, 8, 8), dict(kernel_size=2, stride=2, padding=1)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_phased_bands_vs_reference(shape, kwargs, dtype):
    """2x2 and 3x3 windows with strides (1, 1) or (2, 2) go in bands of output rows staged
    in row and column phases (_pool.max_pool_phased_band), the other shapes here through
    max_pool_row's sweeps: values, first-max ties, NaNs and all -inf windows (an input
    plane of -inf: indices at each window's first real tap) as the reference, at 1 and 2
    threads."""
    rng = np.random.default_rng(29)
    x = H.with_specials(rng, shape, dtype, fraction=0.05)
    x[-1, -1] = -np.inf
    max_pool_as_reference(x, **kwargs)


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((3, 4, 9, 30), (4, 1, 3, 3), dict(padding=1, groups=4)),          # depthwise, 30 a row
    ((2, 3, 200, 5), (3, 1, 3, 3), dict(padding=(2, 1), groups=3)),     # 5 a row, many bands
    ((2, 2, 11, 19), (4, 1, 5, 5), dict(padding=2, groups=2)),          # 2 outputs a group
    ((2, 2, 12, 23), (2, 1, 3, 7), dict(padding=(1, 3), dilation=(2, 1), groups=2)),
    ((2, 3, 13, 40), (3, 1, 2, 9), dict(padding=(0, 4), groups=3)),     # 9 wide: per tap
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_direct_weight_grad_padded_rows_vs_reference(x_shape, w_shape, kwargs, dtype):
    """The per-plane weight gradient (one output per group) reads zero-padded band copies
    of its input rows, one pass per kernel row (_conv.direct_weight_grad): values as the
    reference, including a sample whose grad_out plane holds an inf (that plane goes tap by
    tap, so the padding adds no 0 * inf) and an inf in x, at 1 and 2 threads."""
    rng = np.random.default_rng(31)
    x, w = H.normal(rng, x_shape, dtype), H.normal(rng, w_shape, dtype)
    g = H.normal(rng, R.conv2d(x, w, **kwargs).shape, dtype)
    for case in ("finite", "inf in grad_out", "inf in x"):
        if case == "inf in grad_out":
            g = g.copy()
            g[-1, 0, 0, 0] = np.inf
        elif case == "inf in x":
            x = x.copy()
            x[0, -1, 1, 2] = -np.inf
        expected = R.conv2d_backward(g, x, w, **kwargs)
        for n in THREADS:
            with num_threads(n):
                got = Fn.conv2d_backward(g, x, w, algorithm="direct", **kwargs)
            for name, r, e in zip(("grad_x", "grad_w", "grad_b"), got, expected):
                assert_close(r, e, err_msg=f"{case} {name} threads={n}: ")


@pytest.mark.parametrize("shape, kwargs", [
    ((2, 3, 9, 56), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 3, 9, 57), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),   # odd W
    ((2, 2, 7, 41), dict(kernel_size=(2, 5), stride=(1, 2), padding=(1, 2),
                         count_include_pad=False)),
    ((1, 2, 6, 40), dict(kernel_size=4, stride=2, padding=2, divisor_override=3)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool_backward_stride_2_rows_vs_reference(shape, kwargs, dtype):
    """Average pooling's backward with overlapping windows and column stride 2 spreads a
    window row's shares into its even and odd columns, then interleaves them
    (_pool.avg_pool_grad_plane_rows): as the reference, at 1 and 2 threads, the same bits
    at both."""
    rng = np.random.default_rng(37)
    x = H.normal(rng, shape, dtype)
    g = H.normal(rng, R.avg_pool2d(x, **kwargs).shape, dtype)
    same_at_thread_counts(lambda: Fn.avg_pool2d_backward(g, shape, **kwargs),
                          R.avg_pool2d_backward(g, shape, **kwargs))


@pytest.mark.parametrize("shape, kwargs", [
    ((2, 3, 8, 8), dict(kernel_size=2)),                       # rows of 4 outputs (width 8)
    ((3, 5, 6, 16), dict(kernel_size=2, stride=2)),            # width 16; bands across planes
    ((1, 2, 6, 40), dict(kernel_size=2, stride=2)),            # rows of 20
    ((3, 2, 4, 2), dict(kernel_size=2, divisor_override=3)),
    ((2, 2, 10, 12), dict(kernel_size=2, ceil_mode=True, count_include_pad=False)),
    ((1, 1, 2, 2), dict(kernel_size=2)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool_tiled_2x2_vs_reference(shape, kwargs, dtype):
    """2x2 windows with stride 2 that tile the plane exactly go in bands of rows across the
    planes (_pool.avg_pool_tiled_rows, avg_pool_grad_tiled_rows), each element of grad_x
    written once: forward and backward as the reference, -0.0 shares giving 0.0, at 1 and
    2 threads, the same bits at both."""
    rng = np.random.default_rng(43)
    x = H.normal(rng, shape, dtype)
    same_at_thread_counts(lambda: Fn.avg_pool2d(x, **kwargs), R.avg_pool2d(x, **kwargs))
    g = H.normal(rng, R.avg_pool2d(x, **kwargs).shape, dtype)
    g.flat[::7] = -0.0
    got = same_at_thread_counts(lambda: Fn.avg_pool2d_backward(g, shape, **kwargs),
                                R.avg_pool2d_backward(g, shape, **kwargs))
    for r in got:
        assert not np.signbit(r[r == 0]).any()


def test_pool_work_rule():
    """Pooling's work estimate: window taps over _POOL_WORK_SCALE for windows of up to 4
    taps, over _POOL_BIG_WINDOW_SCALE for bigger ones, but whole-row windows (global
    pooling) count every tap: a batch of 7x7 global poolings gets the second thread from
    2**18 taps, banded 3x3 windows from 2**20, 2x2 windows from 2**21."""
    from cnnx._shapes import prepare_max_pool2d
    previous = cnnx.set_num_threads(2)
    try:
        x = np.zeros((16, 512, 7, 7), np.float32)
        _, glob, _ = prepare_max_pool2d(x, 7, None, 0, 1, False)
        _, banded, _ = prepare_max_pool2d(x, 3, 2, 1, 1, False)
        _, two, _ = prepare_max_pool2d(x, 2, 2, 0, 1, False)
        assert Fn._pool_work(glob, 16 * 512) == 16 * 512 * 49
        assert (Fn._pool_work(banded, 16 * 512 * 16)
                == 16 * 512 * 16 * 9 // Fn._POOL_BIG_WINDOW_SCALE)
        assert Fn._pool_work(two, 16 * 512 * 9) == 16 * 512 * 9 * 4 // Fn._POOL_WORK_SCALE
        assert Fn._threads_for(Fn._pool_work(glob, 16 * 512), 16 * 512) == 2
        assert Fn._threads_for(Fn._pool_work(banded, 16 * 512 * 16), 16 * 512 * 4) == 2
        assert Fn._threads_for(Fn._pool_work(banded, 4 * 512 * 16), 4 * 512 * 4) == 1
        assert Fn._threads_for(Fn._pool_work(two, 16 * 512 * 9), 16 * 512 * 3) == 1
    finally:
        cnnx.set_num_threads(previous)


def test_gemm_blas_threads_rule():
    """The GEMM paths give BLAS one thread inside their own parallel loops and for calls too
    small for a second thread, cnnx's thread count for one big work item of big GEMMs."""
    previous = cnnx.set_num_threads(2)
    try:
        assert Fn._gemm_blas_threads(2, 1 << 30) == 1
        assert Fn._gemm_blas_threads(1, Fn._PARALLEL_MIN_WORK - 1) == 1
        assert Fn._gemm_blas_threads(1, Fn._PARALLEL_MIN_WORK) == 2
        # ... and for a single work item only when its GEMM calls are big enough
        assert Fn._gemm_blas_threads(1, 1 << 30, Fn.GEMM_BLAS_THREADS_MIN_CALL - 1) == 1
        assert Fn._gemm_blas_threads(1, 1 << 30, Fn.GEMM_BLAS_THREADS_MIN_CALL) == 2
        cnnx.set_num_threads(1)
        assert Fn._gemm_blas_threads(1, 1 << 30) == 1
    finally:
        cnnx.set_num_threads(previous)


@pytest.mark.parametrize("shape, kwargs", [
    ((1, 2, 21, 2000), dict(kernel_size=3, stride=2, padding=1)),   # bands of 2 output rows
    ((2, 3, 13, 1500), dict(kernel_size=3, stride=1, padding=1)),   # 7 bands of 2 rows
    ((2, 2, 10, 11), dict(kernel_size=3, stride=2, ceil_mode=True, count_include_pad=False)),
    ((3, 2, 8, 8), dict(kernel_size=3, stride=2, padding=1, divisor_override=5)),
    ((64, 3, 5, 6), dict(kernel_size=3, stride=1, padding=1, ceil_mode=True)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool_phased_bands_vs_reference(shape, kwargs, dtype):
    """3x3 average pooling with strides 1 or 2 (float64: 1) sums bands of output rows
    staged in row and column phases with zero padding (_pool.avg_pool_phased_band): as the
    reference, inf and NaN included, at 1 and 2 threads, the same bits at both."""
    rng = np.random.default_rng(41)
    x = H.with_specials(rng, shape, dtype, fraction=0.02)
    same_at_thread_counts(lambda: Fn.avg_pool2d(x, **kwargs), R.avg_pool2d(x, **kwargs))


def test_conv_blocked_weight_grad_runs(monkeypatch):
    """The blocked weight gradient sums in BLOCKED_GW_RUNS runs, fewer when their partial
    sums would exceed BLOCKED_GW_MAX_VALUES (down to one run): the same result within
    rounding, and bit-identical at 1 and 2 threads for each setting."""
    import _reliability_helpers as RH

    rng = np.random.default_rng(19)
    x, w = H.normal(rng, (5, 3, 12, 11)), H.normal(rng, (7, 3, 3, 3))
    g = H.normal(rng, R.conv2d(x, w, padding=1).shape)
    expected = R.conv2d_backward(g, x, w, padding=1)[1]
    for limit in (1 << 22, 1):
        monkeypatch.setattr(Fn, "BLOCKED_GW_MAX_VALUES", limit)
        got = []
        for n in (1, 2):
            with RH.forced_threads(n):
                got.append(Fn.conv2d_backward(g, x, w, padding=1, algorithm="direct")[1])
        assert_close(got[0], expected)
        assert_same(got[1], got[0], f"limit {limit}: 2 threads vs 1")


def test_conv_blocked_direct_fallbacks():
    """Where the blocked kernels do not apply, 'direct' runs the per-plane loops: one output
    per group, strides over 8, kernels spanning over BLOCKED_MAX_SPAN rows or columns, a
    band of one row over BLOCKED_MAX_BAND_VALUES, and padding next to a non-finite weight
    (forward, input gradient) or grad_out (weight gradient)."""
    rng = np.random.default_rng(18)

    def spec_of(x_shape, w_shape, **kw):
        kw = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **kw}
        return Fn.prepare_conv2d(np.zeros(x_shape), np.zeros(w_shape), None, **kw)[3]

    w = np.ones((4, 2, 3, 3))
    assert Fn._blocked_forward_band(spec_of((1, 2, 40, 40), w.shape, stride=8), w) > 0
    assert Fn._blocked_forward_band(spec_of((1, 2, 40, 40), w.shape, stride=9), w) == 0
    assert Fn._blocked_forward_band(spec_of((1, 2, 40, 40), w.shape, stride=(8, 9)), w) == 0
    assert Fn._blocked_forward_band(spec_of((1, 2, 9, 2100), w.shape, dilation=(1, 512)), w) > 0
    assert Fn._blocked_forward_band(spec_of((1, 2, 9, 2100), w.shape, dilation=(1, 513)), w) == 0
    assert Fn._blocked_forward_band(spec_of((1, 4, 9, 9), (4, 1, 3, 3), groups=4),
                                    np.ones((4, 1, 3, 3))) == 0
    huge = spec_of((1, 2, 3000, 3000), (4, 2, 2, 2), dilation=2999)
    assert Fn._blocked_forward_band(huge, np.ones((4, 2, 2, 2))) == 0
    w_inf = w.copy()
    w_inf[1, 0, 0, 0] = np.inf
    padded = spec_of((1, 2, 6, 6), w.shape, padding=1)
    assert Fn._blocked_forward_band(padded, w_inf) == 0
    assert Fn._blocked_input_grad_band(padded, w_inf) == 0
    assert Fn._blocked_forward_band(spec_of((1, 2, 6, 6), w.shape), w_inf) > 0   # no padding
    assert Fn._blocked_weight_grad_band(padded, False) == 0
    # and the results are still the formula's
    x = H.normal(rng, (2, 2, 6, 6))
    for weight, kw in [(w_inf, dict(padding=1)), (w_inf, {}), (w, dict(stride=9, padding=4))]:
        with np.errstate(invalid="ignore"):
            y = Fn.conv2d(x, weight, algorithm="direct", **kw)
            assert_close(y, R.conv2d(x, weight, **kw))
            g = H.with_specials(rng, y.shape, fraction=0.1)
            for r, e in zip(Fn.conv2d_backward(g, x, weight, algorithm="direct", **kw),
                            R.conv2d_backward(g, x, weight, **kw)):
                assert_close(r, e)


def test_auto_picks_blocked_direct_where_it_pays():
    def pick(x_shape, w_shape, backward=False, **kw):
        kw = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1, **kw}
        w = np.ones(w_shape)
        spec = Fn.prepare_conv2d(np.zeros(x_shape), w, None, **kw)[3]
        return Fn._choose_algorithm("auto", spec, w, np.ones(x_shape), backward=backward)

    assert pick((64, 1, 28, 28), (6, 1, 5, 5)) == "direct"                   # lenet
    assert pick((64, 6, 14, 14), (16, 6, 5, 5), padding=0) == "direct"
    assert pick((64, 6, 14, 14), (16, 6, 5, 5), backward=True, padding=0) == "direct"
    assert pick((64, 3, 32, 32), (16, 3, 3, 3), stride=2) == "direct"
    assert pick((64, 3, 32, 32), (16, 3, 3, 3), backward=True, stride=2) == "gemm"
    assert pick((64, 3, 32, 32), (32, 3, 3, 3), backward=True) == "gemm"      # 32 outputs
    assert pick((8, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3) == "direct"
    assert pick((8, 3, 32, 32), (65, 3, 3, 3)) == "gemm"                       # > 64 outputs
    assert pick((8, 27, 14, 14), (32, 27, 5, 5)) == "gemm"                     # 675 taps
    assert pick((8, 64, 14, 14), (32, 64, 1, 1), padding=0) == "gemm"          # 1x1
    assert pick((64, 32, 32, 32), (64, 32, 3, 3)) == "winograd"                # Winograd first


def test_set_num_threads_roundtrip():
    before = cnnx.get_num_threads()
    with num_threads(2):
        assert cnnx.get_num_threads() == 2
        with num_threads(1):
            assert cnnx.get_num_threads() == 1
        assert cnnx.get_num_threads() == 2
    assert cnnx.get_num_threads() == before
    with pytest.raises(ValueError, match="positive"):
        cnnx.set_num_threads(0)
    with pytest.raises(TypeError, match="positive int"):
        cnnx.set_num_threads(1.5)
    assert cnnx.get_num_threads() == before


# --------------------------------------------------------------------------
# vs PyTorch
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


TORCH_DTYPES = st.sampled_from([np.float32, np.float64])


def assert_vs_torch(got, expected, err_msg=""):
    assert got.shape == expected.shape, (err_msg, got.shape, expected.shape)
    assert got.dtype == expected.dtype, (err_msg, got.dtype, expected.dtype)
    if got.dtype == np.float64:
        rtol, atol = 1e-10, 1e-12 * max(1.0, float(np.max(np.abs(expected), initial=0)))
    else:
        rtol, atol = tolerances(np.float32, expected)
    assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=err_msg)


@given(cfg=H.conv_configs(), dtype=TORCH_DTYPES)
def test_conv2d_and_backward_vs_torch(torch, cfg, dtype):
    x, w, b = H.conv_arrays(cfg, dtype)
    y_t = H.torch_conv2d(x, w, b, **cfg["kwargs"])
    g = H.normal(np.random.default_rng(cfg["seed"] + 1), y_t.shape, dtype)
    grads_t = H.torch_conv2d_backward(g, x, w, **cfg["kwargs"])
    for algorithm in ALGORITHMS:
        assert_vs_torch(Fn.conv2d(x, w, b, algorithm=algorithm, **cfg["kwargs"]), y_t, algorithm)
        grads = Fn.conv2d_backward(g, x, w, algorithm=algorithm, **cfg["kwargs"])
        for name, r, e in zip(("grad_x", "grad_w", "grad_b"), grads, grads_t):
            assert_vs_torch(r, e, f"{name} {algorithm}")


@given(cfg=H.pool_configs("max"), dtype=TORCH_DTYPES)
def test_max_pool2d_and_backward_vs_torch(torch, cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    x = H.with_specials(rng, cfg["x_shape"], dtype, fraction=rng.choice([0.0, 0.1, 0.5]))
    y_t, idx_t = H.torch_max_pool2d(x, **cfg["kwargs"])
    y, idx = Fn.max_pool2d(x, **cfg["kwargs"])
    assert_same(y, y_t, "values")                  # exactly, NaN and +-inf included
    assert_same(idx, idx_t, "indices")
    g = H.normal(rng, y.shape, dtype)
    assert_vs_torch(Fn.max_pool2d_backward(g, idx, x.shape),
                    H.torch_max_pool2d_backward(g, x, **cfg["kwargs"]))


@given(cfg=H.pool_configs("avg"), dtype=TORCH_DTYPES)
def test_avg_pool2d_and_backward_vs_torch(torch, cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    x = H.normal(rng, cfg["x_shape"], dtype)
    y_t = H.torch_avg_pool2d(x, **cfg["kwargs"])
    assert_vs_torch(Fn.avg_pool2d(x, **cfg["kwargs"]), y_t)
    g = H.normal(rng, y_t.shape, dtype)
    assert_vs_torch(Fn.avg_pool2d_backward(g, x.shape, **cfg["kwargs"]),
                    H.torch_avg_pool2d_backward(g, x, **cfg["kwargs"]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_nan_inf_vs_torch(torch, dtype):
    rng = np.random.default_rng(3)
    x = H.with_specials(rng, (2, 3, 5, 4), dtype, fraction=0.5)
    x.flat[:4] = [0.0, -0.0, nan, -inf]
    g = H.normal(rng, x.shape, dtype)
    assert_same(Fn.relu(x), H.torch_relu(x))
    assert_same(Fn.relu_backward(g, x), H.torch_relu_backward(g, x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_nan_inf_propagation_vs_torch(torch, dtype):
    x = np.array([[[[nan, 1, -inf, -inf, inf, 2],
                    [2, nan, -inf, -inf, nan, inf],
                    [-inf, -inf, 3, 3, 0, 0],
                    [-inf, -inf, 3, 3, -0.0, 0]]]], dtype=dtype)
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1),
               dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1), ceil_mode=True)):
        y, idx = Fn.max_pool2d(x, **kw)
        y_t, idx_t = H.torch_max_pool2d(x, **kw)
        assert_same(y, y_t, str(kw))
        assert_same(idx, idx_t, str(kw))
        g = np.arange(1, y.size + 1, dtype=dtype).reshape(y.shape)
        assert_same(Fn.max_pool2d_backward(g, idx, x.shape),
                    H.torch_max_pool2d_backward(g, x, **kw))
    y, idx = Fn.max_pool2d(x, 2)
    # last NaN of the first window wins; a window of -inf points at its first element
    assert idx[0, 0, 0, 0] == 7 and np.isnan(y[0, 0, 0, 0])
    assert idx[0, 0, 1, 0] == 12 and y[0, 0, 1, 0] == -inf


# --------------------------------------------------------------------------
# numerical gradients (float64, compiled backward vs central differences)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kwargs", [
    dict(stride=2, padding=1),
    dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1), groups=2),
    dict(padding="same", dilation=2),
], ids=["strided", "grouped-dilated", "same"])
def test_conv2d_backward_numerical(algorithm, kwargs):
    rng = np.random.default_rng(11)
    x, w, b = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 1 if "groups" in kwargs
                                                                    else 2, 3, 2)), \
        rng.standard_normal(2)
    y = Fn.conv2d(x, w, b, algorithm=algorithm, **kwargs)
    g = rng.standard_normal(y.shape)
    gx, gw, gb = Fn.conv2d_backward(g, x, w, algorithm=algorithm, **kwargs)
    check_gradient(lambda x_: Fn.conv2d(x_, w, b, algorithm=algorithm, **kwargs), x, gx,
                   grad_out=g)
    check_gradient(lambda w_: Fn.conv2d(x, w_, b, algorithm=algorithm, **kwargs), w, gw,
                   grad_out=g)
    check_gradient(lambda b_: Fn.conv2d(x, w, b_, algorithm=algorithm, **kwargs), b, gb,
                   grad_out=g)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=1, dilation=(2, 1)),
])
def test_max_pool2d_backward_numerical(kwargs):
    rng = np.random.default_rng(12)
    # distinct, well separated values: the arg-max does not move under +-eps
    x = (rng.permutation(2 * 3 * 6 * 5) * 0.1).reshape(2, 3, 6, 5)
    y, idx = Fn.max_pool2d(x, **kwargs)
    g = rng.standard_normal(y.shape)
    check_gradient(lambda x_: Fn.max_pool2d(x_, **kwargs)[0], x,
                   Fn.max_pool2d_backward(g, idx, x.shape), grad_out=g)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), divisor_override=5),
])
def test_avg_pool2d_backward_numerical(kwargs):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 6, 5))
    g = rng.standard_normal(Fn.avg_pool2d(x, **kwargs).shape)
    check_gradient(lambda x_: Fn.avg_pool2d(x_, **kwargs), x,
                   Fn.avg_pool2d_backward(g, x.shape, **kwargs), grad_out=g)


def test_relu_backward_numerical():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 3, 4, 4))
    x[np.abs(x) < 1e-3] = 0.5                    # stay away from the kink
    g = rng.standard_normal(x.shape)
    check_gradient(Fn.relu, x, Fn.relu_backward(g, x), grad_out=g)


def test_check_gradient_detects_a_wrong_gradient():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((1, 1, 4, 4))
    g = rng.standard_normal((1, 1, 2, 2))
    wrong = Fn.avg_pool2d_backward(g, x.shape, 2) * 1.01
    with pytest.raises(AssertionError):
        check_gradient(lambda x_: Fn.avg_pool2d(x_, 2), x, wrong, grad_out=g)


# --------------------------------------------------------------------------
# memory layouts: same results, inputs never modified
# --------------------------------------------------------------------------
# non-contiguous (or read-only) spellings of the same values; test_reliability.py
# runs every layout of H.LAYOUTS
LAYOUTS = {k: H.LAYOUTS[k] for k in ("fortran", "strided", "negative-strides", "readonly",
                                     "transposed")}


def _op_cases():
    rng = np.random.default_rng(21)
    x = H.with_ties(rng, (2, 4, 6, 5)) + rng.standard_normal((2, 4, 6, 5)) * 0.01
    w = rng.standard_normal((4, 2, 3, 2))
    b = rng.standard_normal(4)
    y = Fn.conv2d(x, w, b, padding=1, groups=2)
    gy = rng.standard_normal(y.shape)
    _, idx = Fn.max_pool2d(x, 2, stride=1)
    gp = rng.standard_normal(idx.shape)
    ga = rng.standard_normal(Fn.avg_pool2d(x, 3, stride=2, padding=1).shape)
    cases = []
    for algorithm in ALGORITHMS:
        cases.append((f"conv2d-{algorithm}",
                      lambda x, w, b, algorithm=algorithm: Fn.conv2d(
                          x, w, b, padding=1, groups=2, algorithm=algorithm), (x, w, b)))
        cases.append((f"conv2d_backward-{algorithm}",
                      lambda g, x, w, algorithm=algorithm: Fn.conv2d_backward(
                          g, x, w, padding=1, groups=2, algorithm=algorithm), (gy, x, w)))
    cases += [
        ("max_pool2d", lambda x: Fn.max_pool2d(x, 2, stride=1), (x,)),
        ("max_pool2d_backward", lambda g, i: Fn.max_pool2d_backward(g, i, x.shape), (gp, idx)),
        ("avg_pool2d", lambda x: Fn.avg_pool2d(x, 3, stride=2, padding=1), (x,)),
        ("avg_pool2d_backward",
         lambda g: Fn.avg_pool2d_backward(g, x.shape, 3, stride=2, padding=1), (ga,)),
        ("relu", Fn.relu, (x - 0.5,)),
        ("relu_backward", Fn.relu_backward, (gy, y)),
        ("unbatched-depthwise-conv2d", lambda x, w: Fn.conv2d(x, w, stride=2, groups=4),
         (x[0], w[:, :1].copy())),
    ]
    return cases


OP_CASES = _op_cases()


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name, op, args", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_layouts_give_same_result_and_inputs_unchanged(name, op, args, layout):
    expected = _as_tuple(op(*args))
    transformed = [LAYOUTS[layout](arg) for arg in args]
    if layout != "readonly":
        assert not all(t.flags.c_contiguous for t in transformed if t.ndim > 1)
    before = [t.copy() for t in transformed]
    got = _as_tuple(op(*transformed))
    for r, e in zip(got, expected):
        assert_same(r, e, f"{name} {layout}")
        assert r.flags.writeable
        assert not any(np.shares_memory(r, t) for t in transformed)
    for t, t0 in zip(transformed, before):
        assert_same(t, t0, "input modified")


@pytest.mark.parametrize("name, op, args", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_contiguous_inputs_unchanged_and_outputs_fresh(name, op, args):
    before = [arg.copy() for arg in args]
    results = _as_tuple(op(*args))
    for arg, arg0 in zip(args, before):
        assert_same(arg, arg0, "input modified")
    for r in results:
        assert not any(np.shares_memory(r, arg) for arg in args)


# --------------------------------------------------------------------------
# empty batch, dtypes
# --------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_batch(algorithm):
    w = np.ones((3, 2, 3, 3))
    x = np.zeros((0, 2, 6, 5))
    y = Fn.conv2d(x, w, np.ones(3), stride=2, padding=1, algorithm=algorithm)
    assert y.shape == (0, 3, 3, 3) and y.dtype == np.float64
    gx, gw, gb = Fn.conv2d_backward(np.zeros(y.shape), x, w, stride=2, padding=1,
                                    algorithm=algorithm)
    assert gx.shape == x.shape
    assert_same(gw, np.zeros_like(w))
    assert_same(gb, np.zeros(3))
    y, idx = Fn.max_pool2d(x, 2, ceil_mode=True)
    assert y.shape == idx.shape == (0, 2, 3, 3) and idx.dtype == np.int64
    assert Fn.max_pool2d_backward(y, idx, x.shape).shape == x.shape
    ya = Fn.avg_pool2d(x.astype(np.float32), 3, stride=2, padding=1)
    assert ya.shape == (0, 2, 3, 3) and ya.dtype == np.float32
    assert Fn.avg_pool2d_backward(ya, x.shape, 3, stride=2, padding=1).shape == x.shape
    assert Fn.relu(x).shape == x.shape


def test_empty_batch_shapes_like_torch(torch):
    x = np.zeros((0, 2, 6, 5))
    w = np.ones((3, 2, 3, 3))
    assert Fn.conv2d(x, w, padding=1).shape == H.torch_conv2d(x, w, None, padding=1).shape
    assert (Fn.max_pool2d(x, 2, ceil_mode=True)[0].shape
            == H.torch_max_pool2d(x, kernel_size=2, ceil_mode=True)[0].shape)
    assert Fn.avg_pool2d(x, 3, 2, 1).shape == H.torch_avg_pool2d(x, kernel_size=3, stride=2,
                                                                  padding=1).shape


@pytest.mark.parametrize("dtype, expected", [
    (np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float16),
    (np.int8, np.float64), (np.int32, np.float64), (np.int64, np.float64),
    (np.uint16, np.float64), (np.bool_, np.float64),
])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_dtypes(dtype, expected, algorithm):
    rng = np.random.default_rng(31)
    x = rng.integers(0, 2, size=(2, 2, 5, 5)).astype(dtype)
    w = rng.integers(0, 2, size=(3, 2, 2, 2)).astype(dtype)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y = Fn.conv2d(x, w, algorithm=algorithm)
    assert y.dtype == expected
    assert_array_equal(y, R.conv2d(x64, w64))               # small integers: exact
    gx, gw, gb = Fn.conv2d_backward(y.astype(dtype) if dtype != np.bool_ else y > 1, x, w,
                                    algorithm=algorithm)
    assert gx.dtype == gw.dtype == gb.dtype == expected
    yp, idx = Fn.max_pool2d(x, 2)
    assert yp.dtype == expected and idx.dtype == np.int64
    assert_same(idx, R.max_pool2d(x64, 2)[1])
    assert_array_equal(yp, R.max_pool2d(x64, 2)[0])
    assert Fn.max_pool2d_backward(yp, idx, x.shape).dtype == expected
    ya = Fn.avg_pool2d(x, 2)
    assert ya.dtype == expected
    assert_array_equal(ya, R.avg_pool2d(x64, 2))             # quarters: exact
    assert Fn.avg_pool2d_backward(ya, x.shape, 2).dtype == expected
    yr = Fn.relu(x)
    assert yr.dtype == expected
    assert_array_equal(yr, x64)
    assert Fn.relu_backward(x, x).dtype == expected


def test_mixed_dtypes_promote():
    x32 = np.ones((1, 1, 3, 3), np.float32)
    assert Fn.conv2d(x32, np.ones((1, 1, 2, 2), np.float64)).dtype == np.float64
    assert Fn.conv2d(x32, np.ones((1, 1, 2, 2), np.float32)).dtype == np.float32
    y = Fn.conv2d(x32, np.ones((1, 1, 2, 2), np.float32), np.ones(1, np.int64))
    assert y.dtype == np.float64
    assert_array_equal(y, np.full((1, 1, 2, 2), 5.0))


def test_relu_keeps_0d_shape():
    # regression: np.ascontiguousarray used to turn a 0-d array into shape (1,)
    for module in (Fn, R):
        y = module.relu(np.array(-3.0))
        assert y.shape == () and y == 0
        g = module.relu_backward(np.array(2.0), np.array(3.0))
        assert g.shape == () and g == 2


# --------------------------------------------------------------------------
# bad inputs: same errors from the compiled path and the reference
# --------------------------------------------------------------------------
X = np.zeros((1, 2, 5, 5))
W = np.zeros((3, 2, 3, 3))
G_CONV = np.zeros((1, 3, 3, 3))
G_POOL = np.zeros((1, 2, 2, 2))
IDX = np.zeros((1, 2, 2, 2), dtype=np.int64)


def _idx(value):
    idx = IDX.copy()
    idx[0, 1, 1, 0] = value
    return idx


BAD = [
    # (op, args, kwargs, exception, match)
    ("conv2d", (np.zeros((2, 5, 5, 1, 1)), W), {}, ValueError, r"x must be 3-D or 4-D"),
    ("conv2d", (np.zeros((5, 5)), W), {}, ValueError, r"x must be 3-D or 4-D .* got 2-D"),
    ("conv2d", (X, np.zeros((3, 2, 3))), {}, ValueError, r"weight must be 4-D"),
    ("conv2d", (np.zeros((1, 3, 5, 5)), W), {}, ValueError, r"x has 3 channels but weight"),
    ("conv2d", (X, np.zeros((3, 1, 3, 3))), dict(groups=2), ValueError,
     r"out_channels \(3\) must be divisible by groups \(2\)"),
    ("conv2d", (np.zeros((1, 4, 5, 5)), np.zeros((4, 1, 3, 3))), dict(groups=2), ValueError,
     r"x has 4 channels .* groups=2 expects 2"),
    ("conv2d", (X, W), dict(groups=0), ValueError, r"groups must be a positive int"),
    ("conv2d", (X, W), dict(groups=1.0), TypeError, r"groups must be an int"),
    ("conv2d", (X, W, np.zeros(2)), {}, ValueError, r"bias must have shape \(3,\)"),
    ("conv2d", (X, W, np.zeros((3, 1))), {}, ValueError, r"bias must have shape \(3,\)"),
    ("conv2d", (np.zeros((1, 2, 2, 2)), W), {}, ValueError,
     r"kernel is larger than the padded input"),
    ("conv2d", (X, W), dict(dilation=3), ValueError, r"kernel is larger than the padded input"),
    ("conv2d", (X, W), dict(stride=0), ValueError, r"stride must be positive"),
    ("conv2d", (X, W), dict(stride=(1, -1)), ValueError, r"stride must be positive"),
    ("conv2d", (X, W), dict(dilation=0), ValueError, r"dilation must be positive"),
    ("conv2d", (X, W), dict(padding=-1), ValueError, r"padding must be non-negative"),
    ("conv2d", (X, W), dict(padding=(0, -2)), ValueError, r"padding must be non-negative"),
    ("conv2d", (X, W), dict(stride=(1, 2, 3)), ValueError,
     r"stride must be an int or a pair of ints, got a sequence of length 3"),
    ("conv2d", (X, W), dict(padding=()), ValueError, r"padding must be .* length 0"),
    ("conv2d", (X, W), dict(stride=1.5), TypeError, r"stride must be an int or a pair of ints"),
    ("conv2d", (X, W), dict(stride=(1, 2.0)), TypeError, r"stride must be an int"),
    ("conv2d", (X, W), dict(dilation="2"), TypeError, r"dilation must be an int"),
    ("conv2d", (X, W), dict(stride=True), TypeError, r"stride must be an int"),
    ("conv2d", (X, W), dict(padding="full"), ValueError,
     r"padding must be an int, a pair, 'same' or 'valid'"),
    ("conv2d", (X, W), dict(padding="same", stride=2), ValueError,
     r"padding='same' is not supported for strided convolutions"),
    ("conv2d", (np.zeros((1, 2, 0, 5)), W), {}, ValueError, r"non-zero channels, height"),
    ("conv2d", (X.astype(complex), W), {}, TypeError, r"x must have a real numeric dtype"),
    ("conv2d", (X, W.astype(object)), {}, TypeError, r"weight must have a real numeric dtype"),
    ("conv2d", (X, W, np.array(["a", "b", "c"])), {}, TypeError,
     r"bias must have a real numeric dtype"),
    ("conv2d", (None, W), {}, TypeError, r"x must be an array"),
    ("conv2d_backward", (np.zeros((1, 3, 3, 4)), X, W), {}, ValueError,
     r"grad_out must have the shape of conv2d's output \(1, 3, 3, 3\)"),
    ("conv2d_backward", (G_CONV, X, W), dict(stride=0), ValueError, r"stride must be positive"),
    ("conv2d_backward", (G_CONV.astype(complex), X, W), {}, TypeError,
     r"grad_out must have a real numeric dtype"),
    ("max_pool2d", (np.zeros((5, 5)), 2), {}, ValueError, r"x must be 3-D or 4-D"),
    ("max_pool2d", (X, 0), {}, ValueError, r"kernel_size must be positive"),
    ("max_pool2d", (X, (2, -1)), {}, ValueError, r"kernel_size must be positive"),
    ("max_pool2d", (X, 2), dict(stride=0), ValueError, r"stride must be positive"),
    ("max_pool2d", (X, 2), dict(dilation=0), ValueError, r"dilation must be positive"),
    ("max_pool2d", (X, 2), dict(padding=-1), ValueError, r"padding must be non-negative"),
    ("max_pool2d", (X, 2), dict(padding=2), ValueError,
     r"padding should be at most half of kernel_size"),
    ("max_pool2d", (X, (3, 2)), dict(padding=(1, 2)), ValueError,
     r"padding should be at most half of kernel_size"),
    ("max_pool2d", (X, 6), {}, ValueError, r"output size is too small"),
    ("max_pool2d", (X, (2, 2, 2)), {}, ValueError, r"kernel_size must be an int or a pair"),
    ("max_pool2d", (X, 2.0), {}, TypeError, r"kernel_size must be an int"),
    ("max_pool2d", (X, "2"), {}, TypeError, r"kernel_size must be an int"),
    ("max_pool2d", (X, 2), dict(ceil_mode="yes"), TypeError, r"ceil_mode must be a bool"),
    ("max_pool2d", (np.zeros((1, 1, 1, 3)), (2, 1)), dict(stride=1, padding=(1, 0),
                                                         dilation=(2, 1)),
     ValueError, r"lies entirely in the padding"),
    ("max_pool2d", (X.astype(np.complex64), 2), {}, TypeError, r"real numeric dtype"),
    ("max_pool2d", (np.array([[["a"]]]), 1), {}, TypeError, r"real numeric dtype"),
    ("max_pool2d_backward", (G_POOL, IDX, (1, 2, 4, 4, 1)), {}, ValueError,
     r"input_shape must have 3 or 4 entries"),
    ("max_pool2d_backward", (G_POOL, IDX, "1245"), {}, TypeError, r"input_shape must be a tuple"),
    ("max_pool2d_backward", (G_POOL, IDX, (1, 2, 4.0, 4)), {}, TypeError,
     r"input_shape must be an int"),
    ("max_pool2d_backward", (G_POOL, IDX[0], (1, 2, 4, 4)), {}, ValueError,
     r"indices must have grad_out's shape"),
    ("max_pool2d_backward", (G_POOL[0], IDX[0], (1, 2, 4, 4)), {}, ValueError,
     r"grad_out must be 4-D to match input_shape"),
    ("max_pool2d_backward", (G_POOL, IDX, (1, 3, 4, 4)), {}, ValueError,
     r"do not match input_shape"),
    ("max_pool2d_backward", (G_POOL, _idx(16), (1, 2, 4, 4)), {}, IndexError,
     r"indices out of range: found 16, .* \[0, 16\)"),
    ("max_pool2d_backward", (G_POOL, _idx(-1), (1, 2, 4, 4)), {}, IndexError,
     r"indices out of range: found -1"),
    ("max_pool2d_backward", (G_POOL, IDX.astype(float), (1, 2, 4, 4)), {}, TypeError,
     r"indices must be an integer array"),
    ("max_pool2d_backward", (G_POOL.astype(object), IDX, (1, 2, 4, 4)), {}, TypeError,
     r"grad_out must have a real numeric dtype"),
    ("avg_pool2d", (X, 2), dict(divisor_override=0), ValueError,
     r"divisor_override must not be zero"),
    ("avg_pool2d", (X, 2), dict(divisor_override=1.5), TypeError, r"divisor_override must be"),
    ("avg_pool2d", (X, 2), dict(padding=2), ValueError, r"padding should be at most half"),
    ("avg_pool2d", (X, 0), {}, ValueError, r"kernel_size must be positive"),
    ("avg_pool2d", (X, 2), dict(count_include_pad="no"), TypeError,
     r"count_include_pad must be a bool"),
    ("avg_pool2d", (X, [2, 2, 2]), {}, ValueError, r"kernel_size must be an int or a pair"),
    ("avg_pool2d", (X, 2), dict(stride="1"), TypeError, r"stride must be an int"),
    ("avg_pool2d", (np.zeros(5), 2), {}, ValueError, r"x must be 3-D or 4-D"),
    ("avg_pool2d", (X.astype(complex), 2), {}, TypeError, r"real numeric dtype"),
    ("avg_pool2d_backward", (np.zeros((1, 2, 3, 2)), (1, 2, 5, 5), 2), {}, ValueError,
     r"grad_out must have the shape of avg_pool2d's output \(1, 2, 2, 2\)"),
    ("avg_pool2d_backward", (G_POOL, (1, 2, 5, 5), 2), dict(divisor_override=0), ValueError,
     r"divisor_override must not be zero"),
    ("avg_pool2d_backward", (G_POOL, (1, 2, 5), 2), {}, ValueError,
     r"grad_out must have the shape"),
    ("avg_pool2d_backward", (G_POOL, (1, 2, 5, 5), 2), dict(padding=-1), ValueError,
     r"padding must be non-negative"),
    ("relu", (np.array([1 + 2j]),), {}, TypeError, r"x must have a real numeric dtype"),
    ("relu", (np.array([None, 1.0]),), {}, TypeError, r"x must have a real numeric dtype"),
    ("relu", (np.array(["1.0"]),), {}, TypeError, r"x must have a real numeric dtype"),
    ("relu_backward", (np.zeros(3), np.zeros(4)), {}, ValueError,
     r"grad_out must have x's shape \(4\)"),
    ("relu_backward", (np.zeros(3, complex), np.zeros(3)), {}, TypeError,
     r"grad_out must have a real numeric dtype"),
]


@pytest.mark.parametrize("module", [Fn, R], ids=["functional", "reference"])
@pytest.mark.parametrize("op, args, kwargs, exc, match", BAD,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs(module, op, args, kwargs, exc, match):
    snapshot = [arg.copy() for arg in args if isinstance(arg, np.ndarray)]
    with pytest.raises(exc, match=match):
        getattr(module, op)(*args, **kwargs)
    for arg, arg0 in zip([arg for arg in args if isinstance(arg, np.ndarray)], snapshot):
        assert_same(arg, arg0)


def test_bad_inputs_raise_identical_messages():
    for op, args, kwargs, exc, _ in BAD:
        with pytest.raises(exc) as compiled:
            getattr(Fn, op)(*args, **kwargs)
        with pytest.raises(exc) as ref:
            getattr(R, op)(*args, **kwargs)
        assert str(compiled.value) == str(ref.value), op


@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward"])
def test_bad_algorithm(op):
    args = (X, W) if op == "conv2d" else (G_CONV, X, W)
    with pytest.raises(ValueError, match=r"algorithm must be one of \('auto', 'direct', 'gemm', "
                                         r"'winograd'\)"):
        getattr(Fn, op)(*args, algorithm="fft")
