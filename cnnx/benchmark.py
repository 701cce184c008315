"""``cnnx bench``: time cnnx against NumPy im2col, numba, PyTorch and the pure-Python reference.

Every op is timed forward alone and forward+backward, in float32 (or, with ``--dtype
float64``, in float64: inputs, every peer's computation and outputs, the tolerance and
the GEMM baseline), at each requested thread count; all peers get the same thread count
(``cnnx.set_num_threads``, ``torch.set_num_threads``, ``numba.set_num_threads`` and
threadpoolctl's ``threadpool_limits`` for the BLAS that NumPy and SciPy load).

Method (scikit-image asv style: one setup per case, one timed call, medians):

1. per case, the inputs are made once (fixed seed, in the ``--dtype``);
2. each peer's outputs (y and every gradient) are checked once against cnnx's: same
   dtype, and ``allclose`` at that dtype's tolerance (float32: rtol 1e-3, atol 1e-4 x
   max|value|; float64: rtol 1e-9, atol 1e-10 x max|value|); a peer that disagrees is
   reported as a MISMATCH and not timed (the command then exits with status 1);
3. per thread count, every (peer, mode) is warmed up, then sampled round-robin --
   the order rotates every round -- so machine noise hits all peers alike; each sample
   times enough back-to-back calls to last ``--min-sample`` seconds and records the
   time per call; the reported figure is the median;
4. a call that takes longer than ``--max-call`` seconds on warm-up is timed once only
   (marked ``*``); a (peer, mode) stops being sampled once it has ``--min-repeat``
   samples and has used ``--max-time`` seconds.

Figures: conv GFLOP/s use ``2*N*Cout*Hout*Wout*(Cin/groups)*KH*KW`` flops forward and
three times that for forward+backward; pooling reports effective GB/s from the bytes
each op must read and write (the data at the dtype's item size; max pooling counts its
int64 indices).  Two machine baselines put these in context: copy bandwidth
(``np.copyto`` of a large array, one thread) and a large GEMM in the same dtype (SciPy's
``sgemm``, or ``dgemm`` for float64 -- the BLAS cnnx calls -- and ``np.dot``, at each
thread count), each the best run, measured at the start and the end.  "x torch" is the
peer's median time divided by PyTorch's (below 1 = faster than PyTorch); the summary gives
the geometric mean of the cnnx/PyTorch ratios over the (non-tiny) cases.

The report and the JSON name each BLAS library loaded (threadpoolctl: file, API, version
and the OpenBLAS kernel, "architecture"; SciPy's is the one cnnx calls) and the
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE environment variables.  OPENBLAS_CORETYPE forces
one OpenBLAS kernel whatever the CPU; the harness never sets or unsets either -- to time
the kernel OpenBLAS would pick itself, unset both in that one command:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/run_bench.py ...``.

Memory: by default (``--malloc steady``) glibc's malloc is told to keep freed memory in
the process (:func:`steady_malloc`), so that no peer's timing includes page faults
caused by the peer that ran before it (``--malloc system`` leaves malloc alone).
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import math
import os
import platform
import sys
import time
import zlib
from contextlib import contextmanager, nullcontext

import numpy as np

__all__ = ["DEFAULT_CASES", "TINY_CASES", "add_arguments", "load_cases", "main",
           "normalise_case", "register", "run"]

# The project's benchmark cases (shared/bench_cases.json), kept here because the
# installed package has no access to the repository's shared/ folder.
DEFAULT_CASES = [
    {"name": "pool_max2", "op": "maxpool", "x": [64, 32, 32, 32], "k": 2, "s": 2},
    {"name": "pool_max3p", "op": "maxpool", "x": [32, 64, 56, 56], "k": 3, "s": 2, "p": 1},
    {"name": "pool_avg2", "op": "avgpool", "x": [64, 32, 32, 32], "k": 2, "s": 2},
    {"name": "conv_lenet1", "op": "conv", "x": [64, 1, 28, 28], "out": 6, "k": 5, "p": 2},
    {"name": "conv_lenet2", "op": "conv", "x": [64, 6, 14, 14], "out": 16, "k": 5},
    {"name": "conv_cifar", "op": "conv", "x": [64, 32, 32, 32], "out": 64, "k": 3, "p": 1},
    {"name": "conv_resnet", "op": "conv", "x": [32, 64, 56, 56], "out": 64, "k": 3, "p": 1},
    {"name": "conv_stride2", "op": "conv", "x": [64, 3, 32, 32], "out": 16, "k": 3, "s": 2,
     "p": 1},
]

# Tiny cases: the only ones the pure-Python reference runs (and all that --quick runs).
# They measure per-call overhead more than arithmetic and stay out of the geometric mean.
TINY_CASES = [
    {"name": "tiny_conv", "op": "conv", "x": [2, 3, 8, 8], "out": 4, "k": 3, "p": 1,
     "tiny": True},
    {"name": "tiny_maxpool", "op": "maxpool", "x": [2, 3, 8, 8], "k": 3, "s": 2, "p": 1,
     "tiny": True},
    {"name": "tiny_avgpool", "op": "avgpool", "x": [2, 3, 8, 8], "k": 2, "s": 2, "tiny": True},
]

# The textbook's experiment: max pooling 2x2 stride 2 on a batch of 64, forward+backward
# repeated 5000 times (numba 17.5 s vs im2col 22.5 s on the book's machine).
TEXTBOOK_REPS = 5000
TEXTBOOK_SECONDS = {"numba": 17.5, "numpy": 22.5}
TEXTBOOK_SHAPE = (64, 32, 32, 32)

MODES = ("fwd", "fwd+bwd")
OPS = ("conv", "maxpool", "avgpool")
DTYPES = ("float32", "float64")
F32_RTOL = 1e-3     # elementwise relative tolerance ...
F32_ATOL = 1e-4     # ... plus this times the largest |value| of the array (float32 sums)
# float64 (epsilon 2.2e-16): room for sums of 1e5 terms taken in different orders, yet a
# peer that computes in float32 (errors ~1e-7 relative) fails
F64_RTOL = 1e-9
F64_ATOL = 1e-10
TOLERANCES = {"float32": (F32_RTOL, F32_ATOL), "float64": (F64_RTOL, F64_ATOL)}
# the OpenBLAS environment variables the report shows (never set or unset here)
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
MALLOC_CHOICES = ("steady", "system")


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------
def _int(case, key, default=None, minimum=0):
    value = case.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"case {case.get('name', '?')!r}: {key!r} must be an int >= {minimum}, "
                         f"got {value!r}")
    return value


def normalise_case(case):
    """Fill a case dict's defaults and check it; raises ValueError naming the bad field.

    Format (one JSON object per case)::

        {"name": str, "op": "conv"|"maxpool"|"avgpool", "x": [N, C, H, W],
         "k": kernel, "s": stride (default: k for pooling, 1 for conv), "p": padding (0),
         "d": dilation (1; conv and max pooling), "out": conv output channels,
         "groups": conv groups (1), "bias": conv bias (true), "tiny": bool (false)}
    """
    if not isinstance(case, dict):
        raise ValueError(f"each case must be a JSON object, got {case!r}")
    name = case.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"every case needs a non-empty string 'name', got {case!r}")
    op = case.get("op")
    if op not in OPS:
        raise ValueError(f"case {name!r}: 'op' must be one of {', '.join(OPS)}, got {op!r}")
    x = case.get("x")
    if (not isinstance(x, (list, tuple)) or len(x) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in x)):
        raise ValueError(f"case {name!r}: 'x' must be [N, C, H, W] of positive ints, got {x!r}")
    known = {"name", "op", "x", "k", "s", "p", "d", "out", "groups", "bias", "tiny"}
    unknown = set(case) - known
    if unknown:
        raise ValueError(f"case {name!r}: unknown field(s) {sorted(unknown)}; "
                         f"known: {sorted(known)}")
    k = _int(case, "k", minimum=1)
    out = {
        "name": name, "op": op, "x": [int(v) for v in x], "k": k,
        "s": _int(case, "s", 1 if op == "conv" else k, minimum=1),
        "p": _int(case, "p", 0), "d": _int(case, "d", 1, minimum=1),
        "tiny": bool(case.get("tiny", False)),
    }
    N, C, H, W = out["x"]
    if op == "conv":
        out["out"] = _int(case, "out", minimum=1)
        out["groups"] = _int(case, "groups", 1, minimum=1)
        out["bias"] = bool(case.get("bias", True))
        if C % out["groups"] or out["out"] % out["groups"]:
            raise ValueError(f"case {name!r}: channels {C} and out {out['out']} must be "
                             f"divisible by groups {out['groups']}")
    else:
        if "out" in case or "groups" in case:
            raise ValueError(f"case {name!r}: 'out'/'groups' only apply to conv")
        out["groups"] = 1
        if out["p"] > k // 2:
            raise ValueError(f"case {name!r}: pooling padding {out['p']} must be at most "
                             f"half the kernel size {k}")
        if op == "avgpool" and out["d"] != 1:
            raise ValueError(f"case {name!r}: avg pooling has no dilation")
    ho, wo = _out_hw(out)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"case {name!r}: kernel larger than the padded input")
    return out


def _out_hw(case):
    _, _, H, W = case["x"]
    k, s, p, d = case["k"], case["s"], case["p"], case["d"]
    return ((H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1)


def out_shape(case):
    N, C, _, _ = case["x"]
    return (N, case["out"] if case["op"] == "conv" else C) + _out_hw(case)


def load_cases(path=None):
    """The default cases (``path=None``) or a JSON file holding a list of case objects."""
    if path is None:
        raw = DEFAULT_CASES
    else:
        with open(path, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON: {exc}") from None
        if isinstance(raw, dict) and "cases" in raw:
            raw = raw["cases"]
        if not isinstance(raw, list):
            raise ValueError(f"{path}: expected a JSON list of cases, got {type(raw).__name__}")
    cases = [normalise_case(c) for c in raw]
    names = [c["name"] for c in cases]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate case names: {sorted(dup)}")
    return cases


def flops(case, mode):
    """Conv flops (2 per multiply-add); forward+backward counts three GEMM-sized products."""
    if case["op"] != "conv":
        return None
    N, C, _, _ = case["x"]
    _, Cout, Ho, Wo = out_shape(case)
    f = 2 * N * Cout * Ho * Wo * (C // case["groups"]) * case["k"] ** 2
    return 3 * f if mode == "fwd+bwd" else f


def bytes_moved(case, mode, itemsize=4):
    """Bytes a pooling op must read and write (data of ``itemsize`` bytes -- 4 for float32,
    8 for float64 -- and int64 max-pool indices)."""
    if case["op"] == "conv":
        return None
    n_in = math.prod(case["x"])
    n_out = math.prod(out_shape(case))
    z = itemsize
    if case["op"] == "maxpool":
        fwd = z * n_in + z * n_out + 8 * n_out        # read x; write y and indices
        bwd = z * n_out + 8 * n_out + z * n_in        # read grad_out and indices; write grad_x
    else:
        fwd = z * n_in + z * n_out
        bwd = z * n_out + z * n_in
    return fwd + bwd if mode == "fwd+bwd" else fwd


def _dtype(dtype):
    """'float32'/'float64' (or the NumPy dtype) -> np.dtype; anything else is a ValueError."""
    dt = np.dtype(dtype)
    if dt.name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dt


def make_data(case, dtype="float32"):
    """Fixed-seed inputs for a case, in ``dtype`` (float32 or float64): x, w, b (conv), gy
    (grad of the output)."""
    dt = _dtype(dtype)
    one = dt.type
    rng = np.random.default_rng(zlib.crc32(case["name"].encode()))
    x = rng.standard_normal(case["x"], dtype=dt)
    data = {"x": x, "w": None, "b": None}
    if case["op"] == "conv":
        cin_g = case["x"][1] // case["groups"]
        fan_in = cin_g * case["k"] ** 2
        w = rng.standard_normal((case["out"], cin_g, case["k"], case["k"]), dtype=dt)
        data["w"] = w / one(math.sqrt(fan_in))
        if case["bias"]:
            data["b"] = rng.standard_normal(case["out"], dtype=dt) * one(0.1)
    data["gy"] = rng.standard_normal(out_shape(case), dtype=dt)
    return data


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------
def _blas_limits(n):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


@contextmanager
def thread_count(n, peers=()):
    """Every peer and NumPy/SciPy's BLAS on ``n`` threads for the duration."""
    for peer in peers:
        peer.set_num_threads(n)
    with _blas_limits(n):
        yield


