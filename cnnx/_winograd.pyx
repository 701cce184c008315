"""Winograd F(2x2, 3x3) convolution: 3x3 kernels, stride 1, dilation 1 (NCHW).

The same cross-correlation as ``_conv``, computed with 2.25x fewer multiplies
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
The output is cut into 2x2 tiles; tile (ti, tj) of channel o reads the 4x4
input patch ``d_c`` at rows ``2*ti - P_top + 0..3``, columns
``2*tj - P_left + 0..3`` of every input channel c of its group (zero outside
the input) and::

    V[c]    = B^T d_c B                              (input transform, 4x4)
    U[o, c] = G w[o, c] G^T                          (weight transform, 4x4, once per call)
    M[o]    = sum_c U[o, c] * V[c]                   (elementwise: 16 matrix products,
                                                      one per position xi of the 4x4, over
                                                      tiles: the blocked kernel of
                                                      _corr_kernel.h or the BLAS)
    y[o, 2ti:2ti+2, 2tj:2tj+2] = A^T M[o] A + b[o]   (output transform, 2x2)

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

The input gradient of a 3x3 stride-1 conv is again such a convolution (of
grad_out, with the kernels flipped and in/out channels swapped, padding
2 - P), so the same kernel serves the backward pass; cnnx.functional builds
its arguments.

Work items are (sample, group, band of tile rows); each thread owns a
workspace of V (16 x C_in_g x ld), M (16 x C_out_g x ld, C_out_g rounded up to the
blocked kernel's blocks) and four zero-padded input rows, T <= ld = tiles in a band
(see band_item).  All arguments were validated by
cnnx.functional; nothing here raises.
"""

from cython cimport floating
import numpy as np
from cython.parallel cimport prange, threadid
from libc.string cimport memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

from cnnx._kernel_utils cimport prefetch_rows, valid_range

from cnnx._corr_kernel cimport CORR_OB, CORR_OB_SMALL, corr_kernel


cdef inline void gemm_nn(int m, int n, int k, const floating* a, int lda,
                         const floating* b, int ldb, floating* c, int ldc) noexcept nogil:
    """Column-major C = A @ B (m x n, inner k) through the BLAS of SciPy."""
    cdef char no = b"N"
    cdef floating one = 1, zero = 0
    if floating is float:
        sgemm(&no, &no, &m, &n, &k, &one, <float*> a, &lda, <float*> b, &ldb, &zero, c, &ldc)
    else:
        dgemm(&no, &no, &m, &n, &k, &one, <double*> a, &lda, <double*> b, &ldb, &zero, c, &ldc)


cdef void load_rows(const floating* x_c, Py_ssize_t H, Py_ssize_t W, Py_ssize_t h0,
                    Py_ssize_t w0, floating* rows, Py_ssize_t half,
                    Py_ssize_t n_rows) noexcept nogil:
    """Rows h0..h0+n_rows-1 from column w0 on, split into even and odd columns (OUT rows):
    rows[(2*r + e)*half + k] = x_c[h0 + r, w0 + 2*k + e], 0 outside the plane.

    Split this way, the tiles' columns 2*tj + 0..3 are the runs even[tj], odd[tj],
    even[tj + 1], odd[tj + 1]: unit-stride loops over tj that the compiler vectorises.
    """
    cdef Py_ssize_t r, e, k, h, k_lo, k_hi
    cdef floating* dst
    for r in range(n_rows):
        h = h0 + r
        for e in range(2):
            dst = rows + (2 * r + e) * half
            if h < 0 or h >= H:
                memset(dst, 0, half * sizeof(floating))
                continue
            valid_range(w0 + e, 2, W, half, &k_lo, &k_hi)
            for k in range(k_lo):
                dst[k] = 0
            for k in range(k_lo, k_hi):
                dst[k] = x_c[h * W + w0 + e + 2 * k]
            for k in range(k_hi, half):
                dst[k] = 0


