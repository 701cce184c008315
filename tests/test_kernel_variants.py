"""The two builds of the pooling kernels (``_pool``, and ``_pool_avx2`` = the same source
compiled with -mavx2, used on AVX2 CPUs) give bit-for-bit the same results, both equal to
the reference; the two builds of the convolution kernels (``_conv``, and ``_conv_avx2``
compiled with -mavx2 -mfma) both match the reference, their GEMM paths bit for bit, and so
do the two Winograd builds (``_winograd``, ``_winograd_avx2``, also -mavx2 -mfma); which
build runs is chosen as documented (cnnx/_kernels.py); and importing cnnx makes OpenMP and
OpenBLAS workers sleep between calls unless the user said otherwise.

The rest of the suite runs whichever build this machine picks; here both run, on rows
wide enough (up to 44 values) to go through the vectorised loops and their remainders.
"""

import os
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import _helpers as H
import cnnx
from cnnx import _build_info, _conv, _kernels, _pool, _winograd
from cnnx import functional as Fn
from cnnx import reference as R
from cnnx.testing import assert_close

try:
    HAS_AVX2 = _build_info.cpu_has_avx2()
    if HAS_AVX2:
        from cnnx import _pool_avx2
except ImportError:  # built with CNNX_NO_AVX2 or not on x86-64
    HAS_AVX2 = False

try:
    HAS_AVX2_FMA = HAS_AVX2 and _build_info.cpu_has_fma()
    if HAS_AVX2_FMA:
        from cnnx import _conv_avx2, _winograd_avx2
except ImportError:
    HAS_AVX2_FMA = False

VARIANTS = [_pool] + ([_pool_avx2] if HAS_AVX2 else [])
CONV_VARIANTS = [_conv] + ([_conv_avx2] if HAS_AVX2_FMA else [])
WINOGRAD_VARIANTS = [_winograd] + ([_winograd_avx2] if HAS_AVX2_FMA else [])
DTYPES = st.sampled_from([np.float32, np.float64])
WIDE = 44


@contextmanager
def kernels(module, threads):
    attribute = ("_conv" if module in CONV_VARIANTS
                 else "_winograd" if module in WINOGRAD_VARIANTS else "_pool")
    previous_module = getattr(Fn, attribute)
    setattr(Fn, attribute, module)
    previous_threads = cnnx.set_num_threads(threads)
    try:
        yield
    finally:
        setattr(Fn, attribute, previous_module)
        cnnx.set_num_threads(previous_threads)


def run_all(fn, *args, variants=VARIANTS, **kwargs):
    """fn's results with each build at 1 and 2 threads: {(module name, threads): results}."""
    out = {}
    for module in variants:
        for threads in (1, 2):
            with kernels(module, threads):
                res = fn(*args, **kwargs)
            out[module.__name__, threads] = res if isinstance(res, tuple) else (res,)
    return out


def assert_all_equal(results, err_msg=""):
    (first_key, first), *rest = results.items()
    for key, res in rest:
        for a, b in zip(first, res):
            assert a.dtype == b.dtype
            assert_array_equal(a, b, err_msg=f"{err_msg}: {key} vs {first_key}")


def test_the_documented_build_runs():
    expected = _pool_avx2 if HAS_AVX2 and not os.environ.get("CNNX_NO_AVX2") else _pool
    assert Fn._pool is expected
    assert _kernels.POOL_VARIANT.startswith("avx2" if expected is not _pool else "baseline")
    assert "pooling kernels" in cnnx.info_dict()
    expected = _conv_avx2 if HAS_AVX2_FMA and not os.environ.get("CNNX_NO_AVX2") else _conv
    assert Fn._conv is expected
    assert _kernels.CONV_VARIANT.startswith("avx2+fma" if expected is not _conv else "baseline")
    assert "convolution kernels" in cnnx.info_dict()
    expected = (_winograd_avx2 if HAS_AVX2_FMA and not os.environ.get("CNNX_NO_AVX2")
                else _winograd)
    assert Fn._winograd is expected
    assert _kernels.WINOGRAD_VARIANT.startswith("avx2+fma" if expected is not _winograd
                                                else "baseline")
    assert "winograd kernels" in cnnx.info_dict()