# ---------------------------------------------------------------------------
# machine baselines
# ---------------------------------------------------------------------------
def _median_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def copy_bandwidth(nbytes=256 * 2**20, repeat=7, dtype="float32"):
    """GB/s of ``np.copyto`` on a large array of ``dtype`` (bytes read + written, one thread).

    A peak figure: the fastest of ``repeat`` copies (the median is kept too)."""
    dt = _dtype(dtype)
    n = nbytes // dt.itemsize
    src = np.ones(n, dt)
    dst = np.empty_like(src)
    t, times = _median_time(lambda: np.copyto(dst, src), repeat)
    return {"gbps": 2 * src.nbytes / min(times) / 1e9, "gbps_median": 2 * src.nbytes / t / 1e9,
            "bytes": int(2 * src.nbytes), "times_s": times,
            "how": f"np.copyto of {src.nbytes / 2**20:.0f} MiB {dt.name}, best of {repeat}"}


def gemm_routine(dtype="float32"):
    """SciPy BLAS GEMM name for ``dtype``: 'sgemm' (float32) or 'dgemm' (float64)."""
    return {"float32": "sgemm", "float64": "dgemm"}[_dtype(dtype).name]


def gemm_rate(n=2048, threads=1, repeat=5, dtype="float32"):
    """GFLOP/s of an n x n x n GEMM in ``dtype``, SciPy's sgemm (float32) or dgemm (float64)
    and np.dot, each the fastest of ``repeat`` runs; 'gflops' is the better of the two (a
    peak figure)."""
    dt = _dtype(dtype)
    routine = gemm_routine(dt)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=dt)
    b = rng.standard_normal((n, n), dtype=dt)
    out = {"n": n, "threads": threads, "dtype": dt.name, "routine": routine,
           "how": f"best of {repeat}"}
    with _blas_limits(threads):
        _, times = _median_time(lambda: np.dot(a, b), repeat)
        out["np_dot_gflops"] = 2 * n**3 / min(times) / 1e9
        try:
            from scipy.linalg import blas

            gemm = getattr(blas, routine)
            af, bf = np.asfortranarray(a), np.asfortranarray(b)
            _, times = _median_time(lambda: gemm(1.0, af, bf), repeat)
            out[f"scipy_{routine}_gflops"] = 2 * n**3 / min(times) / 1e9
        except ImportError:  # pragma: no cover - scipy is a cnnx dependency
            pass
    out["gflops"] = max(v for k, v in out.items() if k.endswith("_gflops"))
    return out