cdef inline void input_transform_row(const floating* P, const floating* Q, floating sign,
                                     Py_ssize_t half, Py_ssize_t tW, floating* Va,
                                     Py_ssize_t xi_step) noexcept nogil:
    """Row a of B^T d B for the tiles of a tile row, where row a of B^T d is t = P + sign*Q
    (two rows of the patch, even columns at [k], odd at [half + k]): columns 2tj..2tj+3
    of t are te[tj], to[tj], te[tj + 1], to[tj + 1] and
    (t B)[0..3] = te[tj] - te[tj+1], to[tj] + te[tj+1], te[tj+1] - to[tj], to[tj] - to[tj+1].
    t is recomputed where it is needed rather than stored and read back (reading it
    one element on from where it was just stored stalls on store forwarding); one loop
    per output row: a single store stream each, which the compiler vectorises."""
    cdef Py_ssize_t tj
    cdef const floating* Po = P + half
    cdef const floating* Qo = Q + half
    for tj in range(tW):
        Va[tj] = (P[tj] + sign * Q[tj]) - (P[tj + 1] + sign * Q[tj + 1])
    Va += xi_step
    for tj in range(tW):
        Va[tj] = (Po[tj] + sign * Qo[tj]) + (P[tj + 1] + sign * Q[tj + 1])
    Va += xi_step
    for tj in range(tW):
        Va[tj] = (P[tj + 1] + sign * Q[tj + 1]) - (Po[tj] + sign * Qo[tj])
    Va += xi_step
    for tj in range(tW):
        Va[tj] = (Po[tj] + sign * Qo[tj]) - (Po[tj + 1] + sign * Qo[tj + 1])


cdef inline void input_transform(const floating* rows, Py_ssize_t half, Py_ssize_t tW,
                                 floating* V, Py_ssize_t xi_step) noexcept nogil:
    """V[xi*xi_step + tj] = (B^T d B)[xi] for the tiles tj of one tile row (OUT V), d the
    4x4 patch of ``rows`` (as load_rows lays them out: patch row r at rows + 2*r*half).
    Rows of B^T d: d0 - d2, d1 + d2, d2 - d1, d1 - d3."""
    cdef const floating* d0 = rows
    cdef const floating* d1 = rows + 2 * half
    cdef const floating* d2 = rows + 4 * half
    cdef const floating* d3 = rows + 6 * half
    input_transform_row(d0, d2, -1, half, tW, V, xi_step)
    input_transform_row(d1, d2, 1, half, tW, V + 4 * xi_step, xi_step)
    input_transform_row(d2, d1, -1, half, tW, V + 8 * xi_step, xi_step)
    input_transform_row(d1, d3, -1, half, tW, V + 12 * xi_step, xi_step)


cdef void band_input_transform(const floating* x_g, Py_ssize_t C_in_g, Py_ssize_t H,
                               Py_ssize_t W, Py_ssize_t ti0, Py_ssize_t ti1, Py_ssize_t tW,
                               Py_ssize_t pad_top, Py_ssize_t pad_left, floating* rows,
                               floating* V, Py_ssize_t xi_step, Py_ssize_t ld) noexcept nogil:
    """V[xi*xi_step + c*ld + t] = (B^T d B)[xi] for the C_in_g channels of ``x_g`` (one
    sample, one group) and the tiles t = (ti - ti0)*tW + tj of tile rows [ti0, ti1)
    (OUT V); tile row ti reads rows 2*(ti - ti0) .. + 3 of the band, loaded into
    ``rows`` once per channel."""
    cdef Py_ssize_t half = tW + 1     # even (and odd) input columns a tile row reads
    cdef Py_ssize_t c, ti
    cdef Py_ssize_t n_rows = 2 * (ti1 - ti0) + 2
    for c in range(C_in_g):
        if c + 1 < C_in_g:  # the next channel's rows: a short run in another plane
            prefetch_rows(x_g + (c + 1) * H * W, sizeof(floating), H, W, 2 * ti0 - pad_top,
                          n_rows)
        load_rows(x_g + c * H * W, H, W, 2 * ti0 - pad_top, -pad_left, rows, half, n_rows)
        for ti in range(ti0, ti1):
            input_transform(rows + 4 * (ti - ti0) * half, half, tW,
                            V + c * ld + (ti - ti0) * tW, xi_step)


