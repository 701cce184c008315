"""Max and average pooling kernels (NCHW viewed as P = N*C planes), float32 and float64.

Max pooling (PyTorch's rule, the textbook's ``a[d,i,j] = max x[d, i*S : i*S+F, j*S : j*S+F]``
with padding as -inf and dilation)::

    y[p, i, j] = max_{u, v} x[p, i*S_h - P_h + u*D_h, j*S_w - P_w + v*D_w]   (taps inside x only)
    indices[p, i, j] = h*W + w of the first maximum; a NaN wins over everything
    (the last NaN seen), and an all -inf window points at its first tap inside x.

Average pooling (PyTorch's divisor rules)::

    window rows [h0, h1) = [i*S_h - P_h, min(i*S_h - P_h + KH, H + P_h)), columns alike
    y[p, i, j] = sum of x over the window clipped to the input / divisor, where
    divisor = divisor_override, else the unclipped window size (count_include_pad),
    else the clipped size.

Backward: max pooling sends grad_y to the arg-max; average pooling spreads
grad_y / divisor evenly over the clipped window.

Arguments were validated by ``cnnx.functional``; nothing here raises.
"""

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY

import numpy as np

from cnnx._kernel_utils cimport valid_range


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* best, best_idx := val, cand  if val > best or val is NaN.
       Done with masks so that the compiler cannot turn it back into a branch
       (pooling real data, the comparison is unpredictable). */
    static inline void cnnx_max_update_f(float val, int64_t cand, float *best, int64_t *best_idx) {
        int64_t take = -(int64_t)((val > *best) | (val != val));
        uint32_t v, b, m = (uint32_t)take;
        memcpy(&v, &val, 4); memcpy(&b, best, 4);
        b = (v & m) | (b & ~m);
        memcpy(best, &b, 4);
        *best_idx = (cand & take) | (*best_idx & ~take);
    }
    static inline void cnnx_max_update_d(double val, int64_t cand, double *best, int64_t *best_idx) {
        int64_t take = -(int64_t)((val > *best) | (val != val));
        uint64_t v, b, m = (uint64_t)take;
        memcpy(&v, &val, 8); memcpy(&b, best, 8);
        b = (v & m) | (b & ~m);
        memcpy(best, &b, 8);
        *best_idx = (cand & take) | (*best_idx & ~take);
    }
    """
    void cnnx_max_update_f(float val, long long cand, float* best, long long* best_idx) noexcept nogil
    void cnnx_max_update_d(double val, long long cand, double* best, long long* best_idx) noexcept nogil


cdef inline void max_update(floating val, long long cand, floating* best,
                            long long* best_idx) noexcept nogil:
    """best, best_idx = val, cand if val > best or isnan(val) (branch-free)."""
    if floating is float:
        cnnx_max_update_f(val, cand, best, best_idx)
    else:
        cnnx_max_update_d(val, cand, best, best_idx)


cdef struct PoolGeom:
    Py_ssize_t P, H, W, KH, KW, stride_h, stride_w, pad_h, pad_w
    Py_ssize_t dilation_h, dilation_w, H_out, W_out
    Py_ssize_t n_taps  # rows of the tap table (set by tap_ranges)


cdef PoolGeom make_geom(spec) except *:
    cdef PoolGeom g
    g.P = spec.N * spec.C
    g.H, g.W, g.KH, g.KW = spec.H, spec.W, spec.KH, spec.KW
    g.stride_h, g.stride_w = spec.stride_h, spec.stride_w
    g.pad_h, g.pad_w = spec.pad_h, spec.pad_w
    g.dilation_h, g.dilation_w = spec.dilation_h, spec.dilation_w
    g.H_out, g.W_out = spec.H_out, spec.W_out
    return g


cdef Py_ssize_t[:, ::1] tap_ranges(PoolGeom* g, Py_ssize_t dilation_w):
    """The kernel columns v that fall inside the input for at least one output,
    in increasing order, each with the outputs j whose window has v inside the
    input: rows ``(v, j_lo, j_hi)``, ``g.n_taps`` of them.  They do not depend on the row, so every row
    reuses them (no divisions in the row loops), and taps that never touch the
    input are not visited at all (a window far wider than the input costs
    O(W), not O(kernel width)).
    """
    # Output j sees the taps [a_j, b_j); both ends fall as j grows, so walking j
    # downwards visits the union of these intervals in increasing order.
    cdef Py_ssize_t j, a, b, v, t, n = 0, end = 0
    for j in range(g.W_out - 1, -1, -1):
        valid_range(j * g.stride_w - g.pad_w, dilation_w, g.W, g.KW, &a, &b)
        a = max(a, end)
        if b > a:
            n += b - a
            end = b
    cdef Py_ssize_t[:, ::1] taps = np.empty((max(n, 1), 3), dtype=np.intp)
    t = 0
    end = 0
    for j in range(g.W_out - 1, -1, -1):
        valid_range(j * g.stride_w - g.pad_w, dilation_w, g.W, g.KW, &a, &b)
        for v in range(max(a, end), b):
            taps[t, 0] = v
            valid_range(v * dilation_w - g.pad_w, g.stride_w, g.W, g.W_out, &taps[t, 1], &taps[t, 2])
            t += 1
        end = max(end, b)
    g.n_taps = n
    return taps


cdef inline void chunk_range(const Py_ssize_t* taps, Py_ssize_t t, Py_ssize_t j0, Py_ssize_t jn,
                             Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Tap row t's output range cut to the chunk [j0, j0+jn), relative to j0."""
    lo[0] = max(taps[3 * t + 1], j0) - j0
    hi[0] = max(min(taps[3 * t + 2], j0 + jn) - j0, lo[0])


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------
cdef enum:
    CHUNK = 256  # outputs of one row whose running maxima are kept in local arrays


