"""The public ops: validate and normalise arguments, allocate outputs, call the kernels.

Semantics follow ``torch.nn.functional`` (NCHW; a 3-D ``(C, H, W)`` input is an
unbatched sample).  Every argument check lives in :mod:`cnnx._shapes`, shared
with :mod:`cnnx.reference`; the compiled kernels in ``_conv``, ``_pool`` and
``_activations`` assume valid input, release the GIL and never raise.

dtypes: float32 and float64 are computed natively and returned as given;
float16 is computed in float32 and returned as float16; integer and bool
arrays are promoted to float64 (as NumPy does with a float).  Inputs are never
modified and outputs never alias inputs.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Literal, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _activations
from ._kernels import conv as _conv  # the AVX2/FMA build of _conv.pyx when the CPU has it
from ._kernels import pool as _pool  # the AVX2 build of _pool.pyx when the CPU has it
from ._kernels import winograd as _winograd  # the AVX2 build of _winograd.pyx, likewise
from ._config import get_num_threads, set_num_threads
from ._shapes import (
    BLAS_INT_MAX,
    first_bad_index,
    index_error,
    prepare_avg_pool2d,
    prepare_avg_pool2d_backward,
    prepare_conv2d,
    prepare_conv2d_backward,
    prepare_max_pool2d,
    prepare_max_pool2d_backward,
    prepare_relu,
    prepare_relu_backward,
    restore_batch,
)

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv2d",
    "conv2d_backward",
    "get_num_threads",
    "max_pool2d",
    "max_pool2d_backward",
    "relu",
    "relu_backward",
    "set_num_threads",
]

ALGORITHMS = ("auto", "direct", "gemm", "winograd")

Size = Union[int, Tuple[int, int], Sequence[int]]
Padding = Union[Size, Literal["same", "valid"]]
Algorithm = Literal["auto", "direct", "gemm", "winograd"]

# One im2col tile holds about this many values (per thread): 128 KiB of float32, so the
# tile, its output and the weights stay in the L2 cache (measured best at 16-32K values).
TILE_ELEMENTS = 1 << 15
# ... but at least this many columns (output pixels), or the GEMM is too thin to be fast.
TILE_MIN_COLUMNS = 256
# Tiles of whole images come in a multiple of this many when the batch allows, so that two
# threads finish together (32x512x7x7 3x3 backward, 2 threads: 7 tiles of 5 images 51 ms,
# 8 tiles of 4 41 ms).  A constant, not the thread count: the tiles, and so the rounding,
# are the same at every thread count.
TILE_MULTIPLE = 2
# The forward uses the 'wide' im2col layout (stride 1) when the padded input width is at
# most this many times W_out (the extra GEMM columns it costs) and C_out/groups is at most
# WIDE_MAX_C_OUT (the fewer outputs, the larger im2col's share of the time).  Measured
# (1 thread, float32, forward, wide/narrow): x (64,1,28,28) k5 p2 6 out 0.65; (64,6,14,14)
# k5 16 out 0.74; (64,32,32,32) k3 p1 8 out 0.84, 16 out 0.91, 32 out 1.04, 64 out 1.06.
WIDE_MAX_RATIO = 1.5
WIDE_MAX_C_OUT = 16
# Below this much work a call runs on one thread: waking a sleeping OpenMP worker costs
# ~10-30 us (~100 us on some VMs), so only calls worth ~100 us or more go parallel.  Work
# is counted in elements (relu); a conv multiply-add (run by BLAS) counts 1/16, a pooling
# window tap 1/8 (1/4 in windows of more than 4 taps, _pool_work): pooling is memory-bound,
# and a second thread paid only from about 2**21 taps of 2x2 windows (AMD EPYC VM,
# float32, 1 vs 2 threads: 2x2 max pooling of 1x256x64x64, 2**20 taps,
# 0.41 vs 0.47 ms forward, 0.32 vs 0.41 backward; 64x32x32x32, 2**21 taps, 0.95 vs 0.62
# and 0.61 vs 0.43; 3x3/1/1 average of 1x64x64x64, 2**21 taps, 1.69 vs 1.35).
_PARALLEL_MIN_WORK = 1 << 18
_CONV_WORK_SCALE = 16
_POOL_WORK_SCALE = 8
_POOL_BIG_WINDOW_SCALE = 4


def _pool_work(spec, n_out):
    """Work units of a pooling forward with ``n_out`` outputs: its window taps, over
    _POOL_WORK_SCALE for windows of up to 4 taps and over _POOL_BIG_WINDOW_SCALE for bigger
    ones (their kernels spend more time per tap: 3x3/2/1 max of 1x64x112x112, 2**20.8
    taps, 1.5-1.6x faster forward on 2 threads, average 1.5x) -- except windows of whole
    input rows (global pooling: one contiguous run per window, _argmax.h / run_sum), where
    a second thread pays from ~2**18 taps (measured, AMD EPYC, 1 vs 2 threads: max
    16x512x7x7 0.32 vs 0.23 ms, 8x256x14x14 0.15 vs 0.11, average 16x512x7x7 0.12 vs
    0.09)."""
    taps = n_out * spec.KH * spec.KW
    if spec.W_out == 1 and spec.pad_w == 0 and spec.KW >= spec.W and spec.dilation_w == 1:
        return taps
    return taps // _pool_tap_scale(spec)


def _pool_tap_scale(spec):
    """Taps per work unit of a pooling kernel's windows (_pool_work)."""
    return _POOL_WORK_SCALE if spec.KH * spec.KW <= 4 else _POOL_BIG_WINDOW_SCALE


def _threads_for(work, items):
    """Threads for a call doing ``work`` units split into ``items`` pieces."""
    n = get_num_threads()
    if work < _PARALLEL_MIN_WORK:
        return 1
    return max(1, min(n, items))


def _finish(arr, result_dtype, batched=True):
    arr = restore_batch(arr, batched)
    return arr if arr.dtype == result_dtype else arr.astype(result_dtype)


# --------------------------------------------------------------------------
# BLAS threads: one thread inside cnnx's own parallel loops (no oversubscription)
# --------------------------------------------------------------------------
_blas_lock = threading.Lock()
_blas_state = {"libs": None, "users": 0, "saved": None}