def measure_baselines(threads, quick=False, previous=None, dtype="float32"):
    """Copy bandwidth and GEMM rate (in ``dtype``) per thread count; with ``previous`` (a
    measurement from the start of the run) keep the better of the two, so one noisy moment
    does not set the peak."""
    copy = copy_bandwidth(32 * 2**20 if quick else 256 * 2**20, repeat=3 if quick else 7,
                          dtype=dtype)
    gemm = {str(n): gemm_rate(512 if quick else 2048, n, repeat=2 if quick else 5,
                              dtype=dtype)
            for n in threads}
    if previous:
        if previous["copy"]["gbps"] > copy["gbps"]:
            copy = previous["copy"]
        for n, g in previous["gemm"].items():
            if n not in gemm or g["gflops"] > gemm[n]["gflops"]:
                gemm[n] = g
    return {"copy": copy, "gemm": gemm}


# ---------------------------------------------------------------------------
# correctness
# ---------------------------------------------------------------------------
def compare_outputs(got, want):
    """-> list of problems (empty when every shared output has the expected dtype and matches
    at that dtype's tolerance: float32's, or the tighter float64 one for float64 arrays)."""
    problems = []
    for key in want:
        if key not in got:
            continue
        a, b = np.asarray(got[key]), np.asarray(want[key])
        if a.shape != b.shape:
            problems.append(f"{key}: shape {a.shape} != {b.shape}")
            continue
        if key == "indices":
            bad = int(np.count_nonzero(a != b))
            if bad:
                problems.append(f"indices: {bad} of {a.size} differ")
            continue
        if a.dtype != b.dtype:
            # e.g. a peer that computes in float32 when float64 was asked for
            problems.append(f"{key}: dtype {a.dtype} != {b.dtype}")
            continue
        rtol, atol_rel = TOLERANCES.get(b.dtype.name, (F32_RTOL, F32_ATOL))
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        scale = float(np.max(np.abs(b64))) if b64.size else 0.0
        atol = atol_rel * max(scale, 1e-6)
        if not np.allclose(a64, b64, rtol=rtol, atol=atol, equal_nan=True):
            err = float(np.nanmax(np.abs(a64 - b64)))
            problems.append(f"{key}: max |diff| {err:.3g} (max |value| {scale:.3g}, "
                            f"tolerance rtol={rtol:g} atol={atol:.3g})")
    return problems


# ---------------------------------------------------------------------------
# the timing loop
# ---------------------------------------------------------------------------
class _Task:
    def __init__(self, peer, mode, fn):
        self.peer, self.mode, self.fn = peer, mode, fn
        self.times = []        # seconds per call, one entry per sample
        self.number = 1        # calls per sample
        self.single = False    # too slow: timed once (the warm-up call)
        self.spent = 0.0
        self.error = None


def _sample(fn, number):
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number
    finally:
        if gc_was:
            gc.enable()