cdef void max_pool_row(const floating* x_plane, floating* y_row, long long* idx_row,
                       const PoolGeom* g, Py_ssize_t i, const Py_ssize_t* first_col,
                       const Py_ssize_t* taps) noexcept nogil:
    """Output row i of one plane, walked tap by tap in window order (u, then v).

    Each output j first holds -inf and the index of its first tap inside the
    input; every tap (u, v) then sweeps the outputs whose window it falls in.
    An output sees its taps in the same order as a window-by-window scan, so
    ties keep the first maximum and the last NaN wins, as in PyTorch.  The
    sweep makes neighbouring outputs independent (the CPU overlaps them) and
    ``max_update`` is branch-free (on real data the comparison is unpredictable).
    """
    cdef Py_ssize_t h0 = i * g.stride_h - g.pad_h
    cdef Py_ssize_t u_lo, u_hi, u, v, t, j, j0, jn, j_lo, j_hi, ih, off
    cdef floating best[CHUNK]
    cdef long long best_idx[CHUNK]
    cdef const floating* x_row
    valid_range(h0, g.dilation_h, g.H, g.KH, &u_lo, &u_hi)
    j0 = 0
    while j0 < g.W_out:
        jn = min(<Py_ssize_t> CHUNK, g.W_out - j0)
        ih = h0 + u_lo * g.dilation_h
        for j in range(jn):
            best[j] = -INFINITY
            best_idx[j] = ih * g.W + first_col[j0 + j]
        for u in range(u_lo, u_hi):
            ih = h0 + u * g.dilation_h
            x_row = x_plane + ih * g.W
            for t in range(g.n_taps):
                v = taps[3 * t]
                off = v * g.dilation_w - g.pad_w + j0 * g.stride_w
                chunk_range(taps, t, j0, jn, &j_lo, &j_hi)
                for j in range(j_lo, j_hi):
                    max_update(x_row[j * g.stride_w + off], ih * g.W + j * g.stride_w + off,
                               &best[j], &best_idx[j])
        for j in range(jn):
            y_row[j0 + j] = best[j]
            idx_row[j0 + j] = best_idx[j]
        j0 += jn


def max_pool_forward(const floating[:, :, ::1] x,   # (P, H, W)
                     floating[:, :, ::1] y,         # OUT (P, H_out, W_out)
                     long long[:, :, ::1] indices,  # OUT (P, H_out, W_out)
                     spec, int n_threads):
    """One (plane, output row) per work item, so even a single plane uses every thread."""
    cdef PoolGeom g = make_geom(spec)
    cdef Py_ssize_t item, p, i, j, v_lo, v_hi, w0
    cdef Py_ssize_t[::1] first_col = np.empty(max(g.W_out, 1), dtype=np.intp)
    for j in range(g.W_out):  # column of each output's first tap inside the input
        w0 = j * g.stride_w - g.pad_w
        valid_range(w0, g.dilation_w, g.W, g.KW, &v_lo, &v_hi)
        first_col[j] = w0 + v_lo * g.dilation_w
    cdef Py_ssize_t[:, ::1] taps = tap_ranges(&g, g.dilation_w)
    for item in prange(g.P * g.H_out, nogil=True, schedule="static", num_threads=n_threads):
        p = item // g.H_out
        i = item % g.H_out
        max_pool_row(&x[p, 0, 0], &y[p, i, 0], &indices[p, i, 0], &g, i, &first_col[0],
                     &taps[0, 0])