def _blas_libs():
    """threadpoolctl's handles on the loaded BLAS libraries (looked up once)."""
    if _blas_state["libs"] is None:
        from threadpoolctl import ThreadpoolController

        _blas_state["libs"] = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas_state["libs"]


@contextmanager
def _blas_threads(n):
    """Run the block with the BLAS libraries limited to ``n`` threads.

    Inside cnnx's own OpenMP loops BLAS must stay on one thread, or the two
    thread pools oversubscribe the cores.  Reference-counted, so concurrent
    cnnx calls from several Python threads restore the user's setting only
    when the last one leaves; the library handles are cached, so a call costs
    a few microseconds rather than threadpoolctl's full library scan.
    """
    with _blas_lock:
        if _blas_state["users"] == 0:
            libs = _blas_libs()
            _blas_state["saved"] = [lib.get_num_threads() for lib in libs]
            for lib, old in zip(libs, _blas_state["saved"]):
                if old != n:
                    lib.set_num_threads(n)
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0:
                for lib, old in zip(_blas_libs(), _blas_state["saved"]):
                    if old != n:
                        lib.set_num_threads(old)


# A single work item's GEMMs go to the threaded BLAS only when each call has at least this
# many multiply-adds: a batch-1 backward is one work item of many tile GEMMs, and OpenBLAS
# threading small ones cost more than it gave (measured on this project's bench machine,
# 2 threads, float32 backward, BLAS on 2 threads vs 1, two runs: 1x3x224x224 7x7/2 -> 64, 56
# calls of 2.1e6, 26.3 vs 13.4 ms and 17.1 vs 12.7; 1x256x14x14 1x1 -> 64, 3.2e6, 0.77 vs
# 0.50 and 0.72 vs 0.52; but 1x128x28x28 3x3/2 -> 256, one of 5.8e7, 5.0 vs 5.7 and 4.1 vs
# 4.9, 1x256x14x14 3x3 -> 256, 1.2e8, 9.6 vs 11.0 and 6.9 vs 8.8; in between, 1x32x28x28
# 5x5 -> 64, 4 calls of 1.3e7, 5.1 vs 3.7 and 2.9 vs 3.8, keeps the threaded BLAS).
GEMM_BLAS_THREADS_MIN_CALL = 1 << 23


def _gemm_blas_threads(n_threads, work, call_work=None):
    """BLAS threads for a GEMM path running ``n_threads`` work items at once: one inside a
    parallel loop; cnnx's thread count for a single work item, unless the call is too
    small for a second thread (``work`` below _PARALLEL_MIN_WORK: waking OpenBLAS's
    sleeping worker for a 0.1 ms GEMM made a batch-1 1x1 convolution's 2-thread
    fwd+bwd swing from 0.6 to 5 ms between bench runs on this project's VM) or its GEMM
    calls are (``call_work`` multiply-adds each, below GEMM_BLAS_THREADS_MIN_CALL)."""
    if n_threads > 1 or work < _PARALLEL_MIN_WORK:
        return 1
    if call_work is not None and call_work < GEMM_BLAS_THREADS_MIN_CALL:
        return 1
    return get_num_threads()


# --------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------
def _check_algorithm(algorithm, spec=None):
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "winograd" and spec is not None and not _winograd_fits(spec):
        raise ValueError(
            "algorithm='winograd' needs a 3x3 kernel, stride 1 and dilation 1; got kernel "
            f"{(spec.KH, spec.KW)}, stride {(spec.stride_h, spec.stride_w)}, dilation "
            f"{(spec.dilation_h, spec.dilation_w)}")


def _winograd_fits(spec):
    """Winograd F(2x2, 3x3) computes exactly the 3x3, stride-1, undilated convolutions."""
    return ((spec.KH, spec.KW, spec.stride_h, spec.stride_w, spec.dilation_h, spec.dilation_w)
            == (3, 3, 1, 1, 1, 1))