def time_tasks(tasks, opts):
    """Warm up, then sample the tasks round-robin (rotating order each round)."""
    for task in tasks:
        try:
            t = None
            for _ in range(max(1, opts.warmup)):
                t = _sample(task.fn, 1)
                if t > opts.max_call:
                    break
        except Exception as exc:  # a peer failing at run time is reported, not fatal
            task.error = f"{type(exc).__name__}: {exc}"
            continue
        if t > opts.max_call:
            task.single, task.times, task.spent = True, [t], t
        else:
            task.number = max(1, int(opts.min_sample / max(t, 1e-9)))
    active = [t for t in tasks if not t.single and t.error is None]
    for r in range(opts.repeat):
        if not active:
            break
        shift = r % len(active)
        for task in active[shift:] + active[:shift]:
            t = _sample(task.fn, task.number)
            task.times.append(t)
            task.spent += t * task.number
        active = [t for t in active
                  if len(t.times) < opts.repeat
                  and not (len(t.times) >= opts.min_repeat and t.spent >= opts.max_time)]


# ---------------------------------------------------------------------------
# running everything
# ---------------------------------------------------------------------------
def _loadavg():
    """1-minute load average (None where the OS has none): other processes' CPU use."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_warning(results):
    """A warning when other processes competed for the CPUs during the timings."""
    loads = [r["load_1min"] for r in results if r.get("load_1min") is not None]
    if not loads:
        return None
    ncpu, worst = _cpus(), max(loads)
    # the benchmark itself accounts for about one runnable thread
    if worst > ncpu - 0.5:
        return (f"WARNING: the machine was busy: 1-minute load average up to {worst:.1f} on "
                f"{ncpu} CPU(s) during the timings; figures at more than one thread (and to a "
                f"lesser extent all figures) are unreliable -- rerun on an idle machine.")
    return None


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_peers(names):
    """-> (loaded peers, notes for the ones skipped)."""
    from ._bench_peers import make_peer

    peers, notes = [], []
    for name in names:
        peer = make_peer(name)
        try:
            peer.load()
        except ImportError as exc:
            notes.append(f"peer {name!r} skipped: {exc} (install it, e.g. pip install "
                         f"'cnnx[bench]' or torch, to include it)")
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. a broken build of the library
            notes.append(f"peer {name!r} skipped: {type(exc).__name__}: {exc}")
            continue
        peers.append(peer)
    return peers, notes


def _truth_peer(peers):
    for name in ("cnnx", "cnnx-gemm", "cnnx-direct", "cnnx-winograd", "torch", "numpy", "numba",
                 "reference"):
        for p in peers:
            if p.name == name:
                return p
    return None


def run_case(case, peers, threads, opts, out):
    """Check every peer against the truth peer once, then time at each thread count."""
    from ._bench_peers import Unsupported

    data = make_data(case, getattr(opts, "dtype", "float32"))
    bound = {}
    truth = _truth_peer(peers)
    want = None
    for peer in sorted(peers, key=lambda p: p is not truth):  # truth first
        if peer.tiny_only and not case["tiny"]:
            continue
        try:
            b = peer.setup(case, data)
            with thread_count(threads[0], peers):
                got = b.outputs()
        except Unsupported as exc:
            out["notes"].append(f"{case['name']}: {peer.name} skipped ({exc})")
            continue
        except Exception as exc:  # noqa: BLE001
            msg = f"{case['name']}: {peer.name} FAILED: {type(exc).__name__}: {exc}"
            _log("ERROR " + msg)
            out["errors"].append(msg)
            continue
        if peer is truth:
            want = got
        else:
            problems = compare_outputs(got, want)
            if problems:
                msg = (f"{case['name']}: {peer.name} does not match {truth.name}: "
                       + "; ".join(problems))
                _log("MISMATCH " + msg + " -- not timed")
                out["mismatches"].append(msg)
                continue
        bound[peer.name] = b
    for n in threads:
        tasks = []
        for peer in peers:
            b = bound.get(peer.name)
            if b is None:
                continue
            for mode in opts.modes:
                tasks.append(_Task(peer.name, mode,
                                   b.forward if mode == "fwd" else b.forward_backward))
        load = _loadavg()
        t0 = time.perf_counter()
        with thread_count(n, peers):
            time_tasks(tasks, opts)
        _log(f"  {case['name']:<14} threads={n}: {len(tasks)} timings in "
             f"{time.perf_counter() - t0:.1f} s")
        for task in tasks:
            rec = {"case": case["name"], "op": case["op"], "tiny": case["tiny"],
                   "threads": n, "mode": task.mode, "peer": task.peer, "load_1min": load}
            if task.error:
                rec.update(status="error", error=task.error)
                out["errors"].append(f"{case['name']} {task.mode} {task.peer} threads={n}: "
                                     f"{task.error}")
            else:
                rec.update(status="single" if task.single else "ok",
                           median_s=float(np.median(task.times)),
                           min_s=float(np.min(task.times)),
                           times_s=[float(t) for t in task.times],
                           calls_per_sample=task.number)
            out["results"].append(rec)
    del data


def derive(results, baselines, cases, dtype="float32"):
    """Add GFLOP/s, GB/s, % of machine peak and the ratio vs torch to each record (pooling
    bytes at ``dtype``'s item size)."""
    itemsize = _dtype(dtype).itemsize
    by_case = {c["name"]: c for c in cases}
    torch_time = {(r["case"], r["mode"], r["threads"]): r["median_s"]
                  for r in results if r["peer"] == "torch" and "median_s" in r}
    copy = baselines.get("copy", {}).get("gbps")
    for r in results:
        if "median_s" not in r:
            continue
        case, t = by_case[r["case"]], r["median_s"]
        f, nb = flops(case, r["mode"]), bytes_moved(case, r["mode"], itemsize)
        if f is not None:
            r["flops"] = f
            r["gflops"] = f / t / 1e9
            peak = baselines.get("gemm", {}).get(str(r["threads"]), {}).get("gflops")
            if peak:
                r["pct_gemm_peak"] = 100 * r["gflops"] / peak
        if nb is not None:
            r["bytes"] = nb
            r["gbps"] = nb / t / 1e9
            if copy:
                r["pct_copy_bw"] = 100 * r["gbps"] / copy
        tt = torch_time.get((r["case"], r["mode"], r["threads"]))
        if tt:
            r["ratio_vs_torch"] = t / tt


def geomeans(results):
    """Geometric mean of cnnx/torch time ratios over the non-tiny cases, per (threads, mode)."""
    groups = {}
    for r in results:
        if r["peer"] == "cnnx" and "ratio_vs_torch" in r and not r["tiny"]:
            groups.setdefault((r["threads"], r["mode"]), []).append(r["ratio_vs_torch"])
    out = []
    for (n, mode), ratios in sorted(groups.items()):
        out.append({"threads": n, "mode": mode, "n_cases": len(ratios),
                    "geomean_cnnx_over_torch": float(np.exp(np.mean(np.log(ratios))))})
    allr = [r["ratio_vs_torch"] for r in results
            if r["peer"] == "cnnx" and "ratio_vs_torch" in r and not r["tiny"]]
    if allr:
        out.append({"threads": "all", "mode": "all", "n_cases": len(allr),
                    "geomean_cnnx_over_torch": float(np.exp(np.mean(np.log(allr))))})
    return out


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------
def format_table(results, cases, peer_order):
    order = {c["name"]: i for i, c in enumerate(cases)}
    porder = {p: i for i, p in enumerate(peer_order)}
    rows = sorted(results, key=lambda r: (order[r["case"]], r["threads"],
                                          MODES.index(r["mode"]), porder.get(r["peer"], 99)))
    head = ("case", "thr", "mode", "peer", "ms (median)", "rate", "% peak", "x torch")
    lines = []
    for r in rows:
        if "median_s" not in r:
            lines.append((r["case"], str(r["threads"]), r["mode"], r["peer"], r["status"],
                          "", "", ""))
            continue
        ms = f"{1e3 * r['median_s']:.3f}" + ("*" if r["status"] == "single" else "")
        if "gflops" in r:
            rate = f"{r['gflops']:.2f} GFLOP/s"
            pct = f"{r['pct_gemm_peak']:.0f}% gemm" if "pct_gemm_peak" in r else ""
        else:
            rate = f"{r['gbps']:.2f} GB/s"
            pct = f"{r['pct_copy_bw']:.0f}% copy" if "pct_copy_bw" in r else ""
        ratio = f"{r['ratio_vs_torch']:.2f}" if "ratio_vs_torch" in r else ""
        lines.append((r["case"], str(r["threads"]), r["mode"], r["peer"], ms, rate, pct, ratio))
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    right = {4, 5, 6, 7}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    out = [fmt(head), fmt(["-" * w for w in widths])]
    prev = None
    for line in lines:
        if prev is not None and line[:3] != prev[:3]:
            if line[0] != prev[0]:
                out.append("")
        out.append(fmt(line))
        prev = line
    return "\n".join(out)


def write_png(report, path, peer_order):
    """Bar chart of forward+backward time ratios vs PyTorch (log scale), one panel per thread
    count.  Returns None on success or a note why nothing was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no PNG written"
    rs = [r for r in report["results"] if "ratio_vs_torch" in r and r["peer"] != "torch"]
    if not rs:
        return "no ratios vs torch to plot (is torch installed?): no PNG written"
    threads = sorted({r["threads"] for r in rs})
    mode = "fwd+bwd" if any(r["mode"] == "fwd+bwd" for r in rs) else "fwd"
    cases = [c["name"] for c in report["cases"]
             if any(r["case"] == c["name"] and r["mode"] == mode for r in rs)]
    peers = [p for p in peer_order if any(r["peer"] == p for r in rs)]
    fig, axes = plt.subplots(len(threads), 1, figsize=(max(7.0, 0.75 * len(cases) + 2),
                                                       3.6 * len(threads) + 0.6),
                             squeeze=False, sharey=True)
    width = 0.8 / max(1, len(peers))
    for ax, n in zip(axes[:, 0], threads):
        singles = []
        for j, p in enumerate(peers):
            xs, ys = [], []
            for i, c in enumerate(cases):
                for r in rs:
                    if (r["case"], r["peer"], r["threads"], r["mode"]) == (c, p, n, mode):
                        xs.append(i + (j - (len(peers) - 1) / 2) * width)
                        ys.append(r["ratio_vs_torch"])
                        singles.append(r["status"] == "single")
            bars = ax.bar(xs, ys, width, label=p, color=f"C{j}")
            for bar, single in zip(bars, singles[-len(ys):] if ys else []):
                if single:
                    bar.set_hatch("//")
        ax.axhline(1.0, color="k", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=45, ha="right")
        ax.set_title(f"{mode}, {n} thread{'s' if n > 1 else ''}")
        ax.grid(axis="y", which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("time / PyTorch time")
    axes[0][0].legend(fontsize="small", ncol=len(peers))
    fig.suptitle(f"cnnx bench ({report.get('dtype', 'float32')}): median time relative to "
                 "PyTorch CPU (lower is faster; hatched = timed once)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def environment(peers, threads):
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "machine": platform.machine(), "processor": platform.processor(),
           "cpu_count": os.cpu_count(), "numpy": np.__version__,
           "threads": list(threads), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
           "cpus_available": _cpus(), "load_1min_at_end": _loadavg(),
           # every peer's OpenMP runtime and OpenBLAS read these (importing cnnx sets
           # OMP_WAIT_POLICY=PASSIVE and OPENBLAS_THREAD_TIMEOUT=16 unless they were set)
           "env_vars": {k: os.environ.get(k) for k in (
               "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "CNNX_NUM_THREADS", "GOMP_SPINCOUNT",
               "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OPENBLAS_NUM_THREADS",
               "OPENBLAS_THREAD_TIMEOUT")
               + OPENBLAS_VARS}}
    try:
        import cnnx

        env["cnnx"] = {k: str(v) for k, v in cnnx.info_dict().items()}
    except Exception as exc:  # noqa: BLE001 - informational only
        env["cnnx"] = f"unavailable ({type(exc).__name__}: {exc})"
    env["peers"] = {p.name: {"description": p.description, "version": _safe(p.version)}
                    for p in peers}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        env["torch"] = torch.__version__
        env["torch_threads_after_run"] = torch.get_num_threads()
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        env["numba"] = numba.__version__
        env["numba_threading_layer"] = _safe(numba.threading_layer)
        env["numba_max_threads"] = numba.config.NUMBA_NUM_THREADS
    try:
        from threadpoolctl import threadpool_info

        env["threadpools"] = [{k: i.get(k) for k in ("user_api", "internal_api", "version",
                                                        "num_threads", "filepath",
                                                        "architecture", "threading_layer")}
                              for i in threadpool_info()]
    except ImportError:
        pass
    env["blas"] = blas_info()
    return env


def blas_info():
    """The BLAS libraries loaded in this process (threadpoolctl) and the OpenBLAS variables.

    -> {"libraries": [{"file", "filepath", "owner", "internal_api", "version",
    "architecture", "threading_layer"}...], "OPENBLAS_CORETYPE": value or None,
    "OPENBLAS_L2_SIZE": ..., "note": text or None}.  "architecture" is the kernel OpenBLAS
    runs (its core name); "owner" is "scipy" or "numpy" when the library sits in that
    wheel's ``*.libs`` folder (SciPy's is the one cnnx calls), else None.
    Reads the environment only: the variables are never set or unset here."""
    info = {"libraries": None}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl is a cnnx dependency
        pass
    else:
        info["libraries"] = [
            {"file": os.path.basename(i.get("filepath") or "") or None,
             "filepath": i.get("filepath"), "owner": _blas_owner(i.get("filepath")),
             "internal_api": i.get("internal_api"),
             "version": i.get("version"), "architecture": i.get("architecture"),
             "threading_layer": i.get("threading_layer")}
            for i in threadpool_info() if i.get("user_api") == "blas"]
    for var in OPENBLAS_VARS:
        info[var] = os.environ.get(var)
    core = info["OPENBLAS_CORETYPE"]
    info["note"] = (
        f"OPENBLAS_CORETYPE={core} forces OpenBLAS's {core} kernels whatever the CPU; to "
        f"benchmark the kernel OpenBLAS picks itself: env -u OPENBLAS_CORETYPE -u "
        f"OPENBLAS_L2_SIZE python bench/run_bench.py ..." if core else None)
    return info


def _blas_owner(path):
    folder = os.path.basename(os.path.dirname(path or ""))
    for owner in ("scipy", "numpy"):
        if folder.startswith(owner):
            return owner
    return None


_OWNER_NOTE = {"scipy": "SciPy's: cnnx's GEMMs", "numpy": "NumPy's: np.dot"}


def format_blas(info, indent="  "):
    """Report lines for :func:`blas_info`'s record."""
    lines = []
    libs = info.get("libraries")
    if libs is None:
        lines.append(f"{indent}BLAS: unknown (threadpoolctl not installed)")
    elif not libs:
        lines.append(f"{indent}BLAS: none loaded")
    for lib in libs or ():
        owner = _OWNER_NOTE.get(lib.get("owner"))
        lines.append(f"{indent}BLAS {lib['file']}: {lib['internal_api']} {lib['version']}, "
                     f"kernel {lib['architecture']}" + (f"  ({owner})" if owner else ""))
    env = [f"{v}={info[v]}" for v in OPENBLAS_VARS if info.get(v) is not None]
    if env:
        lines.append(f"{indent}environment: {' '.join(env)}")
    if info.get("note"):
        lines.append(f"{indent}note: {info['note']}")
    return lines