def test_cnnx_no_avx2_forces_the_baseline():
    code = ("import cnnx.functional as F, cnnx._pool as P, cnnx._conv as C, cnnx._kernels as K, "
            "cnnx._winograd as WG; print(F._pool is P, F._conv is C, F._winograd is WG, "
            "K.POOL_VARIANT, K.CONV_VARIANT, K.WINOGRAD_VARIANT)")
    out = H.run_python(code, dict(os.environ, CNNX_NO_AVX2="1"))
    assert out.startswith("True True True baseline"), out
    assert out.count("baseline (CNNX_NO_AVX2 is set)") == 3, out


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU or build has no AVX2 variant")
def test_the_avx2_build_is_a_separate_module():
    assert _pool_avx2 is not _pool
    assert _pool_avx2.max_pool_forward is not _pool.max_pool_forward
    if HAS_AVX2_FMA:
        assert _conv_avx2.forward_direct is not _conv.forward_direct
        assert _winograd_avx2.forward is not _winograd.forward


@given(groups=st.integers(1, 2), c_in=st.integers(1, 3), c_out=st.integers(1, 3),
       n=st.integers(1, 2), h=st.integers(1, 12), w=st.integers(1, WIDE),
       pad=st.tuples(st.integers(0, 2), st.integers(0, 2)), seed=st.integers(0, 2**16),
       dtype=DTYPES, blocked=st.booleans())
def test_winograd_builds_agree(groups, c_in, c_out, n, h, w, pad, seed, dtype, blocked):
    """Both Winograd builds are close to the reference, each one the same bits at 1 and 2
    threads; with the products through the BLAS (the transforms only add, subtract and
    halve) both builds give the same bits, while the blocked products (fused
    multiply-adds in the AVX2 build) may differ in the last bits."""
    rng = np.random.default_rng(seed)
    h, w = max(h, 3 - 2 * pad[0]), max(w, 3 - 2 * pad[1])
    x = H.normal(rng, (n, groups * c_in, h, w), dtype)
    wt = H.normal(rng, (groups * c_out, c_in, 3, 3), dtype)
    b = H.normal(rng, (groups * c_out,), dtype)
    kw = dict(padding=pad, groups=groups)
    y_ref = R.conv2d(x, wt, b, **kw)
    rule = Fn._winograd_blocked
    Fn._winograd_blocked = lambda C_in_g, T: blocked
    try:
        results = run_all(Fn.conv2d, x, wt, b, variants=WINOGRAD_VARIANTS,
                          algorithm="winograd", **kw)
        g = H.normal(rng, y_ref.shape, dtype)
        grads = run_all(Fn.conv2d_backward, g, x, wt, variants=WINOGRAD_VARIANTS,
                        algorithm="winograd", **kw)
    finally:
        Fn._winograd_blocked = rule
    grads_ref = R.conv2d_backward(g, x, wt, **kw)
    for key, (y,) in results.items():
        assert_close(y, y_ref, err_msg=f"conv2d winograd {key}: ")
    for key, res in grads.items():
        for name, r, e in zip(("grad_x", "grad_w", "grad_b"), res, grads_ref):
            assert_close(r, e, err_msg=f"{name} winograd {key}: ")
    for module in WINOGRAD_VARIANTS:
        for out, what in ((results, "conv2d"), (grads, "conv2d_backward")):
            assert_all_equal({k: v for k, v in out.items() if k[0] == module.__name__},
                             f"{what} winograd {module.__name__} blocked={blocked}")
    if not blocked:
        for threads in (1, 2):
            assert_all_equal({k: v for k, v in results.items() if k[1] == threads},
                             f"conv2d winograd threads={threads}")
            assert_all_equal({k: v for k, v in grads.items() if k[1] == threads},
                             f"conv2d_backward winograd threads={threads}")