def _winograd_pays(spec):
    """Whether 'auto' should run this convolution with Winograd (see WINOGRAD_MIN_*)."""
    C_in_g, C_out_g = spec.C_in // spec.groups, spec.C_out // spec.groups
    sample_tiles = ((spec.H_out + 1) // 2) * ((spec.W_out + 1) // 2)
    return (_winograd_fits(spec) and min(C_in_g, C_out_g) >= WINOGRAD_MIN_CHANNELS
            and C_in_g * C_out_g >= WINOGRAD_MIN_CHANNEL_PAIRS
            and spec.N * sample_tiles >= WINOGRAD_MIN_TILES
            and sample_tiles >= WINOGRAD_MIN_SAMPLE_TILES)


def _all_finite(a):
    """True when ``a`` holds no inf or NaN.  One pass: a finite sum means every term is
    finite (a sum that overflows says False, which only costs the faster algorithm)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return a.size == 0 or bool(np.isfinite(np.add.reduce(a, axis=None)))


# Below this many multiply-adds 'auto' picks the direct loops: the GEMM path's fixed
# costs (workspace, BLAS set-up) dominate there.  Above it im2col + GEMM wins, except for
# depthwise convolutions (one input and one output channel per group) with output rows of
# at least DEPTHWISE_DIRECT_MIN_W values: a GEMM per channel then has one row, and im2col
# moves KH*KW times the data that the direct loops read.  Measured on this project's bench
# machine (float32, fwd+bwd ms, direct vs gemm, 1 thread, one run): 3x3 8x64x56x56 3.3 vs
# 5.7, 3x3/2 8x128x56x56 7.3 vs 9.7, 5x5 8x64x28x28 1.9 vs 3.2, 3x3 8x512x14x14 3.0 vs 3.8,
# 8x512x10x10 2.1 vs 2.3; but 8x1024x7x7 3.8 vs 3.3, and with a channel multiplier of 2
# (8x64x56x56 -> 128) nothing to gain: 7.5 vs 7.6.
DIRECT_MAX_WORK = 1 << 16
DEPTHWISE_DIRECT_MIN_W = 10
# 'auto' takes Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions with at least
# WINOGRAD_MIN_CHANNELS input and output channels per group, their product at least
# WINOGRAD_MIN_CHANNEL_PAIRS, WINOGRAD_MIN_TILES 2x2 output tiles in the batch and
# WINOGRAD_MIN_SAMPLE_TILES per sample: below these its GEMMs are too thin, or the
# transformed weights (16 x C_out x C_in, read again by every work item, which holds the
# tiles of one sample) too large a share, to beat im2col + GEMM.  Measured on this
# project's bench machine, 1 and 2 threads: 8x256x14x14 -> 256 (392 tiles, 49 per sample)
# Winograd 25 ms fwd+bwd vs GEMM 30; 8x512x7x7 (16 per sample) GEMM 39 vs 54;
# 1x256x14x14 (49 tiles) GEMM 4.8 vs 7.6.
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_CHANNEL_PAIRS = 512
WINOGRAD_MIN_TILES = 256
WINOGRAD_MIN_SAMPLE_TILES = 36
# Winograd work items hold about this many 2x2 output tiles (its workspace is
# 16 * (C_in_g + C_out_g) values per tile).
WINOGRAD_TILES = 128
# The Winograd-domain products in the blocked kernel (_winograd.forward's ``blocked``) up to
# this many input channels per group, the BLAS above (measured on this project's bench
# machine, 1 thread, float32 forward, blocked vs BLAS: 64x16x32x32 -> 32 1.14-1.25x faster,
# 64x32x32x32 -> 64 1.02-1.13, 8x64x28x28 1.07, 32x64x56x56 1.02-1.20; 8x128x28x28 0.91,
# 8x256x16x16 0.93, 8x256x14x14 0.63-0.80, 49 tiles a band, 15 of 64 spare).
WINOGRAD_BLOCKED_MAX_C_IN = 64


# The blocked direct kernels (_conv.correlate, _conv.correlate_weight_grad) copy a band of
# input rows at a time, zero-padded and split into stride phases, of about this many values
# (so that it stays in the L2 cache while every output channel block reads it) ...
BLOCKED_BAND_VALUES = 1 << 14
# ... and not for geometries where one output row's band would exceed this many values
# (rows of millions of values), or a kernel spans more than BLOCKED_MAX_SPAN rows or
# columns (huge dilations: bands of mostly zeros): the per-plane direct loops run those.
BLOCKED_MAX_BAND_VALUES = 1 << 22
BLOCKED_MAX_SPAN = 1 << 10
# correlate_weight_grad's partial sums: the (sample, band) pairs in this many runs, a
# constant (not the thread count) so that the rounding is the same at every thread count,
# and fewer when the runs' partial sums would hold more than BLOCKED_GW_MAX_VALUES doubles
# (a huge weight under an explicit algorithm='direct': one run, one thread).
BLOCKED_GW_RUNS = 16
BLOCKED_GW_MAX_VALUES = 1 << 22


def _corr_band(n_src, W_out, H_out, KH, KW, S_h, S_w, D_h, D_w):
    """Output rows per band of a blocked correlation, or 0 when it does not fit (strides
    over 8, spans over BLOCKED_MAX_SPAN, or a single row's band over
    BLOCKED_MAX_BAND_VALUES values)."""
    if S_h > 8 or S_w > 8 or max(D_w * (KW - 1), D_h * (KH - 1)) > BLOCKED_MAX_SPAN:
        return 0
    n_phases = (len({(u * D_h) % S_h for u in range(KH)})
                * len({(v * D_w) % S_w for v in range(KW)}))
    halo = (D_h * (KH - 1)) // S_h
    row = n_src * n_phases * (W_out + (D_w * (KW - 1)) // S_w)
    if row * (1 + halo) > BLOCKED_MAX_BAND_VALUES:
        return 0
    return max(1, min(H_out, BLOCKED_BAND_VALUES // max(row, 1) - halo))


def _blocked_weights(weight, groups, transposed=False):
    """The kernels blocked for _conv.correlate: (groups, blocks) with block b (outputs
    b*BLOCK on, _conv.block_width) at b*BLOCK*T, holding tap t's weights of its outputs at
    t*width (zeros past the group's outputs).  ``transposed``: the kernels of the input
    gradient (in <-> out channels swapped, flipped in both directions)."""
    C_out, C_in_g, KH, KW = weight.shape
    w = weight.reshape(groups, C_out // groups, C_in_g, KH, KW)
    if transposed:
        w = w[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    n_dst, B = w.shape[1], _conv.BLOCK
    w = w.reshape(groups, n_dst, -1)
    T = w.shape[2]
    n_ob, last = _conv.block_width(n_dst)
    wb = np.zeros((groups, ((n_ob - 1) * B + last) * T), dtype=weight.dtype)
    for b in range(n_ob):
        width = last if b == n_ob - 1 else B
        block = wb[:, b * B * T:(b * B + width) * T].reshape(groups, T, width)
        block[:, :, :min(width, n_dst - b * B)] = w[:, b * B:b * B + width].transpose(0, 2, 1)
    return wb


def _blocked_forward_band(spec, weight):
    """Band rows for the blocked forward, or 0 when it does not apply: depthwise-like
    groups (one output channel: the per-plane loops), or padding next to a non-finite
    weight (the padding's zeros would meet it: 0 * inf = NaN)."""
    if spec.C_out // spec.groups < 2:
        return 0
    padded = spec.pad_top or spec.pad_left or spec.pad_bottom or spec.pad_right
    if padded and not _all_finite(weight):
        return 0
    return _corr_band(spec.C_in // spec.groups, spec.W_out, spec.H_out, spec.KH, spec.KW,
                      spec.stride_h, spec.stride_w, spec.dilation_h, spec.dilation_w)


def _blocked_input_grad_band(spec, weight):
    """Band rows for the blocked input gradient (stride 1 only: the correlation of grad_y
    with the flipped kernels, padded by D*(K-1) - P; a finite weight), or 0."""
    if (spec.stride_h, spec.stride_w) != (1, 1) or spec.C_in // spec.groups < 2:
        return 0
    if not _all_finite(weight):
        return 0
    return _corr_band(spec.C_out // spec.groups, spec.W, spec.H, spec.KH, spec.KW, 1, 1,
                      spec.dilation_h, spec.dilation_w)


def _blocked_weight_grad_band(spec, grad_out_finite):
    """Band rows for the blocked weight gradient (a finite grad_out: the copies' zero
    padding is multiplied by it), or 0."""
    if spec.C_out // spec.groups < 2 or not grad_out_finite:
        return 0
    return _corr_band(spec.C_in // spec.groups, spec.W_out, spec.H_out, spec.KH, spec.KW,
                      spec.stride_h, spec.stride_w, spec.dilation_h, spec.dilation_w)


def _blocked_work(n_src, H_src, W_src, n_dst, H_out, W_out, spec, stride, band, n_threads):
    size = _conv.blocked_workspace(n_src, H_src, W_src, n_dst, H_out, W_out, spec.KH,
                                   spec.KW, *stride, spec.dilation_h, spec.dilation_w, band)
    return np.empty((n_threads, size), dtype=np.float64)


def _blocked_conv(x, weight, b, has_bias, y, spec, band, work):
    """y = conv2d(x, weight) + b through _conv.correlate."""
    G = spec.groups
    n_bands = -(-spec.H_out // band)
    n_threads = _threads_for(work, spec.N * G * n_bands)
    scratch = _blocked_work(spec.C_in // G, spec.H, spec.W, spec.C_out // G, spec.H_out,
                            spec.W_out, spec, (spec.stride_h, spec.stride_w), band, n_threads)
    _conv.correlate(x, _blocked_weights(weight, G), b, has_bias, y, scratch, G, spec.KH,
                    spec.KW, spec.stride_h, spec.stride_w, spec.dilation_h, spec.dilation_w,
                    spec.pad_top, spec.pad_left, band, n_threads)


def _blocked_input_grad(grad_out, weight, grad_x, spec, band, work):
    """grad_x of a stride-1 convolution through _conv.correlate (OUT grad_x)."""
    G = spec.groups
    n_threads = _threads_for(work, spec.N * G * -(-spec.H // band))
    scratch = _blocked_work(spec.C_out // G, spec.H_out, spec.W_out, spec.C_in // G, spec.H,
                            spec.W, spec, (1, 1), band, n_threads)
    _conv.correlate(grad_out, _blocked_weights(weight, G, transposed=True),
                    np.empty(0, grad_out.dtype), False, grad_x, scratch, G, spec.KH, spec.KW,
                    1, 1, spec.dilation_h, spec.dilation_w,
                    spec.dilation_h * (spec.KH - 1) - spec.pad_top,
                    spec.dilation_w * (spec.KW - 1) - spec.pad_left, band, n_threads)


def _blocked_weight_grad(grad_out, x, spec, band, work):
    """grad_weight through _conv.correlate_weight_grad: per-run partial sums in double,
    added up in run order."""
    G, C_out_g, C_in_g = spec.groups, spec.C_out // spec.groups, spec.C_in // spec.groups
    n_pad, T = -(-C_out_g // 16) * 16, C_in_g * spec.KH * spec.KW
    runs = max(1, min(BLOCKED_GW_RUNS, spec.N * -(-spec.H_out // band),
                      BLOCKED_GW_MAX_VALUES // (G * T * n_pad)))
    n_threads = _threads_for(work, runs)
    size = _conv.weight_grad_workspace(C_in_g, spec.H, spec.W, C_out_g, spec.H_out,
                                       spec.W_out, spec.KH, spec.KW, spec.stride_h,
                                       spec.stride_w, spec.dilation_h, spec.dilation_w, band)
    scratch = np.empty((n_threads, size), dtype=np.float64)
    partial = np.empty((runs, G * T * n_pad), dtype=np.float64)
    _conv.correlate_weight_grad(x, grad_out, partial, scratch, G, spec.KH, spec.KW,
                                spec.stride_h, spec.stride_w, spec.dilation_h, spec.dilation_w,
                                spec.pad_top, spec.pad_left, band, n_threads)
    total = partial.sum(axis=0) if runs > 1 else partial[0]
    grad_w = total.reshape(G, T, n_pad)[:, :, :C_out_g].transpose(0, 2, 1)
    return np.ascontiguousarray(grad_w.reshape(spec.C_out, C_in_g, spec.KH, spec.KW), x.dtype)


def _conv_work(spec):
    """Multiply-adds of one conv2d forward."""
    return (spec.N * spec.C_out * spec.H_out * spec.W_out
            * (spec.C_in // spec.groups) * spec.KH * spec.KW)


def _depthwise_direct_pays(spec):
    """Whether 'auto' should run this depthwise convolution with the direct loops."""
    return (spec.groups > 1 and spec.C_in == spec.groups and spec.C_out == spec.groups
            and spec.W_out >= DEPTHWISE_DIRECT_MIN_W)


# 'auto' takes the blocked direct kernels (_conv.correlate) for convolutions with at most
# BLOCKED_MAX_TAPS taps per output (C_in/groups*KH*KW) and 2 to BLOCKED_MAX_C_OUT output
# channels per group, not 1x1, where Winograd does not pay: im2col + GEMM is slowest there
# (OpenBLAS's packing of thin matrices costs more than the product).  Measured on this
# project's bench machine (AMD EPYC, AVX2, 1 thread, float32, forward ms, blocked vs gemm):
# 64x1x28x28 5x5 -> 6 0.52 vs 1.95, 64x6x14x14 5x5 -> 16 0.68 vs 1.55, 64x3x32x32 3x3/2 -> 16
# 0.47 vs 0.76, 8x3x224x224 7x7/2 -> 64 27 vs 35, 64x3x32x32 3x3 -> 32 2.2 vs 3.5; level or
# behind from 256 taps and 256 channels (8x256x14x14 3x3: 26.7 vs 24.6; 16x128x28x28 3x3/2
# -> 256: 31.7 vs 25.0).  The backward pass only with at most BLOCKED_BACKWARD_MAX_C_OUT
# output channels and stride 1 (the blocked input gradient needs stride 1): 64x6x14x14 -> 16
# 1.78 vs 2.20 ms, 64x1x28x28 -> 6 2.90 vs 3.65; 64x3x32x32 3x3 -> 32 7.4 vs 7.8, at 2
# threads 6.6 vs 5.7.
BLOCKED_MAX_TAPS = 640
BLOCKED_MAX_C_OUT = 64
BLOCKED_BACKWARD_MAX_C_OUT = 16


def _blocked_pays(spec, backward):
    """Whether 'auto' should run this convolution with the blocked direct kernels."""
    C_out_g = spec.C_out // spec.groups
    taps = spec.C_in // spec.groups * spec.KH * spec.KW
    if spec.KH * spec.KW == 1 or taps > BLOCKED_MAX_TAPS or C_out_g < 2:
        return False
    if backward:
        return (C_out_g <= BLOCKED_BACKWARD_MAX_C_OUT
                and (spec.stride_h, spec.stride_w) == (1, 1))
    return C_out_g <= BLOCKED_MAX_C_OUT


def _choose_algorithm(algorithm, spec, factor, *others, factor_finite=None, backward=False):
    """'direct', 'gemm' or 'winograd' for ``algorithm``.

    ``auto`` takes the direct loops for tiny convolutions, depthwise ones with rows of
    at least DEPTHWISE_DIRECT_MIN_W outputs, the blocked ones where they pay
    (_blocked_pays; ``backward``: for conv2d_backward), and whenever there is
    padding and ``factor`` (the array multiplied with the padded im2col matrix:
    the weight going forward, grad_out going backward) holds an inf or NaN: the
    GEMM would multiply the padding's zeros by it (0 * inf = NaN) where the
    formula, like PyTorch's float32 path, skips padding taps.  Winograd (3x3,
    stride 1, enough channels) needs ``factor`` and ``others`` (x going forward;
    the weight and x going backward) finite: its transforms add and subtract
    neighbouring values, so one inf would turn into NaN in the outputs around it.
    ``factor_finite``, when given, is already known for ``factor``.
    """
    if algorithm != "auto":
        return algorithm
    if _conv_work(spec) < DIRECT_MAX_WORK or _depthwise_direct_pays(spec):
        return "direct"
    padded = spec.pad_top or spec.pad_left or spec.pad_bottom or spec.pad_right
    if factor_finite is None:
        factor_finite = _all_finite(factor)
    if padded and not factor_finite:
        return "direct"
    if _winograd_pays(spec) and factor_finite and all(_all_finite(a) for a in others):
        return "winograd"
    if _blocked_pays(spec, backward):
        return "direct"
    return "gemm"


def _gemm_wide(spec):
    """Whether the forward GEMM uses the 'wide' im2col layout.

    Wide columns cover the padded input width Wp = W_out + D_w*(KW-1) (stride 1;
    for larger strides the width of a polyphase plane, W_out + (D_w*(KW-1))//S_w):
    each im2col row is one long copy instead of H_out short ones, for Wp/W_out
    times the GEMM columns.  Pays when rows are short and the extra columns
    few (see _conv.im2col_wide_tile).
    """
    if (spec.KH == 1 and spec.KW == 1) or spec.C_out // spec.groups > WIDE_MAX_C_OUT:
        return False
    return _wide_width(spec) <= WIDE_MAX_RATIO * spec.W_out


def _wide_width(spec):
    """Columns per output row of the wide layout (_conv.wide_width)."""
    return spec.W_out + (spec.dilation_w * (spec.KW - 1)) // spec.stride_w


def _gemm_wide_backward(spec, weight):
    """Whether backward_gemm uses the wide layout: as the forward, stride 1 and float32
    only, and only for a finite weight (the garbage columns of grad_col are 0 * weight, added into the
    padded input band).

    Measured 1 thread, wide/narrow backward: float32 0.88-0.96 over (64,1,28,28) k5 p2
    6 out, (64,6,14,14) k5 16 out, (64,3,32,32) / (64,32,32,32) k3 p1 8-16 out; float64
    1.00-1.19 on the same cases (the extra GEMM columns cost more than the copies save).
    """
    return (weight.dtype == np.float32 and spec.stride_h == 1 and spec.stride_w == 1
            and _gemm_wide(spec) and _all_finite(weight))


def _lane_use(m):
    """Fraction of a 16-row BLAS micro-kernel tile that ``m`` rows fill."""
    return m / (16 * -(-m // 16))


GW_TRANSPOSED_MAX = 1 << 20


def _gemm_gw_transposed(spec):
    """Whether backward_gemm accumulates grad_weight transposed (GEMM m = C_out/groups).

    OpenBLAS's kernels work on 16-row blocks of m: the orientation whose m fills
    them better wins (measured 1 thread, float32 backward: (64,6,14,14) k5 16 out
    1.12 -> 0.94 ms, (64,32,32,32) k3 64 out 34.0 -> 32.1 ms; (64,1,28,28) k5 6 out
    is slower transposed, m = 6 fills 6/16 of a block).  Not for weights of more than
    GW_TRANSPOSED_MAX values: reading the per-thread sums back transposed then misses the
    cache on most reads (512 x 512 x 3 x 3, 8 x 7 x 7 inputs: 23.5 -> 22.3 ms at 1 thread,
    13.7 -> 12.6 at 2, untransposed).
    """
    K = spec.C_in // spec.groups * spec.KH * spec.KW
    return (_lane_use(spec.C_out // spec.groups) >= _lane_use(K)
            and spec.C_out * K <= GW_TRANSPOSED_MAX)


def _gemm_plan(spec, backward, wide=False):
    """(samples per tile, rows per tile, per-thread workspace size) for the GEMM path.

    The workspace is bounded (about TILE_ELEMENTS values per matrix), never an
    im2col buffer for the whole batch.
    """
    C_in_g = spec.C_in // spec.groups
    C_out_g = spec.C_out // spec.groups
    K = C_in_g * spec.KH * spec.KW
    samples, rows = _conv.gemm_tiling(spec, TILE_ELEMENTS, TILE_MIN_COLUMNS, wide,
                                      TILE_MULTIPLE)
    width = _wide_width(spec) if wide else spec.W_out
    columns = samples * rows * width
    if max(K, C_out_g, spec.H_out * spec.W_out, K * columns, C_out_g * columns) > BLAS_INT_MAX:
        raise ValueError(
            f"conv2d: a matrix dimension exceeds the 32-bit BLAS limit ({BLAS_INT_MAX}) for "
            f"x shape {spec.in_shape} and weight shape ({spec.C_out}, {C_in_g}, {spec.KH}, "
            f"{spec.KW}); use algorithm='direct'"
        )
    if backward:   # col, grad_col and a grad_y tile
        size = 2 * K * columns + C_out_g * columns
    else:          # col and an output tile
        size = K * columns + C_out_g * columns
    if wide:       # + one padded input plane band (stride > 1: its S_h*S_w polyphase planes)
        size += (spec.stride_h * spec.stride_w
                 * (rows + (spec.dilation_h * (spec.KH - 1)) // spec.stride_h) * width)
    return samples, rows, size


def _winograd_weights(weight, groups, blocked):
    """The kernels in Winograd form for _winograd.forward, (16, groups, values): U (16,
    C_out, C_in_g) (see cnnx/_winograd.pyx), each U[xi] blocked like 1x1 kernels for
    _conv.correlate when ``blocked``."""
    C_out, C_in_g = weight.shape[:2]
    U = np.empty((16, C_out, C_in_g), dtype=weight.dtype)
    _winograd.weight_transform(weight, U, _threads_for(U.size, C_out))
    if blocked:
        U = _blocked_weights(U.reshape(16 * C_out, C_in_g, 1, 1), 16 * groups)
    return U.reshape(16, groups, -1)


def _winograd_plan(x, C_out, H_out, W_out, groups, work):
    """(tile rows per band, threads, per-thread workspace) for a Winograd kernel whose
    tiles cover an H_out x W_out output of C_out channels computed from ``x``."""
    N, C_in = x.shape[:2]
    tH, tW = (H_out + 1) // 2, (W_out + 1) // 2
    tile_rows = max(1, min(tH, WINOGRAD_TILES // max(tW, 1)))
    if 16 * max(C_in, C_out) * tile_rows * tW > BLAS_INT_MAX:
        raise ValueError(f"conv2d: x shape {x.shape} is too large for algorithm='winograd' "
                         f"(32-bit BLAS); use algorithm='gemm'")
    n_threads = _threads_for(work, N * groups * -(-tH // tile_rows))
    size = _winograd.workspace_size(C_in // groups, C_out // groups, W_out, tile_rows)
    return tile_rows, n_threads, np.empty((n_threads, size), dtype=x.dtype)


def _winograd_blocked(C_in_g, T):
    """Whether _winograd.forward should multiply in the blocked kernel (rather than the
    BLAS): for at most WINOGRAD_BLOCKED_MAX_C_IN input channels per group, where the BLAS's
    packing of V costs most next to the product, and bands of T tiles that the kernel's
    runs of 16 tiles cover with at most 1/8 of them to spare."""
    spare = -T % 16
    return C_in_g <= WINOGRAD_BLOCKED_MAX_C_IN and 8 * spare <= T + spare


def _winograd_conv(x, weight, b, has_bias, y, groups, pad_top, pad_left, work):
    """y = 3x3 stride-1 conv of x (kernels ``weight``, (C_out, C_in_g, 3, 3)), tiles split
    over threads."""
    tile_rows, n_threads, scratch = _winograd_plan(x, *y.shape[1:], groups, work)
    blocked = _winograd_blocked(x.shape[1] // groups, tile_rows * ((y.shape[3] + 1) // 2))
    U = _winograd_weights(weight, groups, blocked)
    with _blas_threads(1):
        _winograd.forward(x, U, blocked, b, has_bias, y, scratch, groups, pad_top, pad_left,
                          tile_rows, n_threads)


def _winograd_weight_grad(grad_out, x, spec, work):
    """grad_weight of a 3x3 stride-1 conv in Winograd form (see _winograd.weight_grad)."""
    G, C_out, C_in_g = spec.groups, spec.C_out, spec.C_in // spec.groups
    tile_rows, n_threads, scratch = _winograd_plan(x, *grad_out.shape[1:], G, work)
    acc = np.zeros((n_threads, 16 * C_out * C_in_g), dtype=x.dtype)
    with _blas_threads(1):
        _winograd.weight_grad(x, grad_out, acc, scratch, G, spec.pad_top, spec.pad_left,
                              tile_rows, n_threads)
    with np.errstate(over="ignore", invalid="ignore"):
        dU = acc.sum(axis=0) if n_threads > 1 else acc[0]
    grad_w = np.empty((C_out, C_in_g, 3, 3), dtype=x.dtype)
    _winograd.weight_grad_transform(dU.reshape(16, C_out, C_in_g), grad_w,
                                    _threads_for(dU.size, C_out))
    return grad_w


def _winograd_input_grad(grad_out, weight, grad_x, spec, work):
    """grad_x of a 3x3 stride-1 conv: the conv of grad_out with each group's kernels
    transposed (in <-> out channels) and flipped, padding 2 - P (OUT grad_x)."""
    G, C_out_g, C_in_g = spec.groups, spec.C_out // spec.groups, spec.C_in // spec.groups
    flipped = (weight.reshape(G, C_out_g, C_in_g, 3, 3).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
               .reshape(spec.C_in, C_out_g, 3, 3))
    _winograd_conv(grad_out, flipped, np.empty(0, grad_out.dtype), False,
                   grad_x, G, 2 - spec.pad_top, 2 - spec.pad_left, work)


def conv2d(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None, stride: Size = 1,
           padding: Padding = 0, dilation: Size = 1, groups: int = 1, *,
           algorithm: Algorithm = "auto") -> NDArray:
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    ``x`` (N, C_in, H, W) or (C_in, H, W); ``weight`` (C_out, C_in/groups, KH, KW);
    ``bias`` (C_out,) or None.  ``padding`` is an int, a pair, ``'valid'`` or
    ``'same'`` (stride 1; an odd total padding puts the extra row/column at the
    bottom/right, as PyTorch).  ``algorithm`` is ``'auto'``, ``'direct'``, ``'gemm'`` or
    ``'winograd'`` (3x3, stride 1, dilation 1 only; non-finite data spreads as NaN to the
    outputs around it, so ``'auto'`` takes it only for finite data).

    Padding taps contribute nothing, even next to an inf or NaN weight (as in
    PyTorch's float32 path); ``'auto'`` guarantees this.  An explicit
    ``algorithm='gemm'`` multiplies the padding's zeros (0 * inf = NaN at the
    border, as PyTorch's float64 path does).

    Output::

        H_out = floor((H + P_top + P_bottom - D_h*(KH - 1) - 1) / S_h) + 1   (W_out alike)
        y[n, o, i, j] = bias[o] + sum_{c,u,v} weight[o, c, u, v]
                        * x[n, g*C_in/groups + c, i*S_h - P_top + u*D_h, j*S_w - P_left + v*D_w]
    """
    _check_algorithm(algorithm)
    x, weight, bias, spec, result = prepare_conv2d(x, weight, bias, stride, padding, dilation,
                                                   groups)
    _check_algorithm(algorithm, spec)
    y = np.empty(spec.out_shape, dtype=x.dtype)
    if spec.N == 0:
        return _finish(y, result, spec.batched)
    has_bias = bias is not None
    b = bias if has_bias else np.empty(0, dtype=x.dtype)
    algo = _choose_algorithm(algorithm, spec, weight, x)
    work = _conv_work(spec) // _CONV_WORK_SCALE
    band = _blocked_forward_band(spec, weight) if algo == "direct" else 0
    if band:
        _blocked_conv(x, weight, b, has_bias, y, spec, band, work)
    elif algo == "direct":
        n_threads = _threads_for(work, spec.N * spec.C_out)
        acc = np.empty((n_threads, _conv.direct_scratch(spec)), dtype=np.float64)
        _conv.forward_direct(x, weight, b, has_bias, y, acc, spec, n_threads)
    elif algo == "winograd":
        _winograd_conv(x, weight, b, has_bias, y, spec.groups,
                       spec.pad_top, spec.pad_left, work)
    else:
        wide = _gemm_wide(spec)
        samples, rows, ws = _gemm_plan(spec, backward=False, wide=wide)
        n_items = -(-spec.N // samples) * spec.groups * -(-spec.H_out // rows)
        n_threads = _threads_for(work, n_items)
        scratch = np.empty((n_threads, ws), dtype=x.dtype)
        with _blas_threads(_gemm_blas_threads(n_threads, work)):
            _conv.forward_gemm(x, weight, b, has_bias, y, scratch, spec, samples, rows, n_threads,
                               wide)
    return _finish(y, result, spec.batched)


def conv2d_backward(grad_out: ArrayLike, x: ArrayLike, weight: ArrayLike, stride: Size = 1,
                    padding: Padding = 0, dilation: Size = 1, groups: int = 1, *,
                    algorithm: Algorithm = "auto") -> Tuple[NDArray, NDArray, NDArray]:
    """Gradients of :func:`conv2d`: returns ``(grad_x, grad_weight, grad_bias)``.

    Backward rule (the forward's sum read the other way round)::

        grad_x[n, c_in, h, w]  = sum over (o, u, v) whose tap lands on (h, w) of
                                 grad_out[n, o, i, j] * weight[o, c, u, v]
        grad_weight[o, c, u, v] = sum_{n,i,j} grad_out[n, o, i, j] * x[n, c_in, h(i,u), w(j,v)]
        grad_bias[o]            = sum_{n,i,j} grad_out[n, o, i, j]
    """
    _check_algorithm(algorithm)
    grad_out, x, weight, spec, result = prepare_conv2d_backward(
        grad_out, x, weight, stride, padding, dilation, groups)
    _check_algorithm(algorithm, spec)
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf = NaN, as the kernels
        grad_b = grad_out.sum(axis=(0, 2, 3))
    if spec.N == 0:
        grad_x = np.zeros(x.shape, dtype=x.dtype)
        grad_w = np.zeros(weight.shape, dtype=x.dtype)
    else:
        # grad_b sums every value of grad_out: if its sums are finite, so is grad_out
        grad_out_finite = bool(np.isfinite(grad_b).all())
        algo = _choose_algorithm(algorithm, spec, grad_out, weight, x,
                                 factor_finite=grad_out_finite, backward=True)
        work = _conv_work(spec) // _CONV_WORK_SCALE
        # the direct kernel writes every value of grad_x; the others add into it
        grad_x = (np.empty if algo == "direct" else np.zeros)(x.shape, dtype=x.dtype)
        if algo == "direct":
            gx_band = _blocked_input_grad_band(spec, weight)
            gw_band = _blocked_weight_grad_band(spec, grad_out_finite)
            if gx_band:
                _blocked_input_grad(grad_out, weight, grad_x, spec, gx_band, work)
            grad_w = (_blocked_weight_grad(grad_out, x, spec, gw_band, work) if gw_band
                      else np.empty(weight.shape, dtype=x.dtype))
            if not (gx_band and gw_band):
                n_threads = _threads_for(work, spec.N * spec.C_in)
                acc = np.empty((n_threads, _conv.direct_scratch(spec)), dtype=np.float64)
                _conv.backward_direct(grad_out, x, weight, grad_x, grad_w, acc, spec, n_threads,
                                      not gx_band, not gw_band)
        elif algo == "winograd":
            _winograd_input_grad(grad_out, weight, grad_x, spec, work)
            grad_w = _winograd_weight_grad(grad_out, x, spec, work)
        else:
            wide = _gemm_wide_backward(spec, weight)
            samples, rows, ws = _gemm_plan(spec, backward=True, wide=wide)
            items = -(-spec.N // samples) * spec.groups
            n_threads = _threads_for(work, items)
            share_tiles = False
            if n_threads < get_num_threads():
                # fewer (sample, group) items than threads (batch 1): the threads share the
                # chunks of row tiles, the even ones, then the odd ones (_conv.backward_gemm)
                n_chunks = _conv.backward_tile_chunk(spec, rows)[1]
                n_threads = _threads_for(work, items * -(-n_chunks // 2))
                share_tiles = n_threads > 1
            scratch = np.empty((n_threads, ws), dtype=x.dtype)
            acc = np.empty((n_threads, weight.size), dtype=x.dtype)
            grad_w = np.empty(weight.shape, dtype=x.dtype)
            width = _wide_width(spec) if wide else spec.W_out
            call_work = (spec.C_in // spec.groups * spec.KH * spec.KW * spec.C_out // spec.groups
                         * samples * rows * width)
            with _blas_threads(_gemm_blas_threads(n_threads, work, call_work)):
                _conv.backward_gemm(grad_out, x, weight, grad_x,
                                    grad_w.reshape(spec.C_out, -1), acc, scratch, spec, samples,
                                    rows, n_threads, _gemm_gw_transposed(spec), wide,
                                    share_tiles)
    return (_finish(grad_x, result, spec.batched), _finish(grad_w, result),
            _finish(grad_b, result))


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------
def max_pool2d(x: ArrayLike, kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0,
               dilation: Size = 1, ceil_mode: bool = False) -> Tuple[NDArray, NDArray]:
    """Max pooling, as ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    Returns ``(y, indices)``; ``indices`` is int64, the flat position ``h*W + w``
    of each maximum inside its (n, c) plane (PyTorch's layout).  Padding counts
    as -inf; ties go to the first element in row-major window order; a NaN
    wins (value and index); an all -inf window points at its first real tap.
    ``stride=None`` means ``stride = kernel_size``.

    Output size (textbook: ``(W - F + 2P)/S + 1``)::

        H_out = floor_or_ceil((H + 2P - D*(K - 1) - 1) / S) + 1,
        minus one if ceil_mode and (H_out - 1)*S >= H + P
        y[n, c, i, j] = max_{u,v} x[n, c, i*S_h - P_h + u*D_h, j*S_w - P_w + v*D_w]
    """
    x, spec, result = prepare_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    y = np.empty(spec.out_shape, dtype=x.dtype)
    indices = np.empty(spec.out_shape, dtype=np.int64)
    P = spec.N * spec.C
    if P:
        n_threads = _threads_for(_pool_work(spec, y.size), P * spec.H_out)
        _pool.max_pool_forward(x.reshape(P, spec.H, spec.W), y.reshape(P, spec.H_out, spec.W_out),
                               indices.reshape(P, spec.H_out, spec.W_out), spec, n_threads)
    return _finish(y, result, spec.batched), restore_batch(indices, spec.batched)


def max_pool2d_backward(grad_out: ArrayLike, indices: ArrayLike,
                        input_shape: Sequence[int]) -> NDArray:
    """Gradient of :func:`max_pool2d`: each ``grad_out`` goes to its arg-max.

    ``grad_x[n, c].flat[indices[n, c, i, j]] += grad_out[n, c, i, j]``; every
    index must lie in ``[0, H*W)`` (IndexError otherwise).
    """
    # the kernel checks each index as it reads it (also safe if another thread
    # changes `indices` during the call), so no separate pass over them here
    grad_out, idx, shape, batched, result = prepare_max_pool2d_backward(
        grad_out, indices, input_shape, check_indices=False)
    N, C, H, W = shape
    P = N * C
    # the kernel zeroes each plane before adding into it
    grad_x = (np.empty if P and grad_out.size else np.zeros)(shape, dtype=grad_out.dtype)
    if P and grad_out.size:
        L = grad_out.shape[2] * grad_out.shape[3]
        # (the kernel size is not known here: counted as 2x2 windows, or as the planes it
        # zeroes when they are bigger: global pooling)
        n_threads = _threads_for(max(grad_out.size * 4, grad_x.size) // _POOL_WORK_SCALE, P)
        n_bad = _pool.max_pool_backward(grad_out.reshape(P, L), idx.reshape(P, L),
                                        grad_x.reshape(P, H * W), n_threads)
        if n_bad:
            raise index_error(first_bad_index(np.asarray(indices), H * W), input_shape)
    return _finish(grad_x, result, batched)


def avg_pool2d(x: ArrayLike, kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0,
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: Optional[int] = None) -> NDArray:
    """Average pooling, as ``torch.nn.functional.avg_pool2d``.

    ``y[n, c, i, j] = sum(x over the window clipped to the input) / divisor`` with
    divisor = ``divisor_override`` if given, else the window size counting the
    padding (``count_include_pad=True``; a ceil_mode overhang past the padding is
    not counted), else the number of real input elements in the window.
    Output size as :func:`max_pool2d` with dilation 1.
    """
    x, spec, count_pad, divisor, result = prepare_avg_pool2d(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    y = np.empty(spec.out_shape, dtype=x.dtype)
    P = spec.N * spec.C
    if P:
        n_threads = _threads_for(_pool_work(spec, y.size), P * spec.H_out)
        _pool.avg_pool_forward(x.reshape(P, spec.H, spec.W), y.reshape(P, spec.H_out, spec.W_out),
                               spec, count_pad, divisor, n_threads)
    return _finish(y, result, spec.batched)


def avg_pool2d_backward(grad_out: ArrayLike, input_shape: Sequence[int], kernel_size: Size,
                        stride: Optional[Size] = None, padding: Size = 0, ceil_mode: bool = False,
                        count_include_pad: bool = True,
                        divisor_override: Optional[int] = None) -> NDArray:
    """Gradient of :func:`avg_pool2d`: each ``grad_out`` is split evenly (``/ divisor``)
    over the input elements of its window."""
    grad_out, spec, count_pad, divisor, result = prepare_avg_pool2d_backward(
        grad_out, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
        divisor_override)
    P = spec.N * spec.C
    grad_x = np.empty(spec.in_shape, dtype=grad_out.dtype)   # the kernel zeroes each plane
    if P:
        n_threads = _threads_for(grad_out.size * spec.KH * spec.KW // _pool_tap_scale(spec), P)
        _pool.avg_pool_backward(grad_out.reshape(P, spec.H_out, spec.W_out),
                                grad_x.reshape(P, spec.H, spec.W), spec, count_pad, divisor,
                                n_threads)
    return _finish(grad_x, result, spec.batched)


# --------------------------------------------------------------------------
# relu
# --------------------------------------------------------------------------
def relu(x: ArrayLike) -> NDArray:
    """``y = max(x, 0)`` elementwise; NaN stays NaN (as PyTorch)."""
    x, result = prepare_relu(x)
    y = np.empty(x.shape, dtype=x.dtype)
    if x.size:
        _activations.relu_forward(x.reshape(-1), y.reshape(-1), _threads_for(x.size, x.size))
    return _finish(y, result)


def relu_backward(grad_out: ArrayLike, x: ArrayLike) -> NDArray:
    """``grad_x = grad_out where x > 0, else 0`` (derivative 0 at x == 0, as PyTorch)."""
    grad_out, x, result = prepare_relu_backward(grad_out, x)
    grad_x = np.empty(x.shape, dtype=x.dtype)
    if x.size:
        _activations.relu_backward(grad_out.reshape(-1), x.reshape(-1), grad_x.reshape(-1),
                                   _threads_for(x.size, x.size))
    return _finish(grad_x, result)