def steady_malloc():
    """Keep freed memory in this process (glibc's malloc only): returns (mode, description),
    mode "steady", or None when malloc was left as it is (description: why).

    glibc hands big blocks back to the OS when they are freed (munmap, or trimming the
    heap top) and its thresholds for that move with the process's history; the next
    array of that size then page-faults in again, 4 KiB at a time.  In one process with
    two libraries, whichever runs after the other pays for it, by turns: measured on this
    project's machine, cnnx's 2-thread conv_cifar forward 6 -> 24 ms right after a
    PyTorch call, PyTorch's 1-thread one 12 -> 27 ms (its output re-faulted).  Fixed
    thresholds (the largest mmap threshold glibc accepts, 32 MiB, and a 1 GiB trim
    threshold) make every peer reuse its freed arrays, so the timings are the kernels'
    and not the page-fault handler's -- the same remedy as PyTorch's CPU tuning guide's
    jemalloc/tcmalloc.  Arrays above 32 MiB are still mapped fresh for every peer."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None, "system malloc (no mallopt here: not glibc)"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    if mallopt(M_MMAP_THRESHOLD, 32 << 20) and mallopt(M_TRIM_THRESHOLD, 1 << 30):
        return "steady", ("glibc malloc keeps freed memory (mallopt: mmap threshold 32 MiB, "
                          "trim threshold 1 GiB; --malloc system: glibc's defaults)")
    return None, "system malloc (mallopt refused the thresholds)"


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------
# the textbook experiment
# ---------------------------------------------------------------------------
def run_textbook(peers, threads, opts, out):
    reps = opts.textbook
    shape = opts.textbook_shape
    case = normalise_case({"name": "textbook_maxpool", "op": "maxpool", "x": list(shape),
                           "k": 2, "s": 2})
    dtype = getattr(opts, "dtype", "float32")
    data = make_data(case, dtype)
    truth = _truth_peer(peers)
    bound, want = {}, None
    for peer in sorted(peers, key=lambda p: p is not truth):
        if peer.tiny_only:
            continue
        b = peer.setup(case, data)
        with thread_count(threads[0], peers):
            got = b.outputs()
        if peer is truth:
            want = got
        else:
            problems = compare_outputs(got, want)
            if problems:
                msg = f"textbook: {peer.name} does not match {truth.name}: " + "; ".join(problems)
                _log("MISMATCH " + msg + " -- not timed")
                out["mismatches"].append(msg)
                continue
        bound[peer.name] = b
    chunks = max(1, min(10, reps))
    rows = []
    for n in threads:
        with thread_count(n, peers):
            for b in bound.values():  # warm-up
                b.forward_backward()
            total = dict.fromkeys(bound, 0.0)
            names = list(bound)
            for c in range(chunks):
                k = reps // chunks + (1 if c < reps % chunks else 0)
                shift = c % len(names) if names else 0
                for name in names[shift:] + names[:shift]:
                    fn = bound[name].forward_backward
                    t0 = time.perf_counter()
                    for _ in range(k):
                        fn()
                    total[name] += time.perf_counter() - t0
        for name, t in total.items():
            rows.append({"threads": n, "peer": name, "reps": reps, "total_s": t,
                         "ms_per_rep": 1e3 * t / reps,
                         "textbook_total_s_scaled": (TEXTBOOK_SECONDS[name] * reps / TEXTBOOK_REPS
                                                     if name in TEXTBOOK_SECONDS else None)})
        _log(f"  textbook threads={n} done")
    out["textbook"] = {"shape": list(shape), "dtype": dtype, "kernel": 2, "stride": 2,
                       "reps": reps,
                       "book_seconds_for_5000": TEXTBOOK_SECONDS, "rows": rows}


def format_textbook(tb):
    lines = [f"textbook: max pooling 2x2/2 on x{tuple(tb['shape'])} "
             f"{tb.get('dtype', 'float32')}, forward+backward "
             f"x {tb['reps']} (the book: numba {TEXTBOOK_SECONDS['numba']} s, im2col "
             f"{TEXTBOOK_SECONDS['numpy']} s for {TEXTBOOK_REPS} on its machine)"]
    head = f"{'thr':>3}  {'peer':<10} {'total s':>9} {'ms/rep':>8} {'x torch':>8}"
    lines += [head, "-" * len(head)]
    for n in sorted({r["threads"] for r in tb["rows"]}):
        rows = [r for r in tb["rows"] if r["threads"] == n]
        torch_t = next((r["total_s"] for r in rows if r["peer"] == "torch"), None)
        for r in rows:
            ratio = f"{r['total_s'] / torch_t:.2f}" if torch_t else ""
            lines.append(f"{n:>3}  {r['peer']:<10} {r['total_s']:>9.3f} {r['ms_per_rep']:>8.3f} "
                         f"{ratio:>8}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text!r}")
    return values


def _name_list(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def _default_threads():
    ncpu = _cpus()
    return [1] if ncpu <= 1 else [1, min(ncpu, 2)]


def add_arguments(p):
    from ._bench_peers import DEFAULT_PEERS, PEERS

    p.add_argument("--threads", type=_int_list, default=None, metavar="N[,N...]",
                   help="thread counts, every peer alike (default: 1,2; --quick: 1)")
    p.add_argument("--peers", type=_name_list, default=list(DEFAULT_PEERS), metavar="LIST",
                   help=f"comma-separated peers from {', '.join(PEERS)} (default: "
                        f"{','.join(DEFAULT_PEERS)}); missing libraries are skipped with a note")
    p.add_argument("--cases", metavar="FILE", default=None,
                   help="JSON list of cases (same format as the built-in list) instead of the "
                        "built-in cases")
    p.add_argument("--only", type=_name_list, default=None, metavar="NAME[,NAME...]",
                   help="run only these cases (shell patterns allowed, e.g. 'conv_*')")
    p.add_argument("--no-tiny", action="store_true",
                   help="leave out the tiny cases (the only ones the reference runs)")
    p.add_argument("--repeat", type=int, default=None,
                   help="samples per (case, peer, mode, threads) (default 11; --quick 3)")
    p.add_argument("--min-repeat", type=int, default=3,
                   help="samples taken even when --max-time is used up (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up calls (default 1)")
    p.add_argument("--min-sample", type=float, default=0.005, metavar="SECONDS",
                   help="each sample repeats the call until it lasts this long (default 0.005)")
    p.add_argument("--max-call", type=float, default=1.5, metavar="SECONDS",
                   help="a call slower than this on warm-up is timed once only (default 1.5)")
    p.add_argument("--max-time", type=float, default=2.0, metavar="SECONDS",
                   help="time budget per (case, peer, mode, threads) after --min-repeat "
                        "samples (default 2)")
    p.add_argument("--modes", type=_name_list, default=list(MODES), metavar="LIST",
                   help="fwd, fwd+bwd or both (default both)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="data type of the inputs, of every peer's computation and of the GEMM "
                        "baseline (sgemm/dgemm) (default float32)")
    p.add_argument("--quick", action="store_true",
                   help="tiny cases, 3 samples, 1 thread, small baselines (smoke test)")
    p.add_argument("--textbook", type=int, nargs="?", const=TEXTBOOK_REPS, default=None,
                   metavar="REPS",
                   help="run the textbook's experiment instead of the cases: max pooling 2x2/2, "
                        f"batch 64, forward+backward REPS times (default {TEXTBOOK_REPS})")
    p.add_argument("--textbook-shape", type=_int_list,
                   default=list(TEXTBOOK_SHAPE), metavar="N,C,H,W",
                   help="input shape for --textbook (default %(default)s)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the copy-bandwidth and GEMM measurements")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write every raw timing and the environment here")
    p.add_argument("--png", metavar="PATH", default=None,
                   help="bar chart of ratios vs PyTorch (default: next to --json, .png)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--malloc", choices=MALLOC_CHOICES, default="steady",
                   help="steady (default): glibc keeps freed arrays in the process, so no "
                        "peer pays page faults for the one that ran before it; system: "
                        "leave malloc as it is")
    return p


def _select_cases(args):
    """Tiny cases (unless --no-tiny) + the built-in list, or the --cases file alone;
    --only picks by name among all of these and the tiny ones."""
    tiny = [normalise_case(c) for c in TINY_CASES]
    if args.quick and args.cases is None and args.only is None:
        return tiny
    loaded = load_cases(args.cases)
    cases = loaded if (args.cases is not None or args.no_tiny) else tiny + loaded
    if args.only:
        pool = cases + [c for c in tiny if c["name"] not in {x["name"] for x in cases}]
        chosen = [c for c in pool
                  if any(fnmatch.fnmatchcase(c["name"], pat) for pat in args.only)]
        if not chosen:
            raise ValueError(f"--only {','.join(args.only)} matches no case; cases: "
                             f"{', '.join(c['name'] for c in pool)}")
        cases = chosen
    return cases


def run(args):
    """Entry point of ``cnnx bench``; returns the exit status."""
    if args.repeat is None:
        args.repeat = 3 if args.quick else 11
    if args.threads is None:
        args.threads = [1] if args.quick else _default_threads()
    for name in ("repeat", "warmup"):
        if getattr(args, name) < (1 if name == "repeat" else 0):
            _log(f"cnnx bench: --{name} must be positive")
            return 2
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        _log(f"cnnx bench: --modes takes {', '.join(MODES)}, got {','.join(args.modes)}")
        return 2
    args.modes = [m for m in MODES if m in args.modes]
    if args.quick:
        args.min_repeat = min(args.min_repeat, args.repeat)
    try:
        cases = _select_cases(args) if args.textbook is None else []
        from ._bench_peers import PEERS

        unknown = [p for p in args.peers if p not in PEERS]
        if unknown:
            raise ValueError(f"unknown peer(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(PEERS)}")
        if args.textbook is not None and (args.textbook <= 0 or len(args.textbook_shape) != 4):
            raise ValueError("--textbook needs a positive count and --textbook-shape N,C,H,W")
    except (OSError, ValueError) as exc:
        _log(f"cnnx bench: {exc}")
        return 2

    malloc = (None, "system malloc (--malloc system)")
    if args.malloc == "steady":
        malloc = steady_malloc()
    peers, notes = load_peers(args.peers)
    for note in notes:
        _log(note)
    if not peers:
        _log("cnnx bench: no peer could be loaded")
        return 2
    peer_order = [p.name for p in peers]
    out = {"dtype": args.dtype, "cases": cases, "results": [], "notes": list(notes),
           "mismatches": [], "errors": [],
           "settings": {k: v for k, v in vars(args).items() if k != "func"},
           "load_1min_at_start": _loadavg()}
    t_start = time.perf_counter()

    baselines = {}
    if not args.no_baselines:
        _log("baselines: copy bandwidth and GEMM rate ...")
        baselines = measure_baselines(args.threads, args.quick, dtype=args.dtype)

    for case in cases:
        _log(f"case {case['name']} ({case['op']}, x={tuple(case['x'])}) ...")
        run_case(case, peers, args.threads, args, out)
    if args.textbook is not None:
        _log(f"textbook experiment: {args.textbook} repetitions ...")
        run_textbook(peers, args.threads, args, out)

    if baselines and not args.quick:
        _log("baselines again (the better of start and end is kept) ...")
        baselines = measure_baselines(args.threads, args.quick, previous=baselines,
                                      dtype=args.dtype)
    out["baselines"] = baselines
    derive(out["results"], baselines, cases, args.dtype)
    out["geomean"] = geomeans(out["results"])
    out["environment"] = environment(peers, args.threads)
    out["environment"]["malloc"] = {"mode": malloc[0] or "system", "how": malloc[1]}
    out["elapsed_s"] = time.perf_counter() - t_start

    print(report_text(out, peer_order))

    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, default=str)
        print(f"\nraw timings and environment written to {args.json}")
    if not args.no_plot and out["results"]:
        png = args.png or (os.path.splitext(args.json)[0] + ".png" if args.json else None)
        if png:
            why = write_png(out, png, peer_order)
            print(why if why else f"plot written to {png}")
    if out["mismatches"] or out["errors"]:
        print(f"\n{len(out['mismatches'])} MISMATCH(ES), {len(out['errors'])} error(s): "
              "see above", file=sys.stderr)
        return 1
    return 0


def report_text(out, peer_order):
    lines = []
    dtype = out.get("dtype", "float32")
    routine = gemm_routine(dtype)
    b = out.get("baselines") or {}
    blas = (out.get("environment") or {}).get("blas")
    if b:
        lines.append("machine baselines:")
        if "copy" in b:
            lines.append(f"  copy bandwidth   {b['copy']['gbps']:8.2f} GB/s   "
                         f"({b['copy']['how']}, 1 thread, read+write)")
        for n, g in b.get("gemm", {}).items():
            parts = ", ".join(f"{k[:-7]} {v:.1f}" for k, v in g.items()
                              if k.endswith("_gflops"))
            lines.append(f"  {g.get('routine', 'sgemm')} {g['n']}^3      {g['gflops']:8.1f} "
                         f"GFLOP/s at {n} thread(s)   ({parts}; {g['how']})")
    elif blas:
        lines.append("BLAS:")
    if blas:
        lines += format_blas(blas)
    malloc = (out.get("environment") or {}).get("malloc")
    if malloc:
        lines.append(f"  memory: {malloc['how']}")
    if b or blas:
        lines.append("")
    if out["results"]:
        lines.append(f"dtype: {dtype} (inputs and every peer's outputs; --dtype)")
        lines.append(format_table(out["results"], out["cases"], peer_order))
        lines.append("")
        lines.append("ms: median time per call (* = one call only, slower than --max-call); "
                     f"rate: GFLOP/s for conv, effective GB/s for pooling; % peak: of the "
                     f"{routine} rate at that thread count (conv) or of the copy bandwidth "
                     "(pooling); x torch: time / PyTorch's time (< 1 is faster).")
    if out["geomean"]:
        lines.append("")
        lines.append("geometric mean of cnnx/PyTorch time ratios (tiny cases excluded):")
        for g in out["geomean"]:
            lines.append(f"  threads={g['threads']!s:<4} mode={g['mode']:<8} "
                         f"{g['geomean_cnnx_over_torch']:.3f}  ({g['n_cases']} timings)")
    if "textbook" in out:
        lines.append("")
        lines.append(format_textbook(out["textbook"]))
    warning = load_warning(out["results"])
    if warning:
        lines += ["", warning]
    for key in ("notes", "mismatches", "errors"):
        if out[key]:
            lines.append("")
            lines.append(f"{key}:" if key == "notes" else f"{key.upper()}:")
            lines += [f"  {m}" for m in out[key]]
    return "\n".join(lines)


def register(subparsers):
    """Add the ``bench`` subcommand to ``cnnx``'s parser."""
    p = subparsers.add_parser(
        "bench", help="time cnnx against NumPy im2col, numba, PyTorch and the reference",
        description=__doc__.split("\n\n")[0] + " Prints a table; --json/--png save results.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv=None):
    """Standalone entry point (``python -m cnnx.benchmark``, bench/run_bench.py)."""
    parser = argparse.ArgumentParser(prog="cnnx bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