@given(cfg=H.conv_configs(max_w=WIDE), dtype=DTYPES, algorithm=st.sampled_from(["direct", "gemm"]))
def test_conv_builds_agree(cfg, dtype, algorithm):
    """Both builds match the reference (rows up to 44 wide: the direct loops' vector lanes,
    masked remainders and scalar tails); the GEMM paths move data and call the same BLAS, so
    they agree bit for bit at a given thread count."""
    x, w, b = H.conv_arrays(cfg, dtype)
    x_before = x.copy()
    results = run_all(Fn.conv2d, x, w, b, variants=CONV_VARIANTS, algorithm=algorithm,
                      **cfg["kwargs"])
    y_ref = R.conv2d(x, w, b, **cfg["kwargs"])
    for key, (y,) in results.items():
        assert_close(y, y_ref, err_msg=f"conv2d {algorithm} {key}: ")
    g = H.normal(np.random.default_rng(cfg["seed"] + 1), y_ref.shape, dtype)
    grads = run_all(Fn.conv2d_backward, g, x, w, variants=CONV_VARIANTS, algorithm=algorithm,
                    **cfg["kwargs"])
    grads_ref = R.conv2d_backward(g, x, w, **cfg["kwargs"])
    for key, res in grads.items():
        for name, r, e in zip(("grad_x", "grad_w", "grad_b"), res, grads_ref):
            assert_close(r, e, err_msg=f"{name} {algorithm} {key}: ")
    if algorithm == "gemm":
        for threads in (1, 2):
            same = {k: v for k, v in grads.items() if k[1] == threads}
            assert_all_equal(same, f"conv2d_backward gemm threads={threads}")
            same = {k: v for k, v in results.items() if k[1] == threads}
            assert_all_equal(same, f"conv2d gemm threads={threads}")
    assert_array_equal(x, x_before)


@given(cfg=H.pool_configs("max", max_w=WIDE), dtype=DTYPES, data=st.sampled_from(["normal", "ties",
                                                                                  "specials"]))
def test_max_pool_builds_agree(cfg, dtype, data):
    rng = np.random.default_rng(cfg["seed"])
    make = {"normal": H.normal, "ties": H.with_ties, "specials": H.with_specials}[data]
    x = make(rng, cfg["x_shape"], dtype)
    x_before = x.copy()
    results = run_all(Fn.max_pool2d, x, **cfg["kwargs"])
    assert_all_equal(results, "max_pool2d")
    y_ref, idx_ref = R.max_pool2d(x, **cfg["kwargs"])
    y, idx = next(iter(results.values()))
    assert_array_equal(y, y_ref)
    assert_array_equal(idx, idx_ref)
    g = H.normal(rng, idx.shape, dtype)
    grads = run_all(Fn.max_pool2d_backward, g, idx, x.shape)
    assert_all_equal(grads, "max_pool2d_backward")
    assert_close(next(iter(grads.values()))[0], R.max_pool2d_backward(g, idx, x.shape))
    assert_array_equal(x, x_before)


