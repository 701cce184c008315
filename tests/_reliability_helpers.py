"""Helpers for tests/test_reliability.py and bench/fuzz.py.

* ``sparse_*``: exact pooling oracles that visit only the taps inside the
  input (Python ints, so a kernel_size or padding of 2**62 costs nothing;
  ``cnnx.reference`` walks every tap of such a window and would never finish).
* ``huge_geometry_cases``: conv/pool configurations whose stride, padding,
  dilation or kernel_size are huge (up to and past 2**63) while the arrays and
  the outputs stay tiny: they probe the 64-bit index arithmetic of the kernels.
* ``run_in_subprocess``: runs such cases in a child interpreter, so that an
  out-of-bounds write corrupting the heap fails one test instead of killing
  the whole pytest session.
* ``rss_bytes``: resident set size from /proc (Linux; None elsewhere).
* ``forced_threads``: run the kernels on ``n`` threads even for tiny inputs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager

import numpy as np

import cnnx
import cnnx.functional as Fn
from cnnx._shapes import conv_output_size, pool_output_size

INT64_MAX = 2**63 - 1
# The pooling kernels walk every tap of a window's width, inside the input or not
# (O(kernel_width) per output row), so a huge kernel_size[1] takes forever: the
# generated cases keep it below 2**KW_BITS (see test_pool_huge_kernel_width_is_fast).
KW_BITS = 16


# --------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------
@contextmanager
def forced_threads(n):
    """``n`` kernel threads, and no "tiny input -> one thread" shortcut."""
    old_min = Fn._PARALLEL_MIN_WORK
    previous = cnnx.set_num_threads(n)
    Fn._PARALLEL_MIN_WORK = 0 if n > 1 else old_min
    try:
        yield
    finally:
        Fn._PARALLEL_MIN_WORK = old_min
        cnnx.set_num_threads(previous)


# --------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------
def rss_bytes():
    """Resident set size of this process in bytes (None if /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------
# sparse pooling oracles (exact, only the taps inside the input)
# --------------------------------------------------------------------------
def _taps(start, step, count, size):
    """The taps t in [0, count) with 0 <= start + t*step < size, as a range (Python ints)."""
    lo = 0 if start >= 0 else (-start + step - 1) // step
    hi = 0 if size - 1 - start < 0 else (size - 1 - start) // step + 1
    hi = min(hi, count)
    lo = min(lo, count)
    return range(lo, max(lo, hi))


def sparse_max_pool2d(x, k, s, p, d, ceil_mode):
    """(y, indices) of max pooling of a 4-D float64 array; k, s, p, d are (h, w) pairs.

    PyTorch's rule: the window's taps in row-major order, the running max starts at
    -inf with the index of the first tap inside x and takes a tap when it is
    greater or NaN.
    """
    N, C, H, W = x.shape
    Ho = pool_output_size(H, k[0], s[0], p[0], d[0], ceil_mode)
    Wo = pool_output_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    y = np.empty((N, C, Ho, Wo))
    idx = np.empty((N, C, Ho, Wo), dtype=np.int64)
    for i in range(Ho):
        h0 = i * s[0] - p[0]
        rows = [h0 + u * d[0] for u in _taps(h0, d[0], k[0], H)]
        for j in range(Wo):
            w0 = j * s[1] - p[1]
            cols = [w0 + v * d[1] for v in _taps(w0, d[1], k[1], W)]
            assert rows and cols, "window without input (cnnx refuses these)"
            for n in range(N):
                for c in range(C):
                    best, best_i = -math.inf, rows[0] * W + cols[0]
                    for h in rows:
                        for w in cols:
                            val = float(x[n, c, h, w])
                            if val > best or math.isnan(val):
                                best, best_i = val, h * W + w
                    y[n, c, i, j] = best
                    idx[n, c, i, j] = best_i
    return y, idx


def _avg_windows(H, W, k, s, p, ceil_mode, count_include_pad, divisor_override):
    """[(i, j, rows range, cols range, divisor)] for every output (PyTorch CPU rule)."""
    Ho = pool_output_size(H, k[0], s[0], p[0], 1, ceil_mode)
    Wo = pool_output_size(W, k[1], s[1], p[1], 1, ceil_mode)
    out = []
    for i in range(Ho):
        h0 = i * s[0] - p[0]
        h1 = min(h0 + k[0], H + p[0])
        for j in range(Wo):
            w0 = j * s[1] - p[1]
            w1 = min(w0 + k[1], W + p[1])
            pool_size = (h1 - h0) * (w1 - w0)
            rows = range(max(h0, 0), min(h1, H))
            cols = range(max(w0, 0), min(w1, W))
            if divisor_override:
                div = divisor_override
            elif count_include_pad:
                div = pool_size
            else:
                div = len(rows) * len(cols)
            out.append((i, j, rows, cols, div))
    return (Ho, Wo), out


def sparse_avg_pool2d(x, k, s, p, ceil_mode, count_include_pad, divisor_override):
    N, C, H, W = x.shape
    (Ho, Wo), windows = _avg_windows(H, W, k, s, p, ceil_mode, count_include_pad,
                                     divisor_override)
    y = np.zeros((N, C, Ho, Wo))
    for i, j, rows, cols, div in windows:
        for n in range(N):
            for c in range(C):
                total = 0.0
                for h in rows:
                    for w in cols:
                        total += float(x[n, c, h, w])
                y[n, c, i, j] = total / div
    return y


def sparse_avg_pool2d_backward(g, in_shape, k, s, p, ceil_mode, count_include_pad,
                               divisor_override):
    N, C, H, W = in_shape
    _, windows = _avg_windows(H, W, k, s, p, ceil_mode, count_include_pad, divisor_override)
    gx = np.zeros(in_shape)
    for i, j, rows, cols, div in windows:
        for n in range(N):
            for c in range(C):
                share = float(g[n, c, i, j]) / div
                for h in rows:
                    for w in cols:
                        gx[n, c, h, w] += share
    return gx


# --------------------------------------------------------------------------
# huge geometry: tiny arrays, enormous stride / padding / dilation / kernel_size
# --------------------------------------------------------------------------
class _Rng:
    """``integers``/``random``/``choice`` like numpy's Generator, but with Python ints of any
    size (numpy's bounded integers stop at 2**63)."""

    def __init__(self, seed):
        import random

        self._r = random.Random(seed)

    def integers(self, lo, hi):
        return self._r.randrange(lo, hi)

    def random(self):
        return self._r.random()

    def choice(self, seq):
        return self._r.choice(list(seq))


def _big(rng, top_bits):
    """A positive int, log-uniform up to 2**top_bits, often right at a power of two."""
    if top_bits >= 62 and rng.random() < 0.3:      # right at the edge of int64
        return int(rng.choice([2**62 - 1, 2**62, 2**62 + 3, 2**63 // 3, 2**63 - 1, 2**63 - 2,
                               2**63, 2**63 + 1, 2**64 - 1, 2**64, 2**62 + 2**61]))
    bits = int(rng.integers(0, top_bits + 1))
    base = 1 << bits
    r = rng.random()
    if r < 0.25:
        return base
    if r < 0.4:
        return max(1, base - 1)
    if r < 0.55:
        return base + int(rng.integers(1, 8))
    return base + int(rng.integers(0, base))


def _conv_axis(rng, size, top_bits):
    """(K, stride, pad, dilation) for one axis (symmetric padding), output length 1..4."""
    K = int(rng.integers(1, 4))
    D = _big(rng, top_bits) if rng.random() < 0.6 else int(rng.integers(1, 3))
    span = D * (K - 1) + 1
    need = max(0, -(-(span - size) // 2))            # padding per side the kernel needs
    extra = _big(rng, top_bits) if rng.random() < 0.5 else int(rng.integers(0, 3))
    P = need + extra
    room = size + 2 * P - span                        # >= 0
    S = _big(rng, top_bits) if rng.random() < 0.7 else int(rng.integers(1, 3))
    S = max(S, -(-room // 3))                         # at most 4 outputs
    assert 1 <= conv_output_size(size, K, S, P, P, D) <= 4
    return K, S, P, D


def huge_conv_case(rng, top_bits=64):
    """kwargs + shapes of a conv2d whose geometry ints may exceed int64."""
    H, W = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    ah = _conv_axis(rng, H, top_bits)
    aw = _conv_axis(rng, W, top_bits)
    groups = int(rng.integers(1, 3))
    C_in, C_out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    N = int(rng.integers(1, 3))
    return dict(op="conv2d", x_shape=[N, C_in, H, W],
                w_shape=[C_out, C_in // groups, ah[0], aw[0]],
                kwargs=dict(stride=[ah[1], aw[1]], padding=[ah[2], aw[2]],
                            dilation=[ah[3], aw[3]], groups=groups),
                seed=int(rng.integers(0, 2**31)))


def huge_conv_same_case(rng, top_bits=64):
    """padding='same' with a huge dilation (odd total padding puts the extra at the end)."""
    H, W = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    K = [int(rng.integers(1, 5)), int(rng.integers(1, 5))]
    D = [_big(rng, top_bits), _big(rng, top_bits)]
    return dict(op="conv2d", x_shape=[1, 1, H, W], w_shape=[1, 1, K[0], K[1]],
                kwargs=dict(stride=1, padding="same", dilation=D, groups=1),
                seed=int(rng.integers(0, 2**31)))


def _pool_axis(rng, size, top_bits, dilated, k_bits=None):
    """(K, stride, pad, dilation) for one axis, padding <= K // 2, output length 1..4."""
    if dilated and rng.random() < 0.3:
        K, D, P = 1, _big(rng, top_bits), 0           # dilation is irrelevant for K == 1
    elif rng.random() < 0.7:
        K, D = _big(rng, top_bits if k_bits is None else min(k_bits, top_bits)), 1
        P = K // 2 if rng.random() < 0.5 else int(rng.integers(0, min(K // 2, 2**62) + 1))
    else:
        K = int(rng.integers(1, 4))
        D = int(rng.integers(1, 3)) if dilated else 1
        P = int(rng.integers(0, K // 2 + 1))
    if size + 2 * P < D * (K - 1) + 1:
        P = K // 2                                    # always fits when D == 1
        if size + 2 * P < D * (K - 1) + 1:
            D = 1
    room = size + 2 * P - (D * (K - 1) + 1)
    S = _big(rng, top_bits) if rng.random() < 0.7 else int(rng.integers(1, 3))
    S = max(S, -(-room // 3), 1)
    return K, S, P, D


def huge_pool_case(rng, op, top_bits=64, kw_bits=KW_BITS):
    """kwargs + shape of a max/avg pooling (forward or backward) with huge geometry."""
    H, W = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    dilated = op.startswith("max")
    for _ in range(100):
        ah = _pool_axis(rng, H, top_bits, dilated)
        aw = _pool_axis(rng, W, top_bits, dilated, kw_bits)
        ceil_mode = bool(rng.random() < 0.5)
        try:
            Ho = pool_output_size(H, ah[0], ah[1], ah[2], ah[3], ceil_mode)
            Wo = pool_output_size(W, aw[0], aw[1], aw[2], aw[3], ceil_mode)
        except ZeroDivisionError:  # pragma: no cover
            continue
        if 1 <= Ho <= 5 and 1 <= Wo <= 5:
            break
    else:  # pragma: no cover
        raise RuntimeError("no pool case found")
    kwargs = dict(kernel_size=[ah[0], aw[0]], stride=[ah[1], aw[1]],
                  padding=[ah[2], aw[2]], ceil_mode=ceil_mode)
    if dilated:
        kwargs["dilation"] = [ah[3], aw[3]]
    else:
        kwargs["count_include_pad"] = bool(rng.random() < 0.5)
        kwargs["divisor_override"] = (None if rng.random() < 0.6
                                      else int(rng.choice([1, 3, -2, _big(rng, top_bits)])))
    N, C = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    return dict(op=op, x_shape=[N, C, H, W], kwargs=kwargs, seed=int(rng.integers(0, 2**31)))


def huge_geometry_cases(seed, n_per_op, top_bits=64):
    """A deterministic list of huge-geometry cases for every op that takes geometry."""
    rng = _Rng(seed)
    cases = []
    for _ in range(n_per_op):
        cases.append(huge_conv_case(rng, top_bits))
        cases.append(dict(huge_conv_case(rng, top_bits), op="conv2d_backward"))
        cases.append(huge_conv_same_case(rng, top_bits))
        for op in ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"):
            cases.append(huge_pool_case(rng, op, top_bits))
    return cases


def fits_int64(case):
    """True if every geometry int of the case (and the padded sizes) fits in int64."""
    kw = case["kwargs"]
    vals = []
    for key in ("stride", "padding", "dilation", "kernel_size"):
        v = kw.get(key)
        if isinstance(v, list):
            vals += v
    H, W = case["x_shape"][2:]
    pads = kw.get("padding") if isinstance(kw.get("padding"), list) else [0, 0]
    vals += [H + 2 * pads[0], W + 2 * pads[1]]
    return max(vals) <= INT64_MAX


def _unpack(kw, key, default):
    v = kw.get(key, default)
    if v is None:
        return None
    return tuple(v) if isinstance(v, list) else (v, v)


def run_case(case, algorithm="auto"):
    """Run one case through cnnx and its oracle.

    Returns ``("ok", max_abs_err)``, ``("mismatch", detail)`` or ``("raised", exc_type, msg)``.
    """
    from cnnx import reference as R

    op, kw = case["op"], dict(case["kwargs"])
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x_shape"])
    try:
        if op in ("conv2d", "conv2d_backward"):
            w = rng.standard_normal(case["w_shape"])
            if op == "conv2d":
                got = (Fn.conv2d(x, w, **kw, algorithm=algorithm),)
                want = (R.conv2d(x, w, **kw),)
            else:
                y_shape = R.conv2d(x, w, **kw).shape
                g = rng.standard_normal(y_shape)
                got = Fn.conv2d_backward(g, x, w, **kw, algorithm=algorithm)
                want = R.conv2d_backward(g, x, w, **kw)
        elif op in ("max_pool2d", "max_pool2d_backward"):
            k = _unpack(kw, "kernel_size", None)
            s = _unpack(kw, "stride", None) or k
            p, d = _unpack(kw, "padding", 0), _unpack(kw, "dilation", 1)
            try:
                y_ref, i_ref = sparse_max_pool2d(x, k, s, p, d, kw["ceil_mode"])
            except AssertionError:     # a dilated window without input: cnnx must refuse it
                Fn.max_pool2d(x, **kw)
                return ("mismatch", "max_pool2d accepted a window that lies in the padding")
            if op == "max_pool2d":
                got = Fn.max_pool2d(x, **kw)
                want = (y_ref, i_ref)
            else:
                g = rng.standard_normal(y_ref.shape)
                got = (Fn.max_pool2d_backward(g, i_ref, x.shape),)
                gx = np.zeros(x.shape)
                flat = gx.reshape(x.shape[0], x.shape[1], -1)
                for n in range(x.shape[0]):
                    for c in range(x.shape[1]):
                        np.add.at(flat[n, c], i_ref[n, c].ravel(), g[n, c].ravel())
                want = (gx,)
        else:
            k = _unpack(kw, "kernel_size", None)
            s = _unpack(kw, "stride", None) or k
            p = _unpack(kw, "padding", 0)
            cip, div = kw["count_include_pad"], kw["divisor_override"]
            if op == "avg_pool2d":
                got = (Fn.avg_pool2d(x, **kw),)
                want = (sparse_avg_pool2d(x, k, s, p, kw["ceil_mode"], cip, div),)
            else:
                H, W = x.shape[2:]
                Ho = pool_output_size(H, k[0], s[0], p[0], 1, kw["ceil_mode"])
                Wo = pool_output_size(W, k[1], s[1], p[1], 1, kw["ceil_mode"])
                g = rng.standard_normal(x.shape[:2] + (Ho, Wo))
                got = (Fn.avg_pool2d_backward(g, x.shape, **kw),)
                want = (sparse_avg_pool2d_backward(g, x.shape, k, s, p, kw["ceil_mode"], cip,
                                                   div),)
    except (ValueError, MemoryError, OverflowError, TypeError, IndexError) as exc:
        return ("raised", type(exc).__name__, str(exc)[:300])
    err = 0.0
    for a, b in zip(got, want):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return ("mismatch", f"shape {a.shape} != {b.shape}")
        if a.dtype.kind == "i" or b.dtype.kind == "i":
            if not np.array_equal(a, b):
                return ("mismatch", f"indices {a.ravel().tolist()} != {b.ravel().tolist()}")
            continue
        scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
        same_nan = np.array_equal(np.isnan(a), np.isnan(b))
        diff = np.abs(np.nan_to_num(a - b, nan=0.0))
        e = float(np.max(diff, initial=0.0)) / scale
        tol = 1e-12 + 1e-12 * np.abs(b)
        if not same_nan or np.any(diff > tol * scale):
            return ("mismatch", f"max rel err {e:.3g}; got {a.ravel()[:6].tolist()} "
                                f"want {b.ravel()[:6].tolist()}")
        err = max(err, e)
    return ("ok", err)


_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests_dir!r})
    import _reliability_helpers as RH
    cases = json.load(sys.stdin)
    for i, case in enumerate(cases):
        for algorithm in (case.get("algorithms") or ["auto"]):
            print(json.dumps(["start", i, algorithm]), flush=True)
            out = RH.run_case(case, algorithm)
            print(json.dumps(["done", i, algorithm, list(out)]), flush=True)
    print(json.dumps(["finished"]), flush=True)
    """
)


def run_all_in_subprocesses(cases, timeout=120, max_crashes=20):
    """Like :func:`run_in_subprocess`, but after a crash/hang go on with the next case in
    a fresh child.  Returns ``(results, crashes)`` (``crashes`` a list of
    (case index, algorithm, description))."""
    results, crashes, start = {}, [], 0
    while start < len(cases) and len(crashes) < max_crashes:
        part, crash = run_in_subprocess(cases[start:], timeout)
        for (i, algo), out in part.items():
            results[(start + i, algo)] = out
        if crash is None:
            break
        done = {i for (i, _) in part}
        running = max(done, default=-1) + 1 if crash.find("while running case") < 0 else int(
            crash.split("while running case ")[1].split(" ")[0])
        algo = crash.split("algorithm=")[1].split(")")[0] if "algorithm=" in crash else "?"
        crashes.append((start + running, algo, crash))
        start += running + 1
    return results, crashes


def run_in_subprocess(cases, timeout=120):
    """Run ``cases`` with :func:`run_case` in a child interpreter.

    Returns ``(results, crash)``: ``results`` maps (case index, algorithm) to the
    outcome tuple; ``crash`` is None or a description (exit status, stderr tail and
    the case that was running) when the child died.
    """
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    # the child must import the same cnnx as this process
    cnnx_parent = os.path.dirname(os.path.dirname(os.path.abspath(cnnx.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([cnnx_parent, tests_dir, env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(tests_dir=tests_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tests_dir)   # `python -c` puts the cwd first on sys.path
    try:
        stdout, stderr = proc.communicate(json.dumps(cases), timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        hung = True
    results, running, finished = {}, None, False
    for line in stdout.splitlines():
        msg = json.loads(line)
        if msg[0] == "start":
            running = (msg[1], msg[2])
        elif msg[0] == "done":
            results[(msg[1], msg[2])] = tuple(msg[3])
            running = None
        elif msg[0] == "finished":
            finished = True
    crash = None
    if hung or proc.returncode != 0 or not finished:
        where = "" if running is None else (
            f" while running case {running[0]} (algorithm={running[1]}): "
            f"{json.dumps(cases[running[0]])}")
        what = (f"child still running after {timeout} s (killed)" if hung
                else f"child exited with status {proc.returncode}")
        crash = f"{what}{where}; stderr tail: {stderr[-1500:]}"
    return results, crash


# --------------------------------------------------------------------------
# random op configurations (shared by the hypothesis tests and bench/fuzz.py)
# --------------------------------------------------------------------------
class RandomDraw:
    """The drawing interface of the config generators, backed by ``random.Random``."""

    def __init__(self, seed):
        import random

        self._r = random.Random(seed)

    def int(self, lo, hi):          # inclusive, like st.integers
        return self._r.randint(lo, hi)

    def choice(self, seq):
        return self._r.choice(list(seq))

    def bool(self):
        return self._r.random() < 0.5


class HypothesisDraw:
    """The same interface on top of a hypothesis ``draw`` (so examples shrink)."""

    def __init__(self, draw):
        from hypothesis import strategies as st

        self._draw, self._st = draw, st

    def int(self, lo, hi):
        return self._draw(self._st.integers(lo, hi))

    def choice(self, seq):
        return self._draw(self._st.sampled_from(list(seq)))

    def bool(self):
        return self._draw(self._st.booleans())


def _pair_value(d, h, w):
    """An (h, w) option spelt as users spell it: int, tuple, list or 1-sequence."""
    if h == w:
        return d.choice([h, (h, w), [h, w], (h,)])
    return d.choice([(h, w), [h, w]])


def _size(d, minimum, size_class):
    """A spatial size >= max(1, minimum) of the given class."""
    lo = max(1, minimum)
    if size_class == "exact":       # the (dilated) kernel covers the padded input exactly
        return lo
    if size_class == "wide":
        return d.int(lo, max(lo, 28))
    return d.int(lo, max(lo, 8))


def conv_config(d):
    """Every conv2d option: groups, asymmetric kernel/stride/dilation/padding, 'same'/'valid',
    degenerate 1x1 and exactly-fitting kernels, empty and unbatched inputs, both dtypes,
    special values in x."""
    groups = d.int(1, 3)
    cin_g, cout_g = d.int(1, 3), d.int(1, 3)
    size_class = d.choice(["small", "small", "exact", "wide"])
    if size_class == "wide":
        groups, cin_g, cout_g = 1, d.int(1, 2), d.int(1, 3)
    KH, KW = d.int(1, 5), d.int(1, 5)
    dil = (d.int(1, 3), d.int(1, 3))
    stride = (d.int(1, 4), d.int(1, 4))
    if d.int(0, 3) == 0:  # the geometry algorithm='winograd' computes
        KH = KW = 3
        dil = stride = (1, 1)
    kinds = ["pair", "pair", "int", "valid"] + (["same", "same"] if stride == (1, 1) else [])
    kind = d.choice(kinds)
    if kind == "pair":
        ph, pw = d.int(0, 3), d.int(0, 3)
        padding, tot = _pair_value(d, ph, pw), (2 * ph, 2 * pw)
    elif kind == "int":
        p = d.int(0, 3)
        padding, tot = p, (2 * p, 2 * p)
    elif kind == "valid":
        padding, tot = "valid", (0, 0)
    else:
        padding, tot = "same", (dil[0] * (KH - 1), dil[1] * (KW - 1))
    H = _size(d, dil[0] * (KH - 1) + 1 - tot[0], size_class)
    W = _size(d, dil[1] * (KW - 1) + 1 - tot[1], size_class)
    unbatched = d.int(0, 4) == 0
    N = 1 if unbatched else d.choice([0, 1, 1, 2, 3])
    C_in, C_out = groups * cin_g, groups * cout_g
    return dict(
        op="conv2d",
        x_shape=[C_in, H, W] if unbatched else [N, C_in, H, W],
        w_shape=[C_out, cin_g, KH, KW],
        bias=d.bool(),
        kwargs=dict(stride=_pair_value(d, *stride), padding=padding,
                    dilation=_pair_value(d, *dil), groups=groups),
        dtype=d.choice(["float64", "float32"]),
        data=d.choice(["normal", "normal", "ties", "specials"]),
        tile=d.choice(["default", "default", "tiny", "small"]),
        seed=d.int(0, 2**32 - 1),
    )


def pool_config(d, kind):
    """Every max/avg pooling option (asymmetric kernel/stride/padding/dilation, ceil_mode,
    count_include_pad, divisor_override), exactly-fitting and 1x1 windows."""
    KH, KW = d.int(1, 5), d.int(1, 5)
    ph, pw = d.int(0, KH // 2), d.int(0, KW // 2)
    dil = (d.int(1, 3), d.int(1, 3)) if kind == "max" else (1, 1)
    if d.int(0, 3) == 0:
        stride, sh, sw = None, KH, KW
    else:
        sh, sw = d.int(1, 4), d.int(1, 4)
        stride = _pair_value(d, sh, sw)
    size_class = d.choice(["small", "small", "exact", "wide"])
    H = _size(d, dil[0] * (KH - 1) + 1 - 2 * ph, size_class)
    W = _size(d, dil[1] * (KW - 1) + 1 - 2 * pw, size_class)
    unbatched = d.int(0, 4) == 0
    N = 1 if unbatched else d.choice([0, 1, 1, 2, 3])
    C = d.int(1, 4) if size_class != "wide" else d.int(1, 2)
    kwargs = dict(kernel_size=_pair_value(d, KH, KW), stride=stride,
                  padding=_pair_value(d, ph, pw), ceil_mode=d.bool())
    if kind == "max":
        kwargs["dilation"] = _pair_value(d, *dil)
    else:
        kwargs["count_include_pad"] = d.bool()
        kwargs["divisor_override"] = d.choice([None, None, None, 1, 2, 3, 7, -1, -4])
    return dict(op=f"{kind}_pool2d", x_shape=[C, H, W] if unbatched else [N, C, H, W],
                kwargs=kwargs, dtype=d.choice(["float64", "float32"]),
                data=d.choice(["normal", "ties", "ties", "specials"]),
                seed=d.int(0, 2**32 - 1))


def relu_config(d):
    ndim = d.int(0, 4)
    if d.int(0, 3) == 0:
        shape = [d.int(0, 6000)]                      # long enough for several threads
    else:
        shape = [d.int(0, 5) for _ in range(ndim)]
    return dict(op="relu", x_shape=shape, dtype=d.choice(["float64", "float32"]),
                data=d.choice(["normal", "ties", "specials"]), seed=d.int(0, 2**32 - 1))


def make_data(rng, shape, dtype, kind):
    """normal / ties (small ints: many equal values, exact zeros) / specials (NaN, ±inf, ±0,
    subnormals sprinkled in)."""
    shape = tuple(shape)
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype)
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    if kind == "specials":
        tiny = np.finfo(dtype).smallest_subnormal
        pool = np.array([np.nan, np.inf, -np.inf, -0.0, tiny, -tiny], dtype=dtype)
        mask = rng.random(shape) < 0.25
        x[mask] = rng.choice(pool, size=shape)[mask]
    return x


def _winograd_fits(x, w, kwargs):
    """Whether algorithm='winograd' applies (3x3, stride 1, dilation 1) to this call."""
    from cnnx._shapes import prepare_conv2d

    try:
        spec = prepare_conv2d(x, w, None, kwargs.get("stride", 1), kwargs.get("padding", 0),
                              kwargs.get("dilation", 1), kwargs.get("groups", 1))[3]
    except (ValueError, TypeError):
        return False
    return Fn._winograd_fits(spec)


@contextmanager
def gemm_tiles(kind):
    """Shrink the GEMM tiles so that small convolutions take the many-tile code paths."""
    sizes = {"default": None, "tiny": (1, 1), "small": (64, 8)}[kind]
    if sizes is None:
        yield
        return
    old = Fn.TILE_ELEMENTS, Fn.TILE_MIN_COLUMNS
    Fn.TILE_ELEMENTS, Fn.TILE_MIN_COLUMNS = sizes
    try:
        yield
    finally:
        Fn.TILE_ELEMENTS, Fn.TILE_MIN_COLUMNS = old


def same_bits(a, b):
    """Same shape, dtype and bits (long double: same values, NaNs and signs; its
    padding bytes are undefined)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f" and a.dtype.itemsize > 8:
        return bool(np.array_equal(a, b, equal_nan=True)
                    and np.array_equal(np.signbit(a), np.signbit(b)))
    return a.tobytes() == b.tobytes()


_same_bits = same_bits


def _as_tuple(r):
    return r if isinstance(r, tuple) else (r,)


def check_config(cfg, threads=(1, 2), backward=True):
    """Run one configuration through the compiled ops (every algorithm, each thread count
    with parallelism forced) and the reference; raise AssertionError on any difference.

    * compiled vs reference: :func:`cnnx.testing.assert_close` (dtype tolerances).
    * different thread counts: bit-identical, except the GEMM conv's grad_weight,
      which is summed from per-thread partial sums (close, not identical).
    * an invalid config (a dilated max-pool window entirely in the padding) must make
      both implementations raise the same ValueError.
    Returns the number of compiled calls checked.
    """
    from cnnx import reference as R
    from cnnx.testing import assert_close

    op = cfg["op"]
    rng = np.random.default_rng(cfg["seed"])
    dtype = np.dtype(cfg["dtype"])
    x = make_data(rng, cfg["x_shape"], dtype, cfg["data"])
    kwargs = cfg.get("kwargs", {})
    calls = 0

    def compare(name, compiled, expected_fn, deterministic=lambda k: True):
        nonlocal calls
        try:
            expected = _as_tuple(expected_fn())
        except ValueError as exc:
            for n in threads:
                with forced_threads(n):
                    try:
                        compiled()
                    except ValueError as exc2:
                        assert str(exc2) == str(exc), (name, str(exc2), str(exc))
                        calls += 1
                        continue
                raise AssertionError(f"{name}: reference raised {exc!r}, compiled did not")
            return None
        first = None
        for n in threads:
            with forced_threads(n):
                got = _as_tuple(compiled())
            calls += 1
            assert len(got) == len(expected)
            for k, (g, e) in enumerate(zip(got, expected)):
                assert_close(g, e, err_msg=f"{name} result {k} at {n} thread(s): ")
            if first is None:
                first = got
            else:
                for k, (g, f) in enumerate(zip(got, first)):
                    if deterministic(k):
                        assert _same_bits(g, f), (
                            f"{name} result {k}: {n} threads not bit-identical to "
                            f"{threads[0]}")
        return expected

    if op == "conv2d":
        w = make_data(rng, cfg["w_shape"], dtype, "normal")
        b = make_data(rng, [cfg["w_shape"][0]], dtype, "normal") if cfg["bias"] else None
        algos = ("direct", "gemm", "auto")
        # (Winograd's transforms mix neighbouring values: only finite data has the
        # formula's result; 'auto' checks this, an explicit 'winograd' does not)
        if _winograd_fits(x, w, kwargs) and np.isfinite(x).all() and np.isfinite(w).all():
            algos += ("winograd",)
        with gemm_tiles(cfg.get("tile", "default")):
            y = None
            for algo in algos:
                y = compare(f"conv2d[{algo}]",
                            lambda: Fn.conv2d(x, w, b, algorithm=algo, **kwargs),
                            lambda: R.conv2d(x, w, b, **kwargs))[0]
            if backward:
                g = make_data(rng, y.shape, dtype, "normal")
                expected = None
                for algo in algos:
                    grad_w_det = algo == "direct"
                    expected = compare(
                        f"conv2d_backward[{algo}]",
                        lambda: Fn.conv2d_backward(g, x, w, algorithm=algo, **kwargs),
                        (lambda: R.conv2d_backward(g, x, w, **kwargs)) if expected is None
                        else (lambda e=expected: e),
                        deterministic=lambda k, d=grad_w_det: k != 1 or d)
    elif op == "max_pool2d":
        res = compare("max_pool2d", lambda: Fn.max_pool2d(x, **kwargs),
                      lambda: R.max_pool2d(x, **kwargs))
        if res is not None and backward:
            y, idx = res
            g = make_data(rng, y.shape, dtype, "normal")
            compare("max_pool2d_backward", lambda: Fn.max_pool2d_backward(g, idx, x.shape),
                    lambda: R.max_pool2d_backward(g, idx, x.shape))
    elif op == "avg_pool2d":
        y = compare("avg_pool2d", lambda: Fn.avg_pool2d(x, **kwargs),
                    lambda: R.avg_pool2d(x, **kwargs))[0]
        if backward:
            g = make_data(rng, y.shape, dtype, "normal")
            compare("avg_pool2d_backward",
                    lambda: Fn.avg_pool2d_backward(g, x.shape, **kwargs),
                    lambda: R.avg_pool2d_backward(g, x.shape, **kwargs))
    elif op == "relu":
        compare("relu", lambda: Fn.relu(x), lambda: R.relu(x))
        if backward:
            g = make_data(rng, x.shape, dtype, "normal")
            compare("relu_backward", lambda: Fn.relu_backward(g, x),
                    lambda: R.relu_backward(g, x))
    else:  # pragma: no cover
        raise ValueError(op)
    return calls