cdef void output_transform(const floating* M, Py_ssize_t xi_step, Py_ssize_t tW,
                           Py_ssize_t T, floating* y_o, Py_ssize_t H_out, Py_ssize_t W_out,
                           Py_ssize_t ti0, floating b, floating* tmp) noexcept nogil:
    """y_o[2*ti + r, 2*tj + e] = (A^T m A)[r, e] + b for the T tiles of a band (tile rows
    ti0, ti0 + 1, ..., tW tiles each), with m[xi] = M[xi*xi_step + t], t = (ti - ti0)*tW + tj;
    rows and columns beyond H_out, W_out are not written.  ``tmp`` holds 6*T values.

    The whole band in each loop: long unit-stride loops, one store stream each."""
    cdef Py_ssize_t r, e, t, k, tj, h
    cdef const floating* m
    cdef floating* s
    cdef floating* y_row
    cdef floating* y0 = tmp + 4 * T
    cdef floating* y1 = tmp + 5 * T
    for r in range(2):
        # row r of A^T m: s[e] = m[0, e] + m[1, e] + m[2, e]  or  m[1, e] - m[2, e] - m[3, e]
        for e in range(4):
            m = M + e * xi_step
            s = tmp + e * T
            if r == 0:
                for t in range(T):
                    s[t] = m[t] + m[4 * xi_step + t] + m[8 * xi_step + t]
            else:
                for t in range(T):
                    s[t] = m[4 * xi_step + t] - m[8 * xi_step + t] - m[12 * xi_step + t]
        # (A^T m A)[r, 0] = s[0] + s[1] + s[2],  [r, 1] = s[1] - s[2] - s[3]
        for t in range(T):
            y0[t] = tmp[t] + tmp[T + t] + tmp[2 * T + t] + b
        for t in range(T):
            y1[t] = tmp[T + t] - tmp[2 * T + t] - tmp[3 * T + t] + b
        # ... to columns 2tj and 2tj + 1 of output row 2*ti + r
        for k in range(T // tW):
            h = 2 * (ti0 + k) + r
            if h >= H_out:
                break
            y_row = y_o + h * W_out
            for tj in range(W_out // 2):
                y_row[2 * tj] = y0[k * tW + tj]
                y_row[2 * tj + 1] = y1[k * tW + tj]
            if W_out % 2:
                y_row[W_out - 1] = y0[k * tW + tW - 1]


cdef void load_grad_pairs(const floating* gy_o, Py_ssize_t H_out, Py_ssize_t W_out,
                          Py_ssize_t ti0, Py_ssize_t T, Py_ssize_t tW,
                          floating* pairs) noexcept nogil:
    """The 2x2 blocks of grad_out plane ``gy_o`` for the T tiles of a band (OUT pairs):
    pairs[(2*i + e)*T + t] = gy_o[2*ti + i, 2*tj + e], t = (ti - ti0)*tW + tj, 0 beyond
    the plane -- four runs over the whole band, for grad_out_transform."""
    cdef Py_ssize_t k, i, e, tj, h, lo, hi
    cdef floating* dst
    for k in range(T // tW):
        for i in range(2):
            h = 2 * (ti0 + k) + i
            for e in range(2):
                dst = pairs + (2 * i + e) * T + k * tW
                if h >= H_out:
                    memset(dst, 0, tW * sizeof(floating))
                    continue
                valid_range(e, 2, W_out, tW, &lo, &hi)
                for tj in range(hi):
                    dst[tj] = gy_o[h * W_out + e + 2 * tj]
                for tj in range(hi, tW):
                    dst[tj] = 0


cdef void grad_out_transform(const floating* pairs, Py_ssize_t T, floating* tmp,
                             floating* dM, Py_ssize_t xi_step) noexcept nogil:
    """dM[xi*xi_step + t] = (A dy A^T)[xi] for the T tiles of a band (OUT dM), dy the 2x2
    blocks in ``pairs`` (as load_grad_pairs lays them out); ``tmp`` holds 2*T values.

    The transpose of output_transform: A = [[1, 0], [1, 1], [1, -1], [0, -1]] turns
    a pair (p, q) into (p, p + q, p - q, -q), down the rows and then along them.
    """
    cdef Py_ssize_t a, t
    cdef const floating* e0 = pairs            # dy[0, 0] of each tile
    cdef const floating* o0 = pairs + T        # dy[0, 1]
    cdef const floating* e1 = pairs + 2 * T    # dy[1, 0]
    cdef const floating* o1 = pairs + 3 * T    # dy[1, 1]
    cdef floating* p = tmp
    cdef floating* q = tmp + T
    cdef floating* row
    for a in range(4):
        # row a of A dy: (p, q)
        if a == 0:
            for t in range(T):
                p[t] = e0[t]
            for t in range(T):
                q[t] = o0[t]
        elif a == 1:
            for t in range(T):
                p[t] = e0[t] + e1[t]
            for t in range(T):
                q[t] = o0[t] + o1[t]
        elif a == 2:
            for t in range(T):
                p[t] = e0[t] - e1[t]
            for t in range(T):
                q[t] = o0[t] - o1[t]
        else:
            for t in range(T):
                p[t] = -e1[t]
            for t in range(T):
                q[t] = -o1[t]
        # ... times A^T (one loop per store stream, which the compiler vectorises)
        row = dM + 4 * a * xi_step
        for t in range(T):
            row[t] = p[t]
        row += xi_step
        for t in range(T):
            row[t] = p[t] + q[t]
        row += xi_step
        for t in range(T):
            row[t] = p[t] - q[t]
        row += xi_step
        for t in range(T):
            row[t] = -q[t]


cdef enum:
    RUN = 32    # kernels transformed per run: their 16 values each staged (see transform_run)


cdef inline void grad_transform_run(const floating[:, :, ::1] dU, floating[:, :, :, ::1] grad_w,
                                    Py_ssize_t o, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """grad_w[o, c] for c in [c0, c1) (c1 - c0 <= RUN), each of the 16 planes of dU read one
    contiguous run at a time into ``d`` (see transform_run)."""
    cdef floating t[3][4]
    cdef floating d[16][RUN]
    cdef floating d0, d1, d2, d3
    cdef Py_ssize_t a, k, c, xi
    for xi in range(16):
        for c in range(c0, c1):
            d[xi][c - c0] = dU[xi, o, c]
    for c in range(c1 - c0):
        for a in range(4):  # G^T dU: column a
            d0 = d[a][c]
            d1 = d[4 + a][c]
            d2 = d[8 + a][c]
            d3 = d[12 + a][c]
            t[0][a] = d0 + (d1 + d2) / 2
            t[1][a] = (d1 - d2) / 2
            t[2][a] = (d1 + d2) / 2 + d3
        for k in range(3):  # (G^T dU) G: row k
            d0 = t[k][0]
            d1 = t[k][1]
            d2 = t[k][2]
            d3 = t[k][3]
            grad_w[o, c0 + c, k, 0] = d0 + (d1 + d2) / 2
            grad_w[o, c0 + c, k, 1] = (d1 - d2) / 2
            grad_w[o, c0 + c, k, 2] = (d1 + d2) / 2 + d3


def weight_grad_transform(const floating[:, :, ::1] dU,     # (16, C_out, C_in_g)
                          floating[:, :, :, ::1] grad_w,    # OUT (C_out, C_in_g, 3, 3)
                          int n_threads=1):
    """grad_w[o, c] = G^T dU[:, o, c] G, the transpose of weight_transform: G^T's rows
    combine d0..d3 into d0 + (d1 + d2)/2, (d1 - d2)/2, (d1 + d2)/2 + d3.  Output channels
    split over ``n_threads``."""
    cdef Py_ssize_t C_out = grad_w.shape[0], C_in_g = grad_w.shape[1], o, r
    for o in prange(C_out, nogil=True, schedule="static", num_threads=n_threads):
        for r in range((C_in_g + RUN - 1) // RUN):
            grad_transform_run(dU, grad_w, o, r * RUN, min(r * RUN + RUN, C_in_g))


cdef inline void transform_run(const floating[:, :, :, :] w, floating[:, :, ::1] U,
                               Py_ssize_t o, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """U[:, o, c] for c in [c0, c1) (c1 - c0 <= RUN), staged in ``out`` so that each of the
    16 planes of U -- a power of two apart for power-of-two channel counts, the same cache
    sets -- is written one contiguous run at a time."""
    cdef floating t[4][3]
    cdef floating out[16][RUN]
    cdef floating g0, g1, g2
    cdef Py_ssize_t a, k, c, xi
    for c in range(c0, c1):
        for k in range(3):  # G w: column k
            g0 = w[o, c, 0, k]
            g1 = w[o, c, 1, k]
            g2 = w[o, c, 2, k]
            t[0][k] = g0
            t[1][k] = (g0 + g1 + g2) / 2
            t[2][k] = (g0 - g1 + g2) / 2
            t[3][k] = g2
        for a in range(4):  # (G w) G^T: row a
            g0 = t[a][0]
            g1 = t[a][1]
            g2 = t[a][2]
            out[4 * a + 0][c - c0] = g0
            out[4 * a + 1][c - c0] = (g0 + g1 + g2) / 2
            out[4 * a + 2][c - c0] = (g0 - g1 + g2) / 2
            out[4 * a + 3][c - c0] = g2
    for xi in range(16):
        for c in range(c0, c1):
            U[xi, o, c] = out[xi][c - c0]


def weight_transform(const floating[:, :, :, :] w,  # (C_out, C_in_g, 3, 3), any strides
                     floating[:, :, ::1] U,          # OUT (16, C_out, C_in_g)
                     int n_threads=1):
    """U[xi, o, c] = (G w[o, c] G^T)[xi]; G's rows combine a kernel row (or column)
    g0, g1, g2 into g0, (g0 + g1 + g2)/2, (g0 - g1 + g2)/2, g2.  Output channels split
    over ``n_threads``."""
    cdef Py_ssize_t C_out = w.shape[0], C_in_g = w.shape[1], o, r
    for o in prange(C_out, nogil=True, schedule="static", num_threads=n_threads):
        for r in range((C_in_g + RUN - 1) // RUN):
            transform_run(w, U, o, r * RUN, min(r * RUN + RUN, C_in_g))


# The 16 matrices V[xi] (and M[xi]) sit this many values more than C*ld apart: a transform
# touches all 16 at once, and at a power-of-two distance they would share cache sets.
# Their rows are ld values apart, the T tiles rounded up to TILE_ROUND: the blocked kernel
# computes the tiles 2 vectors (16 float32, 8 float64) at a time.
cdef enum:
    XI_PAD = 16
    TILE_ROUND = 16


cdef inline Py_ssize_t block_rows(Py_ssize_t n_out) noexcept nogil:
    """Rows of M the blocked kernel writes for n_out output channels: blocks of CORR_OB
    (6), the last one CORR_OB_SMALL (4) wide when that covers the rest (as
    _conv.block_width)."""
    cdef Py_ssize_t n_ob = (n_out + CORR_OB - 1) // CORR_OB, rest = n_out % CORR_OB
    if n_ob == 0:
        return 0
    return (n_ob - 1) * CORR_OB + (CORR_OB_SMALL if 0 < rest <= CORR_OB_SMALL else CORR_OB)


cdef struct BandItem:
    # a work item of forward and weight_grad: sample n, group g, tile rows [ti0, ti1)
    # (T tiles, in rows of ld >= T values: T rounded up to TILE_ROUND), and where its
    # pieces start in the thread's workspace (values from the start: V is 16 runs of
    # V_step, then M 16 of M_step, the band's rows, scratch)
    Py_ssize_t n, g, ti0, ti1, T, ld, V_step, M_step, M_off, rows_off, tmp_off


cdef inline BandItem band_item(Py_ssize_t item, Py_ssize_t n_bands, Py_ssize_t groups,
                               Py_ssize_t tile_rows, Py_ssize_t tH, Py_ssize_t tW,
                               Py_ssize_t C_in_g, Py_ssize_t C_out_g) noexcept nogil:
    """Work item ``item`` of N * groups * n_bands (bands of ``tile_rows`` tile rows), laid
    out in a workspace of workspace_size(C_in_g, C_out_g, W_out, tile_rows) values."""
    cdef BandItem it
    cdef Py_ssize_t band = item % n_bands
    it.g = (item // n_bands) % groups
    it.n = item // (n_bands * groups)
    it.ti0 = band * tile_rows
    it.ti1 = min(it.ti0 + tile_rows, tH)
    it.T = (it.ti1 - it.ti0) * tW
    # the rows of a full band (the same offsets for every band, see tile_offsets), an odd
    # number of TILE_ROUND runs: rows a power of two apart would share cache sets
    it.ld = (min(tile_rows, tH) * tW + TILE_ROUND - 1) // TILE_ROUND
    it.ld = (it.ld + 1 - it.ld % 2) * TILE_ROUND
    it.V_step = C_in_g * it.ld + XI_PAD
    it.M_step = block_rows(C_out_g) * it.ld + XI_PAD
    it.M_off = 16 * it.V_step
    it.rows_off = it.M_off + 16 * it.M_step
    it.tmp_off = it.rows_off + (2 * tile_rows + 2) * 2 * (tW + 1)
    return it


def tile_offsets(Py_ssize_t C_in_g, Py_ssize_t ld):
    """The blocked kernel's tap offsets: input channel c's row of V[xi] at c*ld."""
    cdef Py_ssize_t[::1] offs = np.arange(max(C_in_g, 1), dtype=np.intp) * ld
    return offs


def workspace_size(Py_ssize_t C_in_g, Py_ssize_t C_out_g, Py_ssize_t W_out, Py_ssize_t tile_rows):
    """Values of scratch one thread needs: V, M, a band's padded input rows, 6*T more
    (the layout of band_item, for a full band)."""
    cdef Py_ssize_t tW = (W_out + 1) // 2
    cdef BandItem full = band_item(0, 1, 1, tile_rows, tile_rows, tW, C_in_g, C_out_g)
    return full.tmp_off + 6 * full.T


def forward(const floating[:, :, :, ::1] x,   # (N, C_in, H, W)
            const floating[:, :, ::1] Ub,     # (16, groups, values): the kernels, see below
            bint blocked,
            const floating[::1] bias, bint has_bias,
            floating[:, :, :, ::1] y,         # OUT (N, C_out, H_out, W_out)
            floating[:, ::1] work,            # scratch per thread: workspace_size(...) values
            Py_ssize_t groups, Py_ssize_t pad_top, Py_ssize_t pad_left,
            Py_ssize_t tile_rows, int n_threads):
    """y = conv2d(x, w, bias) for a 3x3 kernel, stride 1, dilation 1: one band of
    ``tile_rows`` tile rows of one (sample, group) per work item.

    ``Ub[xi, g]``: the kernels U[xi, o, c] = (G w[o, c] G^T)[xi] of group g.  ``blocked``:
    the products M[xi] = U[xi] V[xi] run in the blocked kernel of _corr_kernel.h, the input
    channels as its taps (offsets c*ld), the band's tiles as its positions, and Ub[xi, g]
    holds U[xi] blocked as _conv.correlate's weights (cnnx.functional._blocked_weights of
    U[xi] as 1x1 kernels: block b, outputs 6b on, from 6b*C_in_g, c*width + o within it).
    Otherwise they are BLAS calls, and Ub[xi, g] is U[xi, o, c] at o*C_in_g + c."""
    cdef Py_ssize_t N = x.shape[0], C_in = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t C_out = y.shape[1], H_out = y.shape[2], W_out = y.shape[3]
    cdef Py_ssize_t C_in_g = C_in // groups, C_out_g = C_out // groups
    cdef Py_ssize_t tH = (H_out + 1) // 2, tW = (W_out + 1) // 2
    cdef Py_ssize_t n_bands = (tH + tile_rows - 1) // tile_rows
    cdef Py_ssize_t n_items = N * groups * n_bands
    cdef Py_ssize_t item, o, xi, ob, width, q, k
    cdef Py_ssize_t n_ob = (C_out_g + CORR_OB - 1) // CORR_OB
    cdef Py_ssize_t last_w = block_rows(C_out_g) - (n_ob - 1) * CORR_OB
    cdef BandItem it
    cdef floating* V
    cdef floating* M
    cdef floating* rows
    cdef floating* tmp
    cdef floating b
    if n_items == 0 or H_out == 0 or W_out == 0:
        return
    cdef Py_ssize_t[::1] offs = tile_offsets(C_in_g, band_item(0, n_bands, groups, tile_rows,
                                                              tH, tW, C_in_g, C_out_g).ld)
    for item in prange(n_items, nogil=True, schedule="static", num_threads=n_threads):
        it = band_item(item, n_bands, groups, tile_rows, tH, tW, C_in_g, C_out_g)
        V = &work[threadid(), 0]
        M = V + it.M_off
        rows = V + it.rows_off
        tmp = V + it.tmp_off
        band_input_transform(&x[it.n, it.g * C_in_g, 0, 0], C_in_g, H, W, it.ti0, it.ti1,
                             tW, pad_top, pad_left, rows, V, it.V_step, it.ld)
        # M[xi] (C_out_g x T, rows ld apart) = U[xi, group g] (C_out_g x C_in_g) @ V[xi]
        # (C_in_g x T), 6 (or 4) output channels at a time
        # (TILE_ROUND tiles at a time through all the blocks: those tiles' values of V[xi]
        # stay in the cache)
        for xi in range(16):
            if not blocked:   # as column-major: M^T = V^T @ U^T
                gemm_nn(<int> it.T, <int> C_out_g, <int> C_in_g, V + xi * it.V_step,
                        <int> it.ld, &Ub[xi, it.g, 0], <int> C_in_g, M + xi * it.M_step,
                        <int> it.ld)
                continue
            for k in range((it.T + TILE_ROUND - 1) // TILE_ROUND):
                q = k * TILE_ROUND
                for ob in range(n_ob):
                    width = last_w if ob == n_ob - 1 else CORR_OB
                    corr_kernel(<int> width, V + xi * it.V_step + q, &offs[0], 0, C_in_g,
                                &Ub[xi, it.g, ob * CORR_OB * C_in_g],
                                M + xi * it.M_step + ob * CORR_OB * it.ld + q, it.ld,
                                min(TILE_ROUND, it.T - q))
        for o in range(C_out_g):
            b = bias[it.g * C_out_g + o] if has_bias else 0
            output_transform(M + o * it.ld, it.M_step, tW, it.T,
                             &y[it.n, it.g * C_out_g + o, 0, 0], H_out, W_out, it.ti0, b, tmp)


cdef inline void gemm_tn_acc(int m, int n, int k, const floating* a, int lda,
                             const floating* b, int ldb, floating* c, int ldc) noexcept nogil:
    """Column-major C += A^T @ B (m x n, inner k) through the BLAS of SciPy."""
    cdef char tr = b"T"
    cdef char no = b"N"
    cdef floating one = 1
    if floating is float:
        sgemm(&tr, &no, &m, &n, &k, &one, <float*> a, &lda, <float*> b, &ldb, &one, c, &ldc)
    else:
        dgemm(&tr, &no, &m, &n, &k, &one, <double*> a, &lda, <double*> b, &ldb, &one, c, &ldc)


def weight_grad(const floating[:, :, :, ::1] x,          # (N, C_in, H, W)
                const floating[:, :, :, ::1] grad_out,   # (N, C_out, H_out, W_out)
                floating[:, ::1] dU_acc,  # OUT, zero-filled: per thread (16, C_out, C_in_g)
                floating[:, ::1] work,    # scratch per thread: workspace_size(...) values
                Py_ssize_t groups, Py_ssize_t pad_top, Py_ssize_t pad_left,
                Py_ssize_t tile_rows, int n_threads):
    """The weight gradient in Winograd form: since y = A^T [U * V] A per tile,

        dU[xi, o, c] = sum over samples and tiles of (A dy_o A^T)[xi] * V_c[xi]

    (V the forward's input transform, dy the tile's 2x2 block of grad_out), one GEMM
    per xi over the tiles of a band; weight_grad_transform then gives grad_w = G^T dU G.
    Each thread sums into its own row of ``dU_acc`` (static schedule: the caller's
    sum over rows is the same on every call)."""
    cdef Py_ssize_t N = x.shape[0], C_in = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t C_out = grad_out.shape[1], H_out = grad_out.shape[2]
    cdef Py_ssize_t W_out = grad_out.shape[3]
    cdef Py_ssize_t C_in_g = C_in // groups, C_out_g = C_out // groups
    cdef Py_ssize_t tH = (H_out + 1) // 2, tW = (W_out + 1) // 2
    cdef Py_ssize_t n_bands = (tH + tile_rows - 1) // tile_rows
    cdef Py_ssize_t n_items = N * groups * n_bands
    cdef Py_ssize_t item, o, xi
    cdef BandItem it
    cdef floating* V
    cdef floating* dM
    cdef floating* rows
    cdef floating* tmp
    cdef floating* dU
    if n_items == 0 or H_out == 0 or W_out == 0:
        return
    for item in prange(n_items, nogil=True, schedule="static", num_threads=n_threads):
        it = band_item(item, n_bands, groups, tile_rows, tH, tW, C_in_g, C_out_g)
        V = &work[threadid(), 0]
        dM = V + it.M_off
        rows = V + it.rows_off
        tmp = V + it.tmp_off
        dU = &dU_acc[threadid(), 0]
        band_input_transform(&x[it.n, it.g * C_in_g, 0, 0], C_in_g, H, W, it.ti0, it.ti1,
                             tW, pad_top, pad_left, rows, V, it.V_step, it.ld)
        for o in range(C_out_g):  # (the rows buffer is free again: 4*T values of it)
            if o + 1 < C_out_g:
                prefetch_rows(&grad_out[it.n, it.g * C_out_g + o + 1, 0, 0], sizeof(floating),
                              H_out, W_out, 2 * it.ti0, 2 * (it.ti1 - it.ti0))
            load_grad_pairs(&grad_out[it.n, it.g * C_out_g + o, 0, 0], H_out, W_out, it.ti0,
                            it.T, tW, rows)
            grad_out_transform(rows, it.T, tmp, dM + o * it.ld, it.M_step)
        # dU[xi] (C_out x C_in_g, row-major; group g's rows) += dM[xi] (C_out_g x T) @ V[xi]^T,
        # as column-major: dU^T (C_in_g x C_out_g) += V[xi]^T-as-stored^T @ dM[xi]
        for xi in range(16):
            gemm_tn_acc(<int> C_in_g, <int> C_out_g, <int> it.T, V + xi * it.V_step, <int> it.ld,
                        dM + xi * it.M_step, <int> it.ld,
                        dU + (xi * C_out + it.g * C_out_g) * C_in_g, <int> C_in_g)