@given(cfg=H.pool_configs("avg", max_w=WIDE), dtype=DTYPES)
def test_avg_pool_builds_agree(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    x = H.normal(rng, cfg["x_shape"], dtype)
    results = run_all(Fn.avg_pool2d, x, **cfg["kwargs"])
    assert_all_equal(results, "avg_pool2d")
    assert_close(next(iter(results.values()))[0], R.avg_pool2d(x, **cfg["kwargs"]))
    g = H.normal(rng, next(iter(results.values()))[0].shape, dtype)
    grads = run_all(Fn.avg_pool2d_backward, g, x.shape, **cfg["kwargs"])
    assert_all_equal(grads, "avg_pool2d_backward")
    assert_close(next(iter(grads.values()))[0],
                 R.avg_pool2d_backward(g, x.shape, **cfg["kwargs"]))


def test_importing_cnnx_sets_sleeping_workers_unless_the_user_did():
    code = "import os, cnnx; print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    assert H.run_python(code, env).split() == ["PASSIVE", "16"]
    env.update(OMP_WAIT_POLICY="ACTIVE", OPENBLAS_THREAD_TIMEOUT="20")
    assert H.run_python(code, env).split() == ["ACTIVE", "20"]


@pytest.mark.parametrize("shape, kwargs", [
    ((2, 5, 7, 7), dict(kernel_size=7)),                                  # global pooling
    ((1, 3, 9, 20), dict(kernel_size=(3, 20), stride=(2, 1))),            # whole rows
    ((2, 2, 6, 5), dict(kernel_size=(2, 5), stride=1, padding=(1, 0), ceil_mode=True,
                        count_include_pad=False)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool_whole_row_windows(shape, kwargs, dtype):
    """Windows spanning whole rows are summed as one contiguous run (a different order)."""
    rng = np.random.default_rng(7)
    x = H.normal(rng, shape, dtype)
    results = run_all(Fn.avg_pool2d, x, **kwargs)
    assert_all_equal(results, "avg_pool2d")
    y = next(iter(results.values()))[0]
    assert_close(y, R.avg_pool2d(x, **kwargs))
    g = H.normal(rng, y.shape, dtype)
    grads = run_all(Fn.avg_pool2d_backward, g, x.shape, **kwargs)
    assert_all_equal(grads, "avg_pool2d_backward")
    assert_close(next(iter(grads.values()))[0], R.avg_pool2d_backward(g, x.shape, **kwargs))


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    # padded rows of the forward (W_out + 25 = 1000) and of grad_x (W + 25 = 1025) fall on
    # either side of a band-size boundary: the scratch must fit both
    ((1, 1, 3, 1000), (1, 1, 1, 26), {}),
    ((1, 1, 4, 1023), (1, 1, 2, 3), dict(padding=(1, 0))),
    ((2, 3, 9, 70), (3, 1, 3, 3), dict(padding=1, groups=3)),                  # depthwise
    ((2, 4, 7, 40), (4, 2, 3, 5), dict(padding=(1, 2), dilation=(2, 1), groups=2)),
    ((1, 2, 5, 33), (2, 2, 3, 3), dict(padding=2)),    # P > D*(K-1)/2: grad_x not padded
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_conv_padded_bands(x_shape, w_shape, kwargs, dtype):
    """The direct loops' zero-padded band copies (stride 1, finite weights) against the
    reference, both builds, 1 and 2 threads; then with an inf in x and in the weight."""
    def check(x, w, g, label):
        y_ref = R.conv2d(x, w, **kwargs)
        grads_ref = R.conv2d_backward(g, x, w, **kwargs)
        results = run_all(Fn.conv2d, x, w, variants=CONV_VARIANTS, algorithm="direct",
                          **kwargs)
        grads = run_all(Fn.conv2d_backward, g, x, w, variants=CONV_VARIANTS,
                        algorithm="direct", **kwargs)
        for key in results:
            assert_close(results[key][0], y_ref, err_msg=f"conv2d{label} {key}: ")
            for name, r, e in zip(("grad_x", "grad_w", "grad_b"), grads[key], grads_ref):
                assert_close(r, e, err_msg=f"{name}{label} {key}: ")

    rng = np.random.default_rng(3)
    x, w = H.normal(rng, x_shape, dtype), H.normal(rng, w_shape, dtype)
    g = H.normal(rng, R.conv2d(x, w, **kwargs).shape, dtype)
    check(x, w, g, "")
    x[0, 0, 0, x.shape[3] // 2] = np.inf
    w[0, 0, 0, 0] = -np.inf           # the weights' planes go row by row (padding taps skipped)
    check(x, w, g, " with inf")


def test_gemm_backward_when_openmp_runs_fewer_threads_than_asked():
    """backward_gemm sums only the grad_weight rows that a thread zeroed and filled: with
    OMP_THREAD_LIMIT=1 a 2-thread call gets one thread, and the other row is never touched."""
    code = ("import numpy as np, cnnx, cnnx.functional as F, cnnx.reference as R\n"
            "cnnx.set_num_threads(2)\n"
            "rng = np.random.default_rng(0)\n"
            "x, w = rng.standard_normal((8, 16, 9, 9)), rng.standard_normal((32, 16, 3, 3))\n"
            "g = rng.standard_normal((8, 32, 9, 9))\n"
            "got = F.conv2d_backward(g, x, w, padding=1, algorithm='gemm')\n"
            "ref = R.conv2d_backward(g, x, w, padding=1)\n"
            "print(all(np.allclose(a, b, rtol=1e-10, atol=1e-10) for a, b in zip(got, ref)))\n")
    out = H.run_python(code, dict(os.environ, OMP_THREAD_LIMIT="1"))
    assert out.strip().endswith("True"), out
