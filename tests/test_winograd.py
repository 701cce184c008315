"""conv2d algorithm='winograd' (F(2x2, 3x3): 3x3 kernels, stride 1, dilation 1):
forward and backward vs the reference over every padding, group and shape
(hypothesis), several tile bands per image, 1 and 2 threads, the Winograd-domain
products in the blocked kernel and through the BLAS; what 'auto' picks; what it
refuses."""

import math
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import _helpers as H
from _reliability_helpers import forced_threads
from cnnx import functional as Fn
from cnnx import reference as R
from cnnx.testing import assert_close

THREADS = (1, 2)


@st.composite
def winograd_configs(draw):
    groups = draw(st.integers(1, 3))
    C_in, C_out = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["int", "int", "pair", "same", "valid"]))
    if kind == "int":
        p = draw(st.integers(0, 3))
        padding, ph, pw = p, p, p
    elif kind == "pair":
        ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        padding = (ph, pw)
    elif kind == "same":
        padding, ph, pw = "same", 1, 1
    else:
        padding, ph, pw = "valid", 0, 0
    H_ = draw(st.integers(max(1, 3 - 2 * ph), 9))
    W_ = draw(st.integers(max(1, 3 - 2 * pw), 9))
    unbatched = draw(st.booleans())
    x_shape = (C_in, H_, W_) if unbatched else (draw(st.integers(0, 3)), C_in, H_, W_)
    return dict(x_shape=x_shape, w_shape=(C_out, C_in // groups, 3, 3),
                bias=draw(st.booleans()),
                kwargs=dict(padding=padding, groups=groups,
                            stride=draw(st.sampled_from([1, (1, 1)])),
                            dilation=draw(st.sampled_from([1, [1, 1]]))),
                tiles=draw(st.sampled_from([1, 2, 3, 128])),
                blocked=draw(st.sampled_from([None, True, False])),
                seed=draw(st.integers(0, 2**32 - 1)))


@contextmanager
def products(blocked):
    """_winograd.forward's products in the blocked kernel (True), the BLAS (False) or as
    cnnx.functional._winograd_blocked decides (None)."""
    rule = Fn._winograd_blocked
    if blocked is not None:
        Fn._winograd_blocked = lambda C_in_g, T: blocked
    try:
        yield
    finally:
        Fn._winograd_blocked = rule


def _winograd_tiles(monkeypatch, tiles):
    """Tile bands of ``tiles`` 2x2 tiles, so small images take the many-band paths."""
    monkeypatch.setattr(Fn, "WINOGRAD_TILES", tiles)


@given(cfg=winograd_configs(), dtype=st.sampled_from([np.float64, np.float32, np.float16]))
def test_winograd_vs_reference(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    x, w = H.normal(rng, cfg["x_shape"], dtype), H.normal(rng, cfg["w_shape"], dtype)
    b = H.normal(rng, cfg["w_shape"][:1], dtype) if cfg["bias"] else None
    kw = cfg["kwargs"]
    y_ref = R.conv2d(x, w, b, **kw)
    g = H.normal(rng, y_ref.shape, dtype)
    grads_ref = R.conv2d_backward(g, x, w, **kw)
    old = Fn.WINOGRAD_TILES
    Fn.WINOGRAD_TILES = cfg["tiles"]
    try:
        results = {}
        for n in THREADS:
            with forced_threads(n), products(cfg["blocked"]):
                y = Fn.conv2d(x, w, b, algorithm="winograd", **kw)
                grads = Fn.conv2d_backward(g, x, w, algorithm="winograd", **kw)
            assert_close(y, y_ref, err_msg=f"y threads={n}: ")
            for name, r, e in zip(("grad_x", "grad_w", "grad_b"), grads, grads_ref):
                assert_close(r, e, err_msg=f"{name} threads={n}: ")
            results[n] = (y, grads[0])
        # every output has one owner: the same bits at any thread count
        for a, c in zip(results[1], results[2]):
            np.testing.assert_array_equal(a, c)
    finally:
        Fn.WINOGRAD_TILES = old


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", [0, 1, 2, (0, 1), (2, 0), "same"])
def test_winograd_medium_vs_direct(monkeypatch, dtype, padding):
    """A size 'auto' sends to Winograd (8 x 32 x 16 x 15 -> 32 channels), vs the direct loops."""
    rng = np.random.default_rng(3)
    x, w = H.normal(rng, (8, 32, 16, 15), dtype), H.normal(rng, (32, 32, 3, 3), dtype)
    b = H.normal(rng, (32,), dtype)
    y_direct = Fn.conv2d(x, w, b, padding=padding, algorithm="direct")
    g = H.normal(rng, y_direct.shape, dtype)
    grads_direct = Fn.conv2d_backward(g, x, w, padding=padding, algorithm="direct")
    for tiles, blocked in ((128, None), (128, True), (128, False), (5, True), (5, False)):
        monkeypatch.setattr(Fn, "WINOGRAD_TILES", tiles)
        for algorithm in ("winograd", "auto"):
            for n in THREADS:
                with forced_threads(n), products(blocked):
                    y = Fn.conv2d(x, w, b, padding=padding, algorithm=algorithm)
                    grads = Fn.conv2d_backward(g, x, w, padding=padding, algorithm=algorithm)
                msg = f"{algorithm} tiles={tiles} blocked={blocked} threads={n}: "
                assert_close(y, y_direct, err_msg=msg)
                for name, r, e in zip(("grad_x", "grad_w", "grad_b"), grads, grads_direct):
                    assert_close(r, e, err_msg=name + " " + msg)


def test_blocked_products_where_they_pay():
    """The blocked kernel for up to WINOGRAD_BLOCKED_MAX_C_IN input channels per group and
    bands whose runs of 16 tiles leave at most 1/8 spare; the BLAS otherwise."""
    limit = Fn.WINOGRAD_BLOCKED_MAX_C_IN
    assert Fn._winograd_blocked(limit, 128) and Fn._winograd_blocked(1, 16)
    assert not Fn._winograd_blocked(limit + 1, 128)
    assert Fn._winograd_blocked(32, 56)            # 8 spare of 64
    assert not Fn._winograd_blocked(32, 49)        # 15 spare of 64
    assert not Fn._winograd_blocked(32, 4)


@pytest.mark.parametrize("c_in, c_out", [(5, 7), (16, 16), (9, 4)])
def test_blocked_products_match_the_blas(c_in, c_out):
    """Every block width (6, the last one 4 or 6 wide, outputs past C_out computed and
    dropped) and bands that are not a multiple of 16 tiles: the blocked products against
    the BLAS ones, float64 (the same sums in another order)."""
    rng = np.random.default_rng(c_in * 31 + c_out)
    x = H.normal(rng, (3, c_in, 13, 11), np.float64)
    w = H.normal(rng, (c_out, c_in, 3, 3), np.float64)
    g = H.normal(rng, (3, c_out, 13, 11), np.float64)
    out = {}
    for blocked in (True, False):
        with products(blocked):
            out[blocked] = (Fn.conv2d(x, w, padding=1, algorithm="winograd"),
                            *Fn.conv2d_backward(g, x, w, padding=1, algorithm="winograd"))
    for a, b in zip(out[True], out[False]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _spec(x_shape, w_shape, **kw):
    from cnnx._shapes import prepare_conv2d

    return prepare_conv2d(np.zeros(x_shape), np.zeros(w_shape), None, kw.get("stride", 1),
                          kw.get("padding", 1), kw.get("dilation", 1), kw.get("groups", 1))[3]


def test_auto_picks_winograd_only_where_it_pays():
    x, w = np.ones((8, 32, 16, 16)), np.ones((32, 32, 3, 3))
    pick = Fn._choose_algorithm
    assert pick("auto", _spec(x.shape, w.shape), w, x) == "winograd"
    # not 3x3 / stride 1 / dilation 1
    # (where Winograd does not pay, convolutions of at most BLOCKED_MAX_TAPS taps and
    # BLOCKED_MAX_C_OUT outputs run the blocked direct kernels: see test_functional)
    assert pick("auto", _spec(x.shape, (32, 32, 5, 5)), np.ones((32, 32, 5, 5)), x) == "gemm"
    assert pick("auto", _spec(x.shape, w.shape, stride=2), w, x) == "direct"
    assert pick("auto", _spec(x.shape, w.shape, dilation=2), w, x) == "direct"
    # too few channels, channel pairs or tiles
    assert pick("auto", _spec((8, 3, 16, 16), (32, 3, 3, 3)), w, x) == "direct"
    assert pick("auto", _spec((8, 16, 16, 16), (16, 16, 3, 3)), w, x) == "direct"
    assert pick("auto", _spec((1, 32, 16, 16), w.shape), w, x) == "direct"
    assert pick("auto", _spec((3, 32, 16, 16), w.shape), w, x) == "direct"    # 192 tiles
    assert pick("auto", _spec((4, 32, 16, 16), w.shape), w, x) == "winograd"  # 256
    big = np.ones((512, 512, 3, 3))
    assert pick("auto", _spec((8, 256, 14, 14), (256, 256, 3, 3)), big, x) == "winograd"
    assert pick("auto", _spec((64, 512, 7, 7), big.shape), big, x) == "gemm"  # 16 per sample
    # depthwise: the direct loops when rows are long enough (DEPTHWISE_DIRECT_MIN_W), else GEMM
    assert pick("auto", _spec((8, 32, 16, 16), (32, 1, 3, 3), groups=32), w, x) == "direct"
    assert pick("auto", _spec((8, 32, 10, 10), (32, 1, 3, 3), groups=32), w, x) == "direct"
    assert pick("auto", _spec((8, 32, 9, 9), (32, 1, 3, 3), groups=32), w, x) == "gemm"
    # two or more outputs per group: the blocked direct kernels
    assert pick("auto", _spec((8, 32, 16, 16), (64, 1, 3, 3), groups=32), w, x) == "direct"
    assert pick("auto", _spec((8, 32, 16, 16), (32, 2, 3, 3), groups=16), w, x) == "direct"
    # explicit choices are kept
    assert pick("gemm", _spec(x.shape, w.shape), w, x) == "gemm"


@pytest.mark.parametrize("where", ["x", "weight", "grad_out"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_auto_avoids_winograd_for_non_finite_values(where, value):
    """Winograd's transforms subtract neighbouring values: an inf would become NaN in the
    outputs around it.  'auto' keeps the result of the formula (here: the direct loops)."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((8, 32, 16, 16)), rng.standard_normal((32, 32, 3, 3))
    g = rng.standard_normal((8, 32, 16, 16))
    {"x": x, "weight": w, "grad_out": g}[where][0, 3, 1 if where == "weight" else 5, 2] = value
    for padding in (0, 1):
        y_direct = Fn.conv2d(x, w, padding=padding, algorithm="direct")
        assert_close(Fn.conv2d(x, w, padding=padding), y_direct)
        gy = g[:, :, :y_direct.shape[2], :y_direct.shape[3]]
        for got, exp in zip(Fn.conv2d_backward(gy, x, w, padding=padding),
                            Fn.conv2d_backward(gy, x, w, padding=padding, algorithm="direct")):
            assert_close(got, exp)


@pytest.mark.parametrize("kwargs", [dict(), dict(stride=2), dict(dilation=2),
                                    dict(stride=(1, 2))])
@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward"])
def test_winograd_refuses_other_geometry(op, kwargs):
    x = np.ones((1, 2, 9, 9))
    w = np.ones((2, 2, 5, 5)) if not kwargs else np.ones((2, 2, 3, 3))
    args = (x, w)
    if op == "conv2d_backward":
        args = (Fn.conv2d(x, w, **kwargs), x, w)
    with pytest.raises(ValueError, match=r"algorithm='winograd' needs a 3x3 kernel, stride 1 "
                                         r"and dilation 1; got kernel \((3|5), (3|5)\)"):
        getattr(Fn, op)(*args, algorithm="winograd", **kwargs)


def test_winograd_does_not_touch_inputs():
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 4, 6, 6)), rng.standard_normal((4, 4, 3, 3))
    g = rng.standard_normal((2, 4, 6, 6))
    copies = [a.copy() for a in (x, w, g)]
    Fn.conv2d(x, w, padding=1, algorithm="winograd")
    Fn.conv2d_backward(g, x, w, padding=1, algorithm="winograd")
    for a, c in zip((x, w, g), copies):
        np.testing.assert_array_equal(a, c)


def test_winograd_float32_error_like_gemm():
    """F(2x2, 3x3) rounds more than a plain dot product, but little: its float32 error
    against a float64 truth stays within 3x the im2col GEMM's (measured: 0.8-1.6x)."""
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((4, 64, 16, 16)), rng.standard_normal((64, 64, 3, 3)) / 24
    g = rng.standard_normal((4, 64, 16, 16))
    truth = (Fn.conv2d(x, w, padding=1),) + Fn.conv2d_backward(g, x, w, padding=1)[:2]
    x32, w32, g32 = (a.astype(np.float32) for a in (x, w, g))

    def errors(algorithm):
        got = ((Fn.conv2d(x32, w32, padding=1, algorithm=algorithm),)
               + Fn.conv2d_backward(g32, x32, w32, padding=1, algorithm=algorithm)[:2])
        return [np.abs(r - t).max() / np.abs(t).max() for r, t in zip(got, truth)]

    for name, e_wino, e_gemm in zip(("y", "grad_x", "grad_w"), errors("winograd"),
                                    errors("gemm")):
        assert e_wino <= 3 * e_gemm, f"{name}: winograd {e_wino:.2e} vs gemm {e_gemm:.2e}"