def max_pool_backward(const floating[:, ::1] grad_out,     # (P, H_out*W_out)
                      const long long[:, ::1] indices,     # (P, H_out*W_out), each in [0, H*W)
                      floating[:, ::1] grad_x,             # OUT, zero-filled (P, H*W)
                      int n_threads):
    """grad_x[p, indices[p, k]] += grad_out[p, k]; one plane per work item.

    Each index is read once and checked before it is used: an index outside
    [0, H*W) is skipped and counted, never written through (the caller raises
    IndexError when the returned count is not zero).
    """
    cdef Py_ssize_t P = grad_out.shape[0], L = grad_out.shape[1], HW = grad_x.shape[1]
    cdef Py_ssize_t p, k, n_bad = 0
    cdef long long t
    cdef floating* gx
    cdef const floating* gy
    cdef const long long* idx
    for p in prange(P, nogil=True, schedule="static", num_threads=n_threads):
        gx = &grad_x[p, 0]
        gy = &grad_out[p, 0]
        idx = &indices[p, 0]
        for k in range(L):
            t = idx[k]
            if <unsigned long long> t < <unsigned long long> HW:
                gx[t] += gy[k]
            else:
                n_bad += 1
    return n_bad


# ---------------------------------------------------------------------------
# average pooling
# ---------------------------------------------------------------------------
cdef inline void window_span(Py_ssize_t start, Py_ssize_t kernel, Py_ssize_t size, Py_ssize_t pad,
                             Py_ssize_t* lo, Py_ssize_t* hi, Py_ssize_t* padded) noexcept nogil:
    """Window [start, start+kernel) cut at size+pad (``padded``: its length then),
    and clipped to the input: [lo, hi)."""
    cdef Py_ssize_t end = min(start + kernel, size + pad)
    padded[0] = end - start
    lo[0] = max(start, 0)
    hi[0] = min(end, size)


cdef void avg_divisors(const PoolGeom* g, bint count_include_pad, Py_ssize_t divisor_override,
                       Py_ssize_t i, Py_ssize_t* h_lo, Py_ssize_t* h_hi,
                       const double* inv_col, floating* inv_div) noexcept nogil:
    """Clipped rows [h_lo, h_hi) of output row i and 1/divisor of each output of the row.

    divisor = divisor_override, else (count_include_pad) the window size cut at
    the padding, else the number of input elements in the window; it is the
    product of a row and a column factor, so 1/divisor = (1/row) * (1/column).
    """
    cdef Py_ssize_t padded, j
    cdef double inv_row
    window_span(i * g.stride_h - g.pad_h, g.KH, g.H, g.pad_h, h_lo, h_hi, &padded)
    if divisor_override != 0:
        for j in range(g.W_out):
            inv_div[j] = <floating> (1.0 / divisor_override)
        return
    inv_row = 1.0 / (padded if count_include_pad else h_hi[0] - h_lo[0])
    for j in range(g.W_out):
        inv_div[j] = <floating> (inv_row * inv_col[j])


cdef void avg_pool_row(const floating* x_plane, floating* y_row, floating* inv_div,
                       const PoolGeom* g, Py_ssize_t i, bint count_include_pad,
                       Py_ssize_t divisor_override, const double* inv_col,
                       const Py_ssize_t* taps) noexcept nogil:
    """Output row i of one plane: sum tap by tap over the row, then scale by 1/divisor.

    The sums live in a small local array, which the compiler can keep apart
    from the input (no aliasing) and vectorise.
    """
    cdef Py_ssize_t h_lo, h_hi, ih, t, j, j0, jn, j_lo, j_hi, off
    cdef floating acc[CHUNK]
    cdef const floating* x_row
    avg_divisors(g, count_include_pad, divisor_override, i, &h_lo, &h_hi, inv_col, inv_div)
    j0 = 0
    while j0 < g.W_out:
        jn = min(<Py_ssize_t> CHUNK, g.W_out - j0)
        for j in range(jn):
            acc[j] = 0
        for ih in range(h_lo, h_hi):
            x_row = x_plane + ih * g.W
            for t in range(g.n_taps):
                off = taps[3 * t] - g.pad_w + j0 * g.stride_w
                chunk_range(taps, t, j0, jn, &j_lo, &j_hi)
                # constant strides for the common cases let the compiler vectorise
                if g.stride_w == 1:
                    for j in range(j_lo, j_hi):
                        acc[j] += x_row[j + off]
                elif g.stride_w == 2:
                    for j in range(j_lo, j_hi):
                        acc[j] += x_row[2 * j + off]
                else:
                    for j in range(j_lo, j_hi):
                        acc[j] += x_row[j * g.stride_w + off]
        for j in range(jn):
            y_row[j0 + j] = acc[j] * inv_div[j0 + j]
        j0 += jn


cdef void avg_pool_grad_plane(const floating* gy_plane, floating* gx_plane, floating* share,
                              const PoolGeom* g, bint count_include_pad,
                              Py_ssize_t divisor_override, const double* inv_col,
                              const Py_ssize_t* taps) noexcept nogil:
    """gx_plane[window of (i, j)] += gy_plane[i, j] / divisor, row by row, tap by tap
    (gx_plane zero-filled by the caller)."""
    cdef Py_ssize_t i, h_lo, h_hi, ih, t, j, j_lo, j_hi, off
    cdef floating* gx_row
    cdef const floating* gy_row
    for i in range(g.H_out):
        avg_divisors(g, count_include_pad, divisor_override, i, &h_lo, &h_hi, inv_col, share)
        gy_row = gy_plane + i * g.W_out
        for j in range(g.W_out):
            share[j] *= gy_row[j]
        for ih in range(h_lo, h_hi):
            gx_row = gx_plane + ih * g.W
            for t in range(g.n_taps):
                off = taps[3 * t] - g.pad_w
                j_lo = taps[3 * t + 1]
                j_hi = taps[3 * t + 2]
                for j in range(j_lo, j_hi):
                    gx_row[j * g.stride_w + off] += share[j]


cdef double[::1] inverse_column_factors(const PoolGeom* g, bint count_include_pad):
    """Per output column: 1 / (the window width cut at the padding (count_include_pad)
    or clipped to the input)."""
    cdef double[::1] inv_col = np.empty(max(g.W_out, 1), dtype=np.float64)
    cdef Py_ssize_t j, lo, hi, padded
    for j in range(g.W_out):
        window_span(j * g.stride_w - g.pad_w, g.KW, g.W, g.pad_w, &lo, &hi, &padded)
        inv_col[j] = 1.0 / (padded if count_include_pad else hi - lo)
    return inv_col


def avg_pool_forward(const floating[:, :, ::1] x,  # (P, H, W)
                     floating[:, :, ::1] y,        # OUT (P, H_out, W_out)
                     floating[:, ::1] work,        # scratch (n_threads, W_out)
                     spec, bint count_include_pad, Py_ssize_t divisor_override, int n_threads):
    """One (plane, output row) per work item."""
    cdef PoolGeom g = make_geom(spec)
    cdef Py_ssize_t item, p, i
    cdef double[::1] inv_col = inverse_column_factors(&g, count_include_pad)
    cdef Py_ssize_t[:, ::1] taps = tap_ranges(&g, 1)
    for item in prange(g.P * g.H_out, nogil=True, schedule="static", num_threads=n_threads):
        p = item // g.H_out
        i = item % g.H_out
        avg_pool_row(&x[p, 0, 0], &y[p, i, 0], &work[threadid(), 0], &g, i, count_include_pad,
                     divisor_override, &inv_col[0], &taps[0, 0])


def avg_pool_backward(const floating[:, :, ::1] grad_out,  # (P, H_out, W_out)
                      floating[:, :, ::1] grad_x,          # OUT, zero-filled (P, H, W)
                      floating[:, ::1] work,               # scratch (n_threads, W_out)
                      spec, bint count_include_pad, Py_ssize_t divisor_override, int n_threads):
    """One plane per work item (a plane's windows overlap when stride < kernel)."""
    cdef PoolGeom g = make_geom(spec)
    cdef Py_ssize_t p
    cdef double[::1] inv_col = inverse_column_factors(&g, count_include_pad)
    cdef Py_ssize_t[:, ::1] taps = tap_ranges(&g, 1)
    for p in prange(g.P, nogil=True, schedule="static", num_threads=n_threads):
        avg_pool_grad_plane(&grad_out[p, 0, 0], &grad_x[p, 0, 0], &work[threadid(), 0], &g,
                            count_include_pad, divisor_override, &inv_col[0], &taps[0, 0])
