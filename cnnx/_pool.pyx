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
from libc.string cimport memset

import numpy as np

from cnnx._kernel_utils cimport valid_range


ctypedef fused code_t:
    # where a running maximum was found, minus the output's offset (see max_pool_row):
    # int when the plane's geometry fits (vectorises alongside float), else long long
    int
    long long


cdef extern from "_max2x2.h" nogil:
    # one row of 2x2/2 windows, n % 4 == 0 outputs (max_pool_rows_2x2)
    void cnnx_max2x2_f(const float* top, const float* bot, float* y, long long* idx,
                       long long n, long long at, long long W)
    void cnnx_max2x2_d(const double* top, const double* bot, double* y, long long* idx,
                       long long n, long long at, long long W)


cdef extern from "_argmax.h" nogil:
    long long cnnx_argmax_f(const float* a, long long n)   # position of the max of a run
    long long cnnx_argmax_d(const double* a, long long n)
    # out[p] = cnnx_argmax_f(a + p*stride, n) for p < 8, n >= 8 (doubles: 4)
    void cnnx_argmax_f_8(const float* a, long long stride, long long n, long long* out)
    void cnnx_argmax_d_4(const double* a, long long stride, long long n, long long* out)


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* take ? a : b with masks, so that the compiler cannot turn it back into a
       branch (pooling real data, the comparison is unpredictable) */
    static inline float cnnx_select_f(int64_t take, float a, float b) {
        uint32_t x, y, m = (uint32_t)-take;
        memcpy(&x, &a, 4); memcpy(&y, &b, 4);
        x = (x & m) | (y & ~m);
        memcpy(&a, &x, 4);
        return a;
    }
    static inline double cnnx_select_d(int64_t take, double a, double b) {
        uint64_t x, y, m = (uint64_t)-take;
        memcpy(&x, &a, 8); memcpy(&y, &b, 8);
        x = (x & m) | (y & ~m);
        memcpy(&a, &x, 8);
        return a;
    }
    """
    float cnnx_select_f(long long take, float a, float b) noexcept nogil
    double cnnx_select_d(long long take, double a, double b) noexcept nogil


cdef inline void max_update(floating val, code_t cand, floating* best, code_t* code) noexcept nogil:
    """best, code = val, cand if val > best or isnan(val) (branch-free)."""
    cdef code_t take = (val > best[0]) | (val != val)
    if floating is float:
        best[0] = cnnx_select_f(take, val, best[0])
    else:
        best[0] = cnnx_select_d(take, val, best[0])
    code[0] = (cand & -take) | (code[0] & ~(-take))


cdef struct PoolGeom:
    Py_ssize_t P, H, W, KH, KW, stride_h, stride_w, pad_h, pad_w
    Py_ssize_t dilation_h, dilation_w, H_out, W_out
    Py_ssize_t n_taps  # rows of the tap table (set by tap_ranges)
    # window by window (set by window_outputs): square K x K windows, K = win_K in {2, 3}
    # (0: not this shape), column stride 1 or 2, no dilation; outputs [win_a, win_b) of a
    # row have every column of their window inside the input
    Py_ssize_t win_K, win_a, win_b


cdef PoolGeom make_geom(spec) except *:
    cdef PoolGeom g
    g.P = spec.N * spec.C
    g.H, g.W, g.KH, g.KW = spec.H, spec.W, spec.KH, spec.KW
    g.stride_h, g.stride_w = spec.stride_h, spec.stride_w
    g.pad_h, g.pad_w = spec.pad_h, spec.pad_w
    g.dilation_h, g.dilation_w = spec.dilation_h, spec.dilation_w
    g.H_out, g.W_out = spec.H_out, spec.W_out
    window_outputs(&g)
    return g


cdef void window_outputs(PoolGeom* g) noexcept nogil:
    """Sets win_K, win_a, win_b (see PoolGeom)."""
    g.win_K, g.win_a, g.win_b = 0, 0, 0
    if (g.KH == g.KW and (g.KW == 2 or g.KW == 3) and (g.stride_w == 1 or g.stride_w == 2)
            and g.dilation_h == 1 and g.dilation_w == 1 and g.W >= g.KW):
        g.win_K = g.KW
        valid_range(-g.pad_w, g.stride_w, g.W - g.KW + 1, g.W_out, &g.win_a, &g.win_b)


cdef inline bint window_row(const PoolGeom* g, Py_ssize_t i) noexcept nogil:
    """Whether output row i can go window by window: the shape fits (win_K) and all K
    rows of its windows lie inside the input."""
    cdef Py_ssize_t h0 = i * g.stride_h - g.pad_h
    return g.win_K != 0 and g.win_b > g.win_a and h0 >= 0 and h0 + g.win_K <= g.H


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


cdef inline bint whole_row_range(const PoolGeom* g, const Py_ssize_t* taps, Py_ssize_t dilation_w,
                                 Py_ssize_t j0, Py_ssize_t jn, Py_ssize_t* a,
                                 Py_ssize_t* b, bint* border) noexcept nogil:
    """For the common shapes (kernel width 2 or 3, stride 1 or 2, no dilation):
    the outputs [a, b) of the chunk [j0, j0+jn) (relative to j0) whose every
    tap of a window row lies inside the input, and True.  Those outputs are
    swept once per window row, all its taps at once (the tap table is then
    v = 0..KW-1); the tap-by-tap sweeps skip them.  Other shapes: a = b = 0, False.
    ``border``: whether some tap has outputs outside [a, b) (tap-by-tap sweeps needed).
    """
    cdef Py_ssize_t t, lo, hi, lo_min = jn, hi_max = 0
    a[0] = 0
    b[0] = 0
    border[0] = True
    if not (dilation_w == 1 and g.n_taps == g.KW and (g.KW == 2 or g.KW == 3)
            and (g.stride_w == 1 or g.stride_w == 2)):
        return False
    b[0] = jn
    for t in range(g.KW):
        chunk_range(taps, t, j0, jn, &lo, &hi)
        a[0] = max(a[0], lo)
        b[0] = min(b[0], hi)
        if hi > lo:
            lo_min = min(lo_min, lo)
            hi_max = max(hi_max, hi)
    b[0] = max(a[0], b[0])
    border[0] = lo_min < a[0] or hi_max > b[0]
    return True


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------
cdef enum:
    CHUNK = 256  # outputs of one row whose running maxima are kept in local arrays
    LANES = 16   # phased sweeps run to a multiple of this many outputs (a divisor of CHUNK)
    # Average pooling of rows of fewer outputs goes window by window, each output's
    # window read in place: the sweeps, which vectorise over a row's outputs, would be all
    # loop overhead there (global pooling has one output per row).  (Max pooling's
    # branch-free compare-select is one long chain per window: the sweeps stay faster.)
    SHORT_ROW = 8


cdef inline void max_sweep(const floating* x_tap, code_t cand, floating* best, code_t* code,
                           Py_ssize_t j_lo, Py_ssize_t j_hi, Py_ssize_t S,
                           Py_ssize_t n) noexcept nogil:
    """Outputs j in [j_lo, j_hi) take in their taps ``x_tap[j*S + v]``, v < n, in order
    (the codes ``cand + v``).  Called with constant S and n, so the compiler
    unrolls the taps and vectorises over j."""
    cdef Py_ssize_t j, v
    for j in range(j_lo, j_hi):
        for v in range(n):
            max_update(x_tap[j * S + v], <code_t> (cand + v), &best[j], &code[j])


cdef inline void load_phase(const floating* x_row, Py_ssize_t W, Py_ssize_t start, Py_ssize_t S,
                            Py_ssize_t n, floating* phase) noexcept nogil:
    """phase[j] = x_row[start + j*S] for j < n, and -inf (padding) where that column
    lies outside [0, W): the only reads of x_row are inside it."""
    cdef Py_ssize_t j, lo, hi
    valid_range(start, S, W, n, &lo, &hi)
    for j in range(lo):
        phase[j] = -INFINITY
    for j in range(lo, hi):
        phase[j] = x_row[start + j * S]
    for j in range(hi, n):
        phase[j] = -INFINITY


cdef inline void max_sweep_phased(const floating* phase0, const floating* phase1, code_t cand,
                                  floating* best, code_t* code, Py_ssize_t n_out,
                                  Py_ssize_t S, Py_ssize_t K) noexcept nogil:
    """Outputs j < n_out take in their window row's taps v < K in order (codes
    ``cand + v``); tap v of output j is ``phase[v % S][j + v // S]`` (see
    max_pool_row).  Called with constant S and K, so the taps unroll and the loop
    over j vectorises with contiguous loads."""
    cdef Py_ssize_t j, v
    for j in range(n_out):
        for v in range(K):
            max_update((phase0 if v % S == 0 else phase1)[j + v // S], <code_t> (cand + v),
                       &best[j], &code[j])


cdef inline void sweep_window_row(bint inside, const floating* x_row, Py_ssize_t W,
                                  Py_ssize_t off, code_t cand, floating* best, code_t* code,
                                  floating* phase0, floating* phase1, Py_ssize_t jn,
                                  Py_ssize_t jr, Py_ssize_t S, Py_ssize_t K) noexcept nogil:
    """One window row, all its K taps at once, for a chunk's outputs (called with constant
    S and K, so the copies and sweeps vectorise): straight from x_row for the jn outputs
    when every window lies ``inside`` it, else from its -inf padded phases for jr outputs
    (see max_pool_row); phase p gets the jr + (K - 1 - p) // S columns its taps read."""
    if inside:
        max_sweep(x_row + off, cand, best, code, 0, jn, S, K)
        return
    if S == 1:
        load_phase(x_row, W, off, 1, jr + K - 1, phase0)
    else:
        load_phase(x_row, W, off, 2, jr + (K - 1) // 2, phase0)
        load_phase(x_row, W, off + 1, 2, jr + (K - 2) // 2, phase1)
    max_sweep_phased(phase0, phase1, cand, best, code, jr, S, K)


cdef void max_pool_row(const floating* x_plane, floating* y_row, long long* idx_row,
                       const PoolGeom* g, Py_ssize_t i, const Py_ssize_t* first_col,
                       const Py_ssize_t* taps, code_t code_kind) noexcept nogil:
    """Output row i of one plane, walked tap by tap in window order (u, then v).

    Each output j first holds -inf and the index of its first tap inside the
    input; every tap (u, v) then sweeps the outputs whose window it falls in.
    An output sees its taps in the same order as a window-by-window scan, so
    ties keep the first maximum and the last NaN wins, as in PyTorch.  The
    sweep makes neighbouring outputs independent, so the compiler vectorises
    it (``max_update`` is branch-free).

    The common shapes (window width 2 or 3, stride 1 or 2, no dilation) sweep each
    window row once, all its taps at once: straight from x when every window of the
    chunk lies inside the input columns (``whole_row_range``), else from a copy of
    the window row in S "phases" padded with -inf: phase p holds the columns
    off + p + m*S (m = 0, 1, ...), so tap v of output j is phase[v % S][j + v // S].
    Every output then takes in the whole window row in one sweep, border outputs
    included (padding never wins: it is -inf and a tap must be greater), and the
    sweep runs to a multiple of LANES outputs, so no scalar remainder loop is left.
    Other shapes sweep tap by tap over the outputs whose window the tap falls in
    (the tap table).

    Output j0 + j of a chunk keeps ``code[j] = index - j*stride_w``: one tap
    gives every output of its sweep the same code, a number that fits
    ``code_t`` (``code_kind`` only selects that type).
    """
    cdef Py_ssize_t h0 = i * g.stride_h - g.pad_h
    cdef Py_ssize_t S = g.stride_w, K = g.KW
    cdef Py_ssize_t u_lo, u_hi, u, t, j, j0, jn, jr, j_lo, j_hi, a, b, ih, off
    cdef bint common = g.dilation_w == 1 and (K == 2 or K == 3) and (S == 1 or S == 2)
    cdef bint inside, phased, border
    cdef floating best[CHUNK]
    cdef code_t code[CHUNK]
    cdef floating phase0[CHUNK + 2]
    cdef floating phase1[CHUNK + 2]
    cdef code_t cand
    cdef const floating* x_row
    valid_range(h0, g.dilation_h, g.H, g.KH, &u_lo, &u_hi)
    j0 = 0
    while j0 < g.W_out:
        jn = min(<Py_ssize_t> CHUNK, g.W_out - j0)
        # every window row of the chunk inside the input: sweep x_row itself
        inside = (whole_row_range(g, taps, g.dilation_w, j0, jn, &a, &b, &border)
                  and a == 0 and b == jn)
        phased = common and not inside
        jr = (jn + LANES - 1) // LANES * LANES if phased else jn  # <= CHUNK
        ih = h0 + u_lo * g.dilation_h
        for j in range(jn):
            best[j] = -INFINITY
            code[j] = <code_t> (ih * g.W + first_col[j0 + j] - j * S)
        for j in range(jn, jr):  # lanes past the row: computed, never stored
            best[j] = -INFINITY
            code[j] = 0
        for u in range(u_lo, u_hi):
            ih = h0 + u * g.dilation_h
            x_row = x_plane + ih * g.W
            # tap v of output j: column off + j*S + v, index ih*W + that
            off = -g.pad_w + j0 * S
            cand = <code_t> (ih * g.W + off)
            if inside or phased:
                if K == 2 and S == 2:
                    sweep_window_row(inside, x_row, g.W, off, cand, best, code, phase0, phase1,
                                     jn, jr, 2, 2)
                elif K == 3 and S == 2:
                    sweep_window_row(inside, x_row, g.W, off, cand, best, code, phase0, phase1,
                                     jn, jr, 2, 3)
                elif K == 2:
                    sweep_window_row(inside, x_row, g.W, off, cand, best, code, phase0, phase1,
                                     jn, jr, 1, 2)
                else:
                    sweep_window_row(inside, x_row, g.W, off, cand, best, code, phase0, phase1,
                                     jn, jr, 1, 3)
                continue
            for t in range(g.n_taps):
                # output j's tap is x_row[j*S + off], index ih*W + j*S + off, for
                # off = v*dilation_w - pad_w + j0*S
                off = taps[3 * t] * g.dilation_w - g.pad_w + j0 * S
                cand = <code_t> (ih * g.W + off)
                chunk_range(taps, t, j0, jn, &j_lo, &j_hi)
                if S == 1:
                    max_sweep(x_row + off, cand, best, code, j_lo, j_hi, 1, 1)
                elif S == 2:
                    max_sweep(x_row + off, cand, best, code, j_lo, j_hi, 2, 1)
                else:
                    max_sweep(x_row + off, cand, best, code, j_lo, j_hi, S, 1)
        for j in range(jn):
            y_row[j0 + j] = best[j]
            idx_row[j0 + j] = code[j] + j * S
        j0 += jn


cdef enum:
    STAGE_OUTPUTS = 1024    # max_pool_staged_rows: whole rows of at most this many outputs


cdef inline bint staged_fits(const PoolGeom* g) noexcept nogil:
    """2x2 windows, column stride 2, no padding or dilation, every window inside the input
    (no ceil_mode overhang), rows of at most STAGE_OUTPUTS outputs: max_pool_staged_rows."""
    return (g.KH == 2 and g.KW == 2 and g.stride_w == 2 and g.pad_h == 0 and g.pad_w == 0
            and g.dilation_h == 1 and g.dilation_w == 1 and g.W_out <= STAGE_OUTPUTS
            and 2 * g.W_out <= g.W and (g.H_out - 1) * g.stride_h + 2 <= g.H)


cdef inline void max_pool_rows_2x2(const floating* x, floating* y, long long* idx,
                                   const PoolGeom* g, Py_ssize_t r0, Py_ssize_t r1,
                                   Py_ssize_t W, Py_ssize_t n) noexcept nogil:
    """Output rows [r0, r1) of all the planes (row r: plane r // H_out, row r % H_out; y
    and idx flat), for staged_fits, read in place: output j < n = W_out of a row has the
    window top[2j], top[2j+1], bot[2j], bot[2j+1], taps and codes (0, 1, W, W+1) in
    window order, four outputs a step (_max2x2.h).  Called with constants W and n for the
    common widths.  Measured (AMD EPYC, AVX2, 1 thread, float32 | float64 forward, against
    gcc's vectorisation of the scalar loop over j): 64x256x8x8 2.1x | 1.6x faster,
    64x64x8x8 1.9x | 2.3x, 64x32x32x32 1.1x | 1.1x, 8x64x56x56 1.4x | 1.1x, 64x16x40x40
    1.45x | 1.15x, 1x256x64x64 1.3x | 1.4x."""
    cdef Py_ssize_t r, i = r0 % g.H_out, h0
    cdef const floating* plane = x + (r0 // g.H_out) * g.H * W
    cdef const floating* top
    cdef const floating* bot
    cdef long long at
    for r in range(r0, r1):
        h0 = i * g.stride_h
        top = plane + h0 * W
        bot = top + W
        at = h0 * W
        i += 1
        if i == g.H_out:   # (no division per row: a row may be 4 outputs)
            i = 0
            plane += g.H * W
        if floating is float:
            cnnx_max2x2_f(top, bot, y + r * n, idx + r * n, n, at, W)
        else:
            cnnx_max2x2_d(top, bot, y + r * n, idx + r * n, n, at, W)


cdef void max_pool_staged_rows(const floating* x, floating* y, long long* idx,
                               const PoolGeom* g, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Output rows [r0, r1) of all the planes (row r: plane r // H_out, row r % H_out; y
    and idx flat, (P*H_out*W_out); at most STAGE_OUTPUTS outputs), for staged_fits: their
    windows' top and bottom rows
    copied one after another into ``top`` and ``bot``, where output q's window is
    top[2q], top[2q+1], bot[2q], bot[2q+1] -- so one vectorised loop covers all the rows'
    outputs, without a loop's set-up and remainder per row (a row of 4 outputs does not
    vectorise at all).  Taps and codes (0, 1, W, W+1) in window order, as max_windows.
    Measured (AMD EPYC, AVX2, 1 thread, float32 | float64 forward) against
    max_pool_window_row: 64x256x8x8 1.42 -> 0.64 | 1.54 -> 0.87 ms, 64x32x32x32 1.51 -> 0.77
    | 2.04 -> 1.98, 8x64x56x56 1.05 -> 0.54 | 1.48 -> 1.24."""
    cdef Py_ssize_t n = g.W_out, r, q, c, i, h0, m = (r1 - r0) * n
    cdef floating top[2 * STAGE_OUTPUTS]
    cdef floating bot[2 * STAGE_OUTPUTS]
    cdef long long base[STAGE_OUTPUTS]
    cdef const floating* row
    cdef floating best
    cdef int code
    for r in range(r0, r1):
        i = r % g.H_out
        h0 = i * g.stride_h
        row = x + ((r // g.H_out) * g.H + h0) * g.W
        for c in range(2 * n):
            top[(r - r0) * 2 * n + c] = row[c]
            bot[(r - r0) * 2 * n + c] = row[g.W + c]
        for c in range(n):
            base[(r - r0) * n + c] = h0 * g.W + 2 * c
    for q in range(m):
        best = top[2 * q]
        code = 0
        max_update(top[2 * q + 1], <int> 1, &best, &code)
        max_update(bot[2 * q], <int> g.W, &best, &code)
        max_update(bot[2 * q + 1], <int> (g.W + 1), &best, &code)
        y[r0 * n + q] = best
        idx[r0 * n + q] = base[q] + code


cdef void max_pool_2x2_band(const floating* x, floating* y, long long* idx, const PoolGeom* g,
                            Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Output rows [r0, r1) of all the planes, for staged_fits: rows of a multiple of 4
    outputs in place (max_pool_rows_2x2; the widths 8, 16 and 32 as constants, the rows'
    planes followed without a division per row), others
    staged (max_pool_staged_rows: a vectorised loop's remainder would go one by one).
    Measured (AMD EPYC, AVX2, 1 | 2 threads, float32, in place against staged):
    64x32x32x32 1.30x | 1.23x faster, 64x256x8x8 1.11x | 1.11x, 8x64x56x56 1.38x | 1.21x,
    8x64x112x112 1.57x | 1.42x, 64x16x40x40 1.31x | 1.22x; float64 1.0-1.5x; in place for
    64x6x28x28 (rows of 14) 0.76x, 64x16x36x36 (18) 0.87x, so those stay staged."""
    if g.W_out % 4:
        max_pool_staged_rows(x, y, idx, g, r0, r1)
    elif g.W == 8:   # (constants 8 and 4: 1.1x faster than W_out a variable)
        max_pool_rows_2x2(x, y, idx, g, r0, r1, 8, 4)
    elif g.W == 16:
        max_pool_rows_2x2(x, y, idx, g, r0, r1, 16, 8)
    elif g.W == 32:
        max_pool_rows_2x2(x, y, idx, g, r0, r1, 32, 16)
    else:
        max_pool_rows_2x2(x, y, idx, g, r0, r1, g.W, g.W_out)


cdef enum:
    # max_pool_phased_band: staged values of one band (all its phases), per thread
    PHASED_VALUES = 1 << 14


cdef inline (Py_ssize_t, Py_ssize_t) phased_bands(const PoolGeom* g) noexcept nogil:
    """(output rows per band, bands per plane): bands of (nearly) equal size, each staging
    about PHASED_VALUES values."""
    cdef Py_ssize_t band = max(1, min(g.H_out, PHASED_VALUES // phased_values(g, 1)))
    cdef Py_ssize_t n_bands = (g.H_out + band - 1) // band
    return (g.H_out + n_bands - 1) // n_bands, n_bands


cdef object phased_workspace(const PoolGeom* g, Py_ssize_t band, int n_threads,
                            size_t itemsize):
    """Each thread's staging for bands of ``band`` output rows, float32 or float64."""
    return np.empty((max(n_threads, 1), phased_values(g, band)),
                    dtype=np.float32 if itemsize == 4 else np.float64)


cdef inline bint phased_fits(const PoolGeom* g) noexcept nogil:
    """2x2 or 3x3 windows, strides (1, 1) or (2, 2), no dilation: the shapes phased_shapes
    compiles with constants (max_pool_phased_band, avg_pool_phased_band).  (Other shapes
    through the same loops with the window and strides at run time measured 4-11x slower
    than max_pool_row's sweeps: 3x2 windows, strides (2, 1), ...)"""
    return ((g.KH == g.KW == 2 or g.KH == g.KW == 3) and g.stride_h == g.stride_w
            and 1 <= g.stride_w <= 2 and g.dilation_h == 1 and g.dilation_w == 1)


cdef inline Py_ssize_t row_phases(const PoolGeom* g) noexcept nogil:
    """Row phases of a band: rows i*S_h - P_h + rho for rho < this (the rest never read)."""
    return min(g.stride_h, g.KH)


cdef inline Py_ssize_t phased_width(const PoolGeom* g) noexcept nogil:
    """Columns of a staged row: output j's taps are its column phases' columns j .. j+1."""
    return g.W_out + (g.KW - 1) // g.stride_w


cdef inline Py_ssize_t phased_values(const PoolGeom* g, Py_ssize_t n_rows) noexcept nogil:
    """Staged values of a band of n_rows output rows: every (row phase, column phase)
    holds n_rows + (its halo) rows of phased_width columns; then the band's results."""
    cdef Py_ssize_t rho, rows = 0
    for rho in range(row_phases(g)):
        rows += n_rows + (g.KH - 1 - rho) // g.stride_h
    return rows * g.stride_w * phased_width(g) + 2 * n_rows * phased_width(g)


cdef inline void phased_taps(const floating* stage, const Py_ssize_t* phase_at,
                             floating* best, code_t* code, Py_ssize_t n, Py_ssize_t Wq,
                             Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH,
                             Py_ssize_t SW, bint average) noexcept nogil:
    """best[q], code[q] = the max over the window of staged output q (q = row*Wq + column of
    the band) and the offset u*W + v of its first maximum (the last NaN), or (``average``)
    best[q] = the window's sum from 0 (``code`` untouched), the taps in window order: tap
    (u, v) is stage[phase_at[(u % SH)*SW + v % SW] + (u // SH)*Wq + v // SW + q].  Called
    with constant KH, KW, SH, SW and average: the taps unroll and the loop over q
    vectorises with contiguous loads."""
    cdef Py_ssize_t q, u, v
    cdef floating b, t
    cdef code_t c
    cdef const floating* phase[6]
    for u in range(min(SH, KH)):
        for v in range(SW):
            phase[u * SW + v] = stage + phase_at[u * SW + v]
    for q in range(n):
        b = 0 if average else -INFINITY
        c = 0
        for u in range(KH):
            for v in range(KW):
                t = phase[(u % SH) * SW + v % SW][(u // SH) * Wq + v // SW + q]
                if average:
                    b = b + t
                else:
                    max_update(t, <code_t> (u * W + v), &b, &c)
        best[q] = b
        if not average:
            code[q] = c


cdef inline void stage_edge(const floating* x_row, Py_ssize_t W, Py_ssize_t w, Py_ssize_t S,
                            floating* phase0, floating* phase1, floating pad) noexcept nogil:
    phase0[0] = x_row[w] if 0 <= w < W else pad
    if S == 2:
        phase1[0] = x_row[w + 1] if 0 <= w + 1 < W else pad


cdef inline void stage_row(const floating* x_row, Py_ssize_t W, Py_ssize_t start, Py_ssize_t S,
                           Py_ssize_t n, floating* phase0, floating* phase1,
                           floating pad) noexcept nogil:
    """phase_s[m] = x_row[start + m*S + s] for m < n and s < S (S = 1 or 2; phase1 for S =
    2 only), ``pad`` where that column lies outside [0, W): one pass over the row."""
    cdef Py_ssize_t m, lo, hi
    valid_range(start, S, W - S + 1, n, &lo, &hi)   # every column of m inside
    for m in range(lo):
        stage_edge(x_row, W, start + m * S, S, phase0 + m, phase1 + m, pad)
    for m in range(hi, n):
        stage_edge(x_row, W, start + m * S, S, phase0 + m, phase1 + m, pad)
    for m in range(lo, hi):
        phase0[m] = x_row[start + m * S]
        if S == 2:
            phase1[m] = x_row[start + m * S + 1]


cdef Py_ssize_t stage_band(const floating* x_plane, const PoolGeom* g, Py_ssize_t i0,
                           Py_ssize_t i1, floating* work, Py_ssize_t* phase_at,
                           floating pad) noexcept nogil:
    """The window rows of output rows [i0, i1) of one plane (for phased_fits), copied once
    into ``work``, split into row phases (input rows i*S_h - P_h + rho) and column phases
    (columns j*S_w - P_w + sigma), the padding and the ceil_mode overhang as ``pad``: tap
    (u, v) of output (i, j) is then element (i - i0 + u // S_h, j + v // S_w) of phase
    (u % S_h, v % S_w), which starts at work + phase_at[(u % S_h)*S_w + v % S_w], rows
    phased_width(g) apart.  Returns the values used.  (Prefetching the next band's input
    here made 3x3 pooling 0-9 % slower, 4 % typically: the hardware prefetchers follow
    the rows by themselves.)"""
    cdef Py_ssize_t Wq = phased_width(g), n_rows = i1 - i0, rho, sigma, r, rows, h, j
    cdef Py_ssize_t at = 0
    for rho in range(row_phases(g)):
        rows = n_rows + (g.KH - 1 - rho) // g.stride_h
        for sigma in range(g.stride_w):
            phase_at[rho * g.stride_w + sigma] = at
            at += rows * Wq
        for r in range(rows):
            h = (i0 + r) * g.stride_h - g.pad_h + rho
            if not 0 <= h < g.H:
                for sigma in range(g.stride_w):
                    for j in range(Wq):
                        work[phase_at[rho * g.stride_w + sigma] + r * Wq + j] = pad
            elif g.stride_w == 2:   # (a constant stride: vectorised)
                stage_row(x_plane + h * g.W, g.W, -g.pad_w, 2, Wq,
                          work + phase_at[rho * 2] + r * Wq, work + phase_at[rho * 2 + 1] + r * Wq,
                          pad)
            else:
                stage_row(x_plane + h * g.W, g.W, -g.pad_w, 1, Wq,
                          work + phase_at[rho] + r * Wq, NULL, pad)
    return at


cdef void max_pool_phased_band(const floating* x_plane, floating* y_plane, long long* idx_plane,
                               const PoolGeom* g, Py_ssize_t i0, Py_ssize_t i1,
                               floating* work) noexcept nogil:
    """Output rows [i0, i1) of one plane, for phased_fits: the band staged with -inf
    padding (stage_band), then one vectorised loop over its windows (phased_taps), rows
    one after another (a row's extra columns computed, never stored).  A window whose
    maximum is -inf points at its first tap inside the input (PyTorch)."""
    cdef Py_ssize_t phase_at[6]
    cdef Py_ssize_t at = stage_band(x_plane, g, i0, i1, work, phase_at, -INFINITY)
    cdef Py_ssize_t n = (i1 - i0) * phased_width(g)
    # codes as wide as the values (int with float, long long with double), so that the
    # compare masks select them without repacking
    if floating is float:
        max_phased_outputs(work, phase_at, y_plane, idx_plane, g, i0, i1, work + at,
                           <int*> (work + at + n))
    else:
        max_phased_outputs(work, phase_at, y_plane, idx_plane, g, i0, i1, work + at,
                           <long long*> (work + at + n))


cdef inline void phased_shapes(const floating* stage, const Py_ssize_t* phase_at,
                               floating* best, code_t* code, Py_ssize_t n, const PoolGeom* g,
                               bint average) noexcept nogil:
    """phased_taps with the window and strides as constants (the shapes of phased_fits)."""
    cdef Py_ssize_t Wq = phased_width(g)
    if g.KH == 3 and g.stride_h == 2:
        phased_taps(stage, phase_at, best, code, n, Wq, g.W, 3, 3, 2, 2, average)
    elif g.KH == 3:
        phased_taps(stage, phase_at, best, code, n, Wq, g.W, 3, 3, 1, 1, average)
    elif g.stride_h == 2:
        phased_taps(stage, phase_at, best, code, n, Wq, g.W, 2, 2, 2, 2, average)
    else:
        phased_taps(stage, phase_at, best, code, n, Wq, g.W, 2, 2, 1, 1, average)


cdef inline void max_phased_outputs(const floating* stage, const Py_ssize_t* phase_at,
                                    floating* y_plane, long long* idx_plane, const PoolGeom* g,
                                    Py_ssize_t i0, Py_ssize_t i1, floating* best,
                                    code_t* code) noexcept nogil:
    """max_pool_phased_band's windows (phased_taps, into best and code) and outputs."""
    cdef Py_ssize_t Wq = phased_width(g), n = (i1 - i0) * phased_width(g), i, j, h0, w0, q
    phased_shapes(stage, phase_at, best, code, n, g, False)
    for i in range(i0, i1):
        h0 = i * g.stride_h - g.pad_h
        q = (i - i0) * Wq
        for j in range(g.W_out):
            w0 = j * g.stride_w - g.pad_w
            y_plane[i * g.W_out + j] = best[q + j]
            idx_plane[i * g.W_out + j] = (max(h0, 0) * g.W + max(w0, 0) if best[q + j] == -INFINITY
                                          else h0 * g.W + w0 + code[q + j])

cdef void max_pool_whole_rows(const floating* x_plane, floating* y_col, long long* idx_col,
                              const PoolGeom* g) noexcept nogil:
    """Output column of one plane whose windows hold whole input rows (W_out = 1, no column
    padding, KW >= W, no dilation): each window one contiguous run (_argmax.h)."""
    cdef Py_ssize_t i, h_lo, h_hi, padded
    cdef long long at
    for i in range(g.H_out):
        window_span(i * g.stride_h - g.pad_h, g.KH, g.H, g.pad_h, &h_lo, &h_hi, &padded)
        if floating is float:
            at = h_lo * g.W + cnnx_argmax_f(x_plane + h_lo * g.W, (h_hi - h_lo) * g.W)
        else:
            at = h_lo * g.W + cnnx_argmax_d(x_plane + h_lo * g.W, (h_hi - h_lo) * g.W)
        idx_col[i] = at
        y_col[i] = x_plane[at]


cdef void max_pool_global(const floating* x, floating* y, long long* idx, const PoolGeom* g,
                          Py_ssize_t h_lo, Py_ssize_t n) noexcept nogil:
    """8 (float) or 4 (double: the type's lanes in an AVX register) consecutive planes
    whose one window is the run of n values from input row h_lo, n at least 8 or 4
    (global pooling: H_out = W_out = 1, windows of whole rows): their arg-maxes at once
    (cnnx_argmax_f_8 / _d_4, _argmax.h)."""
    cdef long long code[8]
    cdef Py_ssize_t q, plane = g.H * g.W
    if floating is float:
        cnnx_argmax_f_8(x + h_lo * g.W, plane, n, code)
        for q in range(8):
            idx[q] = h_lo * g.W + code[q]
            y[q] = x[q * plane + idx[q]]
    else:
        cnnx_argmax_d_4(x + h_lo * g.W, plane, n, code)
        for q in range(4):
            idx[q] = h_lo * g.W + code[q]
            y[q] = x[q * plane + idx[q]]


def max_pool_forward(const floating[:, :, ::1] x,   # (P, H, W)
                     floating[:, :, ::1] y,         # OUT (P, H_out, W_out)
                     long long[:, :, ::1] indices,  # OUT (P, H_out, W_out)
                     spec, int n_threads):
    """Work items of (plane, band of output rows), so even a single plane uses every thread:
    runs of rows across the planes for unpadded 2x2/2 windows (max_pool_2x2_band), phased
    bands for other 2x2 and 3x3 windows with strides (1, 1) or (2, 2) (measured, AMD EPYC,
    AVX2, 1 thread, float32 | float64 forward, against max_pool_row's sweeps: 3x3/2/1
    32x64x56x56 7.2 -> 6.3 | 11.4 -> 12.1 ms, 1x64x112x112 0.62 -> 0.53 | 1.19 -> 1.08,
    64x256x8x8 5.4 -> 2.8 | 7.5 -> 3.6; 3x3/1/1 8x32x32x32 0.80 -> 0.47 | 1.46 -> 1.04;
    2x2/1 64x256x8x8 6.2 -> 2.9 | 5.8 -> 3.1), each window of whole input rows one
    contiguous arg-max (max_pool_whole_rows), one output row per item with max_pool_row
    for the rest."""
    cdef PoolGeom g = make_geom(spec)
    cdef Py_ssize_t item, p, i, j, v_lo, v_hi, w0, band, n_bands, h_lo, h_hi, padded, m
    cdef Py_ssize_t[::1] first_col
    cdef Py_ssize_t[:, ::1] taps
    cdef floating[:, ::1] work
    # codes lie in (-CHUNK*stride_w, H*W): 32 bits suffice for any plane of practical size
    cdef bint small = g.H * g.W < (1 << 30) and g.stride_w < (1 << 30) // CHUNK
    cdef Py_ssize_t n_rows = g.P * g.H_out
    cdef Py_ssize_t run = max(1, STAGE_OUTPUTS // max(g.W_out, 1))   # rows per staged run
    if g.P == 0 or g.H_out == 0 or g.W_out == 0:
        return
    if (g.W_out == 1 and g.pad_w == 0 and g.KW >= g.W and g.dilation_h == 1
            and g.dilation_w == 1):   # (functional._pool_work: the same shapes)
        # whole rows (global pooling; measured, AMD EPYC, AVX2, 1 thread, float32 |
        # float64, against max_pool_row's sweeps: 32x512x7x7 8.8x | 6.8x faster,
        # 8x256x14x14 12.9x | 9.9x, 8x64x3x3 3.4x | 3.4x)
        window_span(-g.pad_h, g.KH, g.H, g.pad_h, &h_lo, &h_hi, &padded)
        m = 8 if floating is float else 4   # planes per max_pool_global call
        if g.H_out == 1 and m <= (h_hi - h_lo) * g.W < (1 << 28):
            # 8 (float) or 4 (double) planes at a time (global pooling; measured, AMD EPYC,
            # AVX2, 1 thread, 32x512x7x7: float32 2.6x, float64 1.8x faster than plane by
            # plane; runs of fewer than 2**28 values, the lanes' positions in 32 bits)
            for item in prange((g.P + m - 1) // m, nogil=True, schedule="static",
                               num_threads=n_threads):
                if item * m + m <= g.P:
                    max_pool_global(&x[item * m, 0, 0], &y[item * m, 0, 0],
                                    &indices[item * m, 0, 0], &g, h_lo, (h_hi - h_lo) * g.W)
                else:
                    for p in range(item * m, g.P):
                        max_pool_whole_rows(&x[p, 0, 0], &y[p, 0, 0], &indices[p, 0, 0], &g)
            return
        for p in prange(g.P, nogil=True, schedule="static", num_threads=n_threads):
            max_pool_whole_rows(&x[p, 0, 0], &y[p, 0, 0], &indices[p, 0, 0], &g)
        return
    if small and staged_fits(&g):
        for item in prange((n_rows + run - 1) // run, nogil=True, schedule="static",
                           num_threads=n_threads):
            max_pool_2x2_band(&x[0, 0, 0], &y[0, 0, 0], &indices[0, 0, 0], &g, item * run,
                              min((item + 1) * run, n_rows))
        return
    if small and phased_fits(&g):
        band, n_bands = phased_bands(&g)
        work = phased_workspace(&g, band, n_threads, sizeof(floating))
        for item in prange(g.P * n_bands, nogil=True, schedule="static", num_threads=n_threads):
            p = item // n_bands
            i = item % n_bands * band
            max_pool_phased_band(&x[p, 0, 0], &y[p, 0, 0], &indices[p, 0, 0], &g, i,
                                 min(i + band, g.H_out), &work[threadid(), 0])
        return
    first_col = np.empty(g.W_out, dtype=np.intp)
    for j in range(g.W_out):  # column of each output's first tap inside the input
        w0 = j * g.stride_w - g.pad_w
        valid_range(w0, g.dilation_w, g.W, g.KW, &v_lo, &v_hi)
        first_col[j] = w0 + v_lo * g.dilation_w
    taps = tap_ranges(&g, g.dilation_w)
    for item in prange(g.P * g.H_out, nogil=True, schedule="static", num_threads=n_threads):
        p = item // g.H_out
        i = item % g.H_out
        if small:
            max_pool_row(&x[p, 0, 0], &y[p, i, 0], &indices[p, i, 0], &g, i, &first_col[0],
                         &taps[0, 0], <int> 0)
        else:
            max_pool_row(&x[p, 0, 0], &y[p, i, 0], &indices[p, i, 0], &g, i, &first_col[0],
                         &taps[0, 0], <long long> 0)


def max_pool_backward(const floating[:, ::1] grad_out,     # (P, H_out*W_out)
                      const long long[:, ::1] indices,     # (P, H_out*W_out), each in [0, H*W)
                      floating[:, ::1] grad_x,             # OUT (P, H*W)
                      int n_threads):
    """grad_x[p] = 0, then grad_x[p, indices[p, k]] += grad_out[p, k]; one plane per work
    item (zeroed by its thread, in cache for the additions; measured AMD EPYC, float32, 2
    threads, against np.zeros beforehand: 2x2/2 64x32x32x32 0.46 -> 0.38 ms, 3x3/2/1
    32x64x56x56 2.84 -> 2.09; level at 1 thread).

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
        memset(gx, 0, HW * sizeof(floating))
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


cdef inline floating divided(floating value, const double* inv_row, const double* inv_col,
                             Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    """value / the divisor of output (i, j), as value * (1/divisor) with 1/divisor =
    inv_row[i] * inv_col[j] (see ``inverse_factors``)."""
    return value * <floating> (inv_row[i] * inv_col[j])


cdef inline void sum_sweep(const floating* x_tap, floating* acc, Py_ssize_t j_lo, Py_ssize_t j_hi,
                           Py_ssize_t S, Py_ssize_t n, bint first) noexcept nogil:
    """acc[j] (0 if ``first``) += x_tap[j*S + v] for v < n, in order, for j in [j_lo, j_hi).
    Called with constant S and n, so the compiler unrolls the taps and vectorises over j."""
    cdef Py_ssize_t j, v
    cdef floating s
    for j in range(j_lo, j_hi):
        s = 0 if first else acc[j]
        for v in range(n):
            s += x_tap[j * S + v]
        acc[j] = s


cdef inline void avg_windows(const floating* x0, Py_ssize_t W, floating* y, Py_ssize_t n,
                             double inv_i, const double* inv_col, Py_ssize_t S,
                             Py_ssize_t K) noexcept nogil:
    """y[j] = (the sum of the K x K window at x0 + j*S, rows W apart, every tap inside the
    input, in window order from 0) * inv_i * inv_col[j] for j < n.  Called with constant S
    and K, so the taps unroll and the loop over j vectorises."""
    cdef Py_ssize_t j, u, v
    cdef floating s
    for j in range(n):
        s = 0
        for u in range(K):
            for v in range(K):
                s = s + x0[u * W + j * S + v]
        y[j] = s * <floating> (inv_i * inv_col[j])


cdef void avg_pool_window_row(const floating* x_plane, floating* y_row, const PoolGeom* g,
                              Py_ssize_t i, const double* inv_row,
                              const double* inv_col) noexcept nogil:
    """Row i (window_row), window by window: outputs [win_a, win_b) with avg_windows, the
    border ones (their windows cut by the padding) one by one -- the same sums, in the
    same order, as avg_pool_row's sweeps (rows of fewer than SHORT_ROW outputs now sum in
    window order too, as PyTorch, not columns first).  Measured (AMD EPYC, AVX2, 1 thread,
    float32 forward), against the sweeps: 2x2/2 64x32x32x32 1.16 -> 0.87 ms, 64x256x8x8
    5.6 -> 0.85 ms, 3x3/2/1 8x64x56x56 1.68 -> 1.08 ms; float64 level (1.37 -> 1.38)."""
    cdef Py_ssize_t h0 = i * g.stride_h - g.pad_h, S = g.stride_w, K = g.win_K
    cdef Py_ssize_t w0 = g.win_a * S - g.pad_w, n = g.win_b - g.win_a, j, u, w, w_lo, w_hi, b
    cdef const floating* x0 = x_plane + h0 * g.W + w0
    cdef floating s
    if K == 2 and S == 2:
        avg_windows(x0, g.W, y_row + g.win_a, n, inv_row[i], inv_col + g.win_a, 2, 2)
    elif K == 3 and S == 2:
        avg_windows(x0, g.W, y_row + g.win_a, n, inv_row[i], inv_col + g.win_a, 2, 3)
    elif K == 2:
        avg_windows(x0, g.W, y_row + g.win_a, n, inv_row[i], inv_col + g.win_a, 1, 2)
    else:
        avg_windows(x0, g.W, y_row + g.win_a, n, inv_row[i], inv_col + g.win_a, 1, 3)
    # the border outputs only: [0, win_a) and [win_b, W_out) (a loop over every j that
    # skipped the inner ones took 40 % of a 2x2/2 forward on 16-wide rows)
    for b in range(g.win_a + g.W_out - g.win_b):
        j = b if b < g.win_a else g.win_b + b - g.win_a
        w_lo = max(j * S - g.pad_w, 0)
        w_hi = min(j * S - g.pad_w + K, g.W)
        s = 0
        for u in range(h0, h0 + K):
            for w in range(w_lo, w_hi):
                s = s + x_plane[u * g.W + w]
        y_row[j] = divided(s, inv_row, inv_col, i, j)


cdef void avg_pool_row(const floating* x_plane, floating* y_row, const PoolGeom* g, Py_ssize_t i,
                       const double* inv_row, const double* inv_col,
                       const Py_ssize_t* taps) noexcept nogil:
    """Output row i of one plane: sum tap by tap over the row, then scale by 1/divisor.

    The sums live in a small local array, which the compiler can keep apart
    from the input (no aliasing) and vectorise.  Common shapes sum the outputs
    whose whole window row lies inside the input once per window row, all its
    taps at once (``whole_row_range``); each output adds its taps in window order.
    When that sweep covers every output, the first window row starts the sums.
    """
    cdef Py_ssize_t S = g.stride_w, K = g.KW
    cdef Py_ssize_t h_lo, h_hi, padded, ih, t, j, j0, jn, j_lo, j_hi, a, b, off
    cdef bint fused, border, direct, first
    cdef floating acc[CHUNK]
    cdef const floating* x_row
    window_span(i * g.stride_h - g.pad_h, g.KH, g.H, g.pad_h, &h_lo, &h_hi, &padded)
    j0 = 0
    while j0 < g.W_out:
        jn = min(<Py_ssize_t> CHUNK, g.W_out - j0)
        fused = whole_row_range(g, taps, 1, j0, jn, &a, &b, &border)
        direct = fused and not border and a == 0 and b == jn and h_hi > h_lo
        if not direct:
            for j in range(jn):
                acc[j] = 0
        for ih in range(h_lo, h_hi):
            first = direct and ih == h_lo
            x_row = x_plane + ih * g.W
            # output j's tap v is x_row[j*S + off] for off = v - pad_w + j0*S
            off = -g.pad_w + j0 * S
            if fused and b > a:
                if K == 2 and S == 2:
                    sum_sweep(x_row + off, acc, a, b, 2, 2, first)
                elif K == 3 and S == 2:
                    sum_sweep(x_row + off, acc, a, b, 2, 3, first)
                elif K == 2:
                    sum_sweep(x_row + off, acc, a, b, 1, 2, first)
                else:
                    sum_sweep(x_row + off, acc, a, b, 1, 3, first)
            for t in range(g.n_taps if border else 0):
                off = taps[3 * t] - g.pad_w + j0 * S
                chunk_range(taps, t, j0, jn, &j_lo, &j_hi)
                # [j_lo, j_hi) without [a, b): two pieces; constant strides for the
                # common cases let the compiler vectorise
                if S == 1:
                    sum_sweep(x_row + off, acc, j_lo, min(a, j_hi), 1, 1, False)
                    sum_sweep(x_row + off, acc, max(b, j_lo), j_hi, 1, 1, False)
                elif S == 2:
                    sum_sweep(x_row + off, acc, j_lo, min(a, j_hi), 2, 1, False)
                    sum_sweep(x_row + off, acc, max(b, j_lo), j_hi, 2, 1, False)
                else:
                    sum_sweep(x_row + off, acc, j_lo, min(a, j_hi), S, 1, False)
                    sum_sweep(x_row + off, acc, max(b, j_lo), j_hi, S, 1, False)
        for j in range(jn):
            y_row[j0 + j] = divided(acc[j], inv_row, inv_col, i, j0 + j)
        j0 += jn


cdef inline void spread_sweep(floating* gx_tap, const floating* share, Py_ssize_t j_lo,
                              Py_ssize_t j_hi, Py_ssize_t S, Py_ssize_t n,
                              bint once) noexcept nogil:
    """gx_tap[j*S + v] += share[j] for v < n, j in [j_lo, j_hi) (constant S and n: see
    ``sum_sweep``).  ``once``: nothing else touches these elements, which are still 0,
    so they are written without being read (0 + share: a -0.0 share gives 0.0 all the same)."""
    cdef Py_ssize_t j, v
    for j in range(j_lo, j_hi):
        for v in range(n):
            gx_tap[j * S + v] = (0 if once else gx_tap[j * S + v]) + share[j]


cdef void avg_pool_grad_plane(const floating* gy_plane, floating* gx_plane, const PoolGeom* g,
                              const double* inv_row, const double* inv_col,
                              const Py_ssize_t* taps) noexcept nogil:
    """gx_plane[window of (i, j)] += gy_plane[i, j] / divisor, row by row, tap by tap
    (gx_plane zero-filled by the caller); chunks and common shapes as in ``avg_pool_row``.
    Windows that do not overlap (stride >= kernel) write each element once."""
    cdef Py_ssize_t S = g.stride_w, K = g.KW
    cdef Py_ssize_t i, h_lo, h_hi, padded, ih, t, j, j0, jn, j_lo, j_hi, a, b, off
    cdef bint fused, border
    cdef bint once = g.stride_h >= g.KH and g.stride_w >= g.KW
    cdef floating share[CHUNK]
    cdef floating* gx_row
    cdef const floating* gy_row
    for i in range(g.H_out):
        gy_row = gy_plane + i * g.W_out
        window_span(i * g.stride_h - g.pad_h, g.KH, g.H, g.pad_h, &h_lo, &h_hi, &padded)
        j0 = 0
        while j0 < g.W_out:
            jn = min(<Py_ssize_t> CHUNK, g.W_out - j0)
            fused = whole_row_range(g, taps, 1, j0, jn, &a, &b, &border)
            for j in range(jn):
                share[j] = divided(gy_row[j0 + j], inv_row, inv_col, i, j0 + j)
            for ih in range(h_lo, h_hi):
                gx_row = gx_plane + ih * g.W
                off = -g.pad_w + j0 * S
                if fused and b > a:
                    if K == 2 and S == 2:
                        spread_sweep(gx_row + off, share, a, b, 2, 2, once)
                    elif K == 3 and S == 2:
                        spread_sweep(gx_row + off, share, a, b, 2, 3, once)
                    elif K == 2:
                        spread_sweep(gx_row + off, share, a, b, 1, 2, once)
                    else:
                        spread_sweep(gx_row + off, share, a, b, 1, 3, once)
                for t in range(g.n_taps if border else 0):
                    off = taps[3 * t] - g.pad_w + j0 * S
                    chunk_range(taps, t, j0, jn, &j_lo, &j_hi)
                    if S == 1:
                        spread_sweep(gx_row + off, share, j_lo, min(a, j_hi), 1, 1, once)
                        spread_sweep(gx_row + off, share, max(b, j_lo), j_hi, 1, 1, once)
                    elif S == 2:
                        spread_sweep(gx_row + off, share, j_lo, min(a, j_hi), 2, 1, once)
                        spread_sweep(gx_row + off, share, max(b, j_lo), j_hi, 2, 1, once)
                    else:
                        spread_sweep(gx_row + off, share, j_lo, min(a, j_hi), S, 1, once)
                        spread_sweep(gx_row + off, share, max(b, j_lo), j_hi, S, 1, once)
            j0 += jn


cdef void avg_pool_grad_plane_rows(const floating* gy_plane, floating* gx_plane,
                                   const PoolGeom* g, const double* inv_row,
                                   const double* inv_col, floating* share,
                                   floating* trow, floating* phases) noexcept nogil:
    """avg_pool_grad_plane, a window row at a time: 1/divisor = inv_row[i] * inv_col[j]
    and windows are products of a row range and a column range, so output row i's shares
    are spread along one row first (``trow``, tap by tap: trow[j*S + v - P] += share[j]),
    then added into each of its KH window rows (whole-row vector adds) -- instead of
    spreading them into each window row again (gx_plane zero-filled by the caller;
    ``share``: W_out values, ``trow``: W).  Column stride 2 spreads into trow's even and
    odd columns (``phases``: W + 2 values), contiguous runs, then interleaves them
    (strided adds went one element at a time).  Measured (AMD EPYC, AVX2, float32, 1
    thread), against avg_pool_grad_plane: 3x3/2/1 8x64x56x56 2.2 -> 1.3 ms (the phases:
    1.1-1.2x faster again, float64 1.1x), 3x3/1/1 8x32x32x32 1.15 -> 0.41 ms."""
    cdef Py_ssize_t S = g.stride_w, i, j, v, j_lo, j_hi, h_lo, h_hi, padded, h, w, off, ph
    cdef Py_ssize_t half = (g.W + 1) // 2
    cdef floating* gx_row
    for i in range(g.H_out):
        window_span(i * g.stride_h - g.pad_h, g.KH, g.H, g.pad_h, &h_lo, &h_hi, &padded)
        for j in range(g.W_out):
            share[j] = divided(gy_plane[i * g.W_out + j], inv_row, inv_col, i, j)
        if S == 2:
            # tap v lands on column 2j + off, off = v - P: even/odd phase off & 1, element
            # j + (off - (off & 1)) / 2 of it (every one inside [0, W): valid_range)
            for w in range(2 * half):
                phases[w] = 0
            for v in range(g.KW):
                valid_range(v - g.pad_w, 2, g.W, g.W_out, &j_lo, &j_hi)
                off = v - g.pad_w
                ph = off & 1
                spread_sweep(phases + ph * half + (off - ph) // 2, share, j_lo, j_hi, 1, 1,
                             False)
            for w in range(g.W // 2):
                trow[2 * w] = phases[w]
                trow[2 * w + 1] = phases[half + w]
            if g.W % 2:
                trow[g.W - 1] = phases[half - 1]
        else:
            for w in range(g.W):
                trow[w] = 0
        for v in range(g.KW):
            if S == 2:
                break
            valid_range(v - g.pad_w, S, g.W, g.W_out, &j_lo, &j_hi)
            if S == 1:
                spread_sweep(trow + v - g.pad_w, share, j_lo, j_hi, 1, 1, False)
            else:
                spread_sweep(trow + v - g.pad_w, share, j_lo, j_hi, S, 1, False)
        for h in range(h_lo, h_hi):
            gx_row = gx_plane + h * g.W
            for w in range(g.W):
                gx_row[w] = gx_row[w] + trow[w]


cdef double[::1] inverse_factors(Py_ssize_t n_out, Py_ssize_t kernel, Py_ssize_t size,
                                 Py_ssize_t stride, Py_ssize_t pad, bint count_include_pad,
                                 double override):
    """Per output row (or column): 1 / (the window's length cut at the padding
    (count_include_pad) or clipped to the input), or ``override`` when not 0.

    divisor = divisor_override, else (count_include_pad) the window size cut at
    the padding, else the number of input elements in the window; it is the
    product of a row and a column factor, so 1/divisor = (1/row) * (1/column)
    (with divisor_override: row factor 1/divisor_override, column factor 1).
    """
    cdef double[::1] inv = np.empty(max(n_out, 1), dtype=np.float64)
    cdef Py_ssize_t j, lo, hi, padded
    for j in range(n_out):
        window_span(j * stride - pad, kernel, size, pad, &lo, &hi, &padded)
        inv[j] = override if override != 0 else 1.0 / (padded if count_include_pad else hi - lo)
    return inv


cdef tuple divisor_factors(const PoolGeom* g, bint count_include_pad, Py_ssize_t divisor_override):
    """(inv_row, inv_col) with 1/divisor of output (i, j) = inv_row[i] * inv_col[j]."""
    return (inverse_factors(g.H_out, g.KH, g.H, g.stride_h, g.pad_h, count_include_pad,
                            1.0 / divisor_override if divisor_override else 0),
            inverse_factors(g.W_out, g.KW, g.W, g.stride_w, g.pad_w, count_include_pad,
                            1.0 if divisor_override else 0))


cdef inline floating run_sum(const floating* a, Py_ssize_t n) noexcept nogil:
    """a[0] + ... + a[n-1], element k into partial sum k % 8, the eight added up in a fixed
    order: a loop the compiler vectorises (one running sum would be a chain of n adds)."""
    cdef floating part[8]
    cdef Py_ssize_t k, q
    for q in range(8):
        part[q] = 0
    for k in range(0, n - 7, 8):
        for q in range(8):
            part[q] = part[q] + a[k + q]
    for k in range(n - n % 8, n):
        part[k % 8] = part[k % 8] + a[k]
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]))


cdef void avg_pool_row_windows(const floating* x_plane, floating* y_row, const PoolGeom* g,
                               Py_ssize_t i, const double* inv_row,
                               const double* inv_col) noexcept nogil:
    """Output row i of one plane, each output's window summed in place, for rows of fewer
    than SHORT_ROW outputs: columns down first (up to 16 independent sums, each a short
    dependency chain), then across -- a 7x7 window in one running sum would wait on 49
    additions in a row."""
    cdef Py_ssize_t h_lo, h_hi, w_lo, w_hi, padded, ih, j, q, c0, n
    cdef floating s
    cdef floating col[16]
    cdef const floating* x_cols
    window_span(i * g.stride_h - g.pad_h, g.KH, g.H, g.pad_h, &h_lo, &h_hi, &padded)
    for j in range(g.W_out):
        window_span(j * g.stride_w - g.pad_w, g.KW, g.W, g.pad_w, &w_lo, &w_hi, &padded)
        if w_lo == 0 and w_hi == g.W:  # whole rows (global pooling): one contiguous run
            y_row[j] = divided(run_sum(x_plane + h_lo * g.W, (h_hi - h_lo) * g.W),
                               inv_row, inv_col, i, j)
            continue
        s = 0
        for c0 in range(w_lo, w_hi, 16):
            n = min(16, w_hi - c0)
            for q in range(n):
                col[q] = 0
            for ih in range(h_lo, h_hi):
                x_cols = x_plane + ih * g.W + c0
                for q in range(n):
                    col[q] = col[q] + x_cols[q]
            for q in range(n):
                s = s + col[q]
        y_row[j] = divided(s, inv_row, inv_col, i, j)


cdef void avg_pool_grad_plane_windows(const floating* gy_plane, floating* gx_plane,
                                      const PoolGeom* g, const double* inv_row,
                                      const double* inv_col, bint once) noexcept nogil:
    """avg_pool_grad_plane window by window (rows of fewer than SHORT_ROW outputs);
    ``once``: the windows tile the plane, each element written once, not added to."""
    cdef Py_ssize_t h_lo, h_hi, w_lo, w_hi, padded, ih, w, i, j
    cdef floating share
    for i in range(g.H_out):
        window_span(i * g.stride_h - g.pad_h, g.KH, g.H, g.pad_h, &h_lo, &h_hi, &padded)
        for j in range(g.W_out):
            window_span(j * g.stride_w - g.pad_w, g.KW, g.W, g.pad_w, &w_lo, &w_hi, &padded)
            share = divided(gy_plane[i * g.W_out + j], inv_row, inv_col, i, j)
            if w_lo == 0 and w_hi == g.W:  # whole rows: one contiguous run
                for w in range(h_lo * g.W, h_hi * g.W):
                    gx_plane[w] = share if once else gx_plane[w] + share
                continue
            for ih in range(h_lo, h_hi):
                for w in range(w_lo, w_hi):
                    gx_plane[ih * g.W + w] = share if once else gx_plane[ih * g.W + w] + share


cdef void avg_pool_phased_band(const floating* x_plane, floating* y_plane, const PoolGeom* g,
                               Py_ssize_t i0, Py_ssize_t i1, const double* inv_row,
                               const double* inv_col, floating* work) noexcept nogil:
    """Output rows [i0, i1) of one plane, for phased_fits: the band staged with zero padding
    (stage_band), every window summed from 0 in window order in one vectorised loop
    (phased_taps; the padding's zeros add nothing, the sums are those of the other paths),
    then scaled by 1/divisor."""
    cdef Py_ssize_t phase_at[6]
    cdef Py_ssize_t at = stage_band(x_plane, g, i0, i1, work, phase_at, 0)
    cdef Py_ssize_t Wq = phased_width(g), i, j
    cdef floating* sums = work + at
    phased_shapes(work, phase_at, sums, <int*> NULL, (i1 - i0) * Wq, g, True)
    for i in range(i0, i1):
        for j in range(g.W_out):
            y_plane[i * g.W_out + j] = divided(sums[(i - i0) * Wq + j], inv_row, inv_col, i, j)


cdef inline void avg_pool_tiled_rows(const floating* x, floating* y, Py_ssize_t W,
                                     Py_ssize_t r0, Py_ssize_t r1, floating factor) noexcept nogil:
    """Output rows [r0, r1) of 2x2 windows that tile the input (stride 2, no padding, no rows
    or columns left over), the planes one after another: output row r reads input rows 2r
    and 2r+1 (of every plane at once: P*H_out rows of W/2), each window summed in window
    order and scaled by 1/divisor (= factor, one value for every window)."""
    cdef Py_ssize_t r, j, Wo = W // 2
    cdef const floating* x0
    cdef const floating* x1
    cdef floating* y_row
    for r in range(r0, r1):
        x0 = x + 2 * r * W
        x1 = x0 + W
        y_row = y + r * Wo
        for j in range(Wo):
            y_row[j] = (((x0[2 * j] + x0[2 * j + 1]) + x1[2 * j]) + x1[2 * j + 1]) * factor


cdef inline void avg_pool_grad_tiled_rows(const floating* gy, floating* gx, Py_ssize_t W,
                                          Py_ssize_t r0, Py_ssize_t r1,
                                          floating factor) noexcept nogil:
    """The backward of avg_pool_tiled_rows: input rows 2r and 2r+1 of output row r (of every
    plane at once) get its share 0 + grad_y * (1/divisor) (as spread_sweep's ``once``), for
    r in [r0, r1)."""
    cdef Py_ssize_t r, j, Wo = W // 2
    cdef floating share
    cdef floating* g0
    cdef floating* g1
    cdef const floating* gy_row
    for r in range(r0, r1):
        g0 = gx + 2 * r * W
        g1 = g0 + W
        gy_row = gy + r * Wo
        for j in range(Wo):
            share = gy_row[j] * factor
            g0[2 * j] = 0 + share
            g0[2 * j + 1] = 0 + share
            g1[2 * j] = 0 + share
            g1[2 * j + 1] = 0 + share


cdef inline bint tiles_2x2(const PoolGeom* g) noexcept nogil:
    """2x2 windows with stride 2 that tile a non-empty input exactly (no padding, no rows or
    columns left over): avg_pool_tiled_rows' shape."""
    return (g.KH == 2 and g.KW == 2 and g.stride_h == 2 and g.stride_w == 2 and g.pad_h == 0
            and g.pad_w == 0 and g.H == 2 * g.H_out and g.W == 2 * g.W_out and g.P > 0
            and g.H_out > 0)


cdef enum:
    TILED_BANDS = 8   # work items per thread of the tiled 2x2 rows (avg_pool_tiled_rows)


cdef void tiled_band(const floating* src, floating* dst, Py_ssize_t W, Py_ssize_t r0,
                     Py_ssize_t r1, floating factor, bint backward) noexcept nogil:
    """avg_pool_tiled_rows (avg_pool_grad_tiled_rows if ``backward``) of rows [r0, r1), the
    widths 8 and 16 as constants: the compiler then vectorises across rows (64x256x8x8
    forward 0.69 -> 0.42 ms, 1 thread).  (One row function for both directions, ``backward``
    a run-time flag inside it, measured 1.5-2.8x slower backward on 8x8 and 16x16 planes.)"""
    if backward:
        if W == 8:
            avg_pool_grad_tiled_rows(src, dst, 8, r0, r1, factor)
        elif W == 16:
            avg_pool_grad_tiled_rows(src, dst, 16, r0, r1, factor)
        else:
            avg_pool_grad_tiled_rows(src, dst, W, r0, r1, factor)
    elif W == 8:
        avg_pool_tiled_rows(src, dst, 8, r0, r1, factor)
    elif W == 16:
        avg_pool_tiled_rows(src, dst, 16, r0, r1, factor)
    else:
        avg_pool_tiled_rows(src, dst, W, r0, r1, factor)


cdef void tiled_2x2(const floating* src, floating* dst, const PoolGeom* g, floating factor,
                    int n_threads, bint backward) noexcept nogil:
    """For tiles_2x2: all P*H_out output rows in TILED_BANDS bands per thread (tiled_band)."""
    cdef Py_ssize_t n_rows = g.P * g.H_out, item
    cdef Py_ssize_t n_items = min(n_rows, <Py_ssize_t> n_threads * TILED_BANDS)
    for item in prange(n_items, schedule="static", num_threads=n_threads):
        tiled_band(src, dst, g.W, item * n_rows // n_items, (item + 1) * n_rows // n_items,
                   factor, backward)


def avg_pool_forward(const floating[:, :, ::1] x,  # (P, H, W)
                     floating[:, :, ::1] y,        # OUT (P, H_out, W_out)
                     spec, bint count_include_pad, Py_ssize_t divisor_override, int n_threads):
    """Work items of (plane, band of output rows) for 3x3 windows with strides 1 or 2
    (avg_pool_phased_band; measured, AMD EPYC, AVX2, 1 thread, float32 | float64 forward,
    against the window-by-window rows: 3x3/1/1 8x32x32x32 2.0x | 2.3x faster, 3x3/2/1
    1x64x112x112 1.3x | 1.0x, 64x256x8x8 1.4x | 1.1x, 8x64x56x56 1.1x | 0.9x, so float64
    at stride 2 stays window by window); 2x2 windows that tile the input exactly (stride 2,
    no padding, no rows or columns left over) in bands of rows across the planes
    (avg_pool_tiled_rows; measured, 1 | 2 threads, float32, against the window-by-window
    rows: 64x256x8x8 3.6x | 4.2x faster, 64x64x16x16 2.4x | 3.2x, 64x6x28x28 1.7x | 1.7x,
    64x32x32x32 1.4x | 1.5x, 8x64x112x112 1.1x | 1.2x; float64 1.1-2.6x); else of (plane,
    output row)."""
    cdef PoolGeom g = make_geom(spec)
    cdef Py_ssize_t item, p, i, band, n_bands
    cdef floating[:, ::1] work
    cdef double[::1] inv_row, inv_col
    cdef Py_ssize_t[:, ::1] taps
    inv_row, inv_col = divisor_factors(&g, count_include_pad, divisor_override)
    cdef bint whole = (g.H_out == 1 and g.W_out == 1 and g.pad_h == 0 and g.pad_w == 0
                       and g.KH >= g.H and g.KW >= g.W)
    if whole:   # global pooling: each plane one contiguous sum (what avg_pool_row_windows
        # computes, without its per-row set-up: 32x512x7x7 forward 0.49 -> 0.18 ms)
        for p in prange(g.P, nogil=True, schedule="static", num_threads=n_threads):
            y[p, 0, 0] = divided(run_sum(&x[p, 0, 0], g.H * g.W), &inv_row[0], &inv_col[0], 0, 0)
        return
    if (phased_fits(&g) and g.KH == 3 and (floating is float or g.stride_h == 1)
            and g.P > 0 and g.H_out > 0 and g.W_out > 0):
        band, n_bands = phased_bands(&g)
        work = phased_workspace(&g, band, n_threads, sizeof(floating))
        for item in prange(g.P * n_bands, nogil=True, schedule="static", num_threads=n_threads):
            p = item // n_bands
            i = item % n_bands * band
            avg_pool_phased_band(&x[p, 0, 0], &y[p, 0, 0], &g, i, min(i + band, g.H_out),
                                 &inv_row[0], &inv_col[0], &work[threadid(), 0])
        return
    if tiles_2x2(&g):
        with nogil:
            tiled_2x2(&x[0, 0, 0], &y[0, 0, 0], &g, <floating> (inv_row[0] * inv_col[0]),
                      n_threads, False)
        return
    taps = tap_ranges(&g, 1)   # (only the rows below read it)
    for item in prange(g.P * g.H_out, nogil=True, schedule="static", num_threads=n_threads):
        p = item // g.H_out
        i = item % g.H_out
        if window_row(&g, i):
            avg_pool_window_row(&x[p, 0, 0], &y[p, i, 0], &g, i, &inv_row[0], &inv_col[0])
        elif g.W_out < SHORT_ROW:
            avg_pool_row_windows(&x[p, 0, 0], &y[p, i, 0], &g, i, &inv_row[0], &inv_col[0])
        else:
            avg_pool_row(&x[p, 0, 0], &y[p, i, 0], &g, i, &inv_row[0], &inv_col[0],
                         &taps[0, 0])


def avg_pool_backward(const floating[:, :, ::1] grad_out,  # (P, H_out, W_out)
                      floating[:, :, ::1] grad_x,          # OUT (P, H, W)
                      spec, bint count_include_pad, Py_ssize_t divisor_override, int n_threads):
    """2x2 windows that tile the input exactly (stride 2, no padding, no rows or columns left
    over): every element of grad_x written once, the planes' rows one loop across all of
    them in bands (avg_pool_grad_tiled_rows; measured, AMD EPYC, AVX2, 1 | 2 threads,
    float32, against a loop per plane: 64x256x8x8 3.7x | 3.5x faster, 64x64x16x16 2.3x |
    2.0x, 64x6x28x28 1.5x | 1.5x, 64x32x32x32 1.3x | 1.2x, 8x64x112x112 1.1x | 1.1x;
    float64 1.0-1.8x).  Else one plane per work item (a plane's windows overlap when
    stride < kernel), zeroed by its thread first (in cache for the additions) unless the
    windows tile it exactly (global pooling, other tiling windows), when every element is
    written once."""
    cdef PoolGeom g = make_geom(spec)
    cdef bint tiled = (g.stride_h == g.KH and g.stride_w == g.KW and g.pad_h == 0
                       and g.pad_w == 0 and g.H_out * g.KH == g.H and g.W_out * g.KW == g.W)
    cdef Py_ssize_t p, w
    cdef floating share
    cdef floating* gx
    cdef double[::1] inv_row, inv_col
    inv_row, inv_col = divisor_factors(&g, count_include_pad, divisor_override)
    if tiles_2x2(&g):
        with nogil:
            tiled_2x2(&grad_out[0, 0, 0], &grad_x[0, 0, 0], &g,
                      <floating> (inv_row[0] * inv_col[0]), n_threads, True)
        return
    cdef Py_ssize_t[:, ::1] taps = tap_ranges(&g, 1)
    cdef bint whole = (g.H_out == 1 and g.W_out == 1 and g.pad_h == 0 and g.pad_w == 0
                       and g.KH >= g.H and g.KW >= g.W)
    if whole:   # global pooling: each plane filled with its share (32x512x7x7 0.41 -> 0.14 ms)
        for p in prange(g.P, nogil=True, schedule="static", num_threads=n_threads):
            share = divided(grad_out[p, 0, 0], &inv_row[0], &inv_col[0], 0, 0)
            gx = &grad_x[p, 0, 0]
            for w in range(g.H * g.W):
                gx[w] = share
        return
    # overlapping windows: a window row at a time (avg_pool_grad_plane_rows)
    cdef bint rows = not (g.stride_h >= g.KH and g.stride_w >= g.KW) and g.W_out >= SHORT_ROW
    cdef floating[:, ::1] scratch = np.empty((n_threads if rows else 1, g.W_out + 2 * g.W + 2),
                                             dtype=np.float32 if floating is float else np.float64)
    for p in prange(g.P, nogil=True, schedule="static", num_threads=n_threads):
        if not tiled:
            memset(&grad_x[p, 0, 0], 0, g.H * g.W * sizeof(floating))
        if rows:
            avg_pool_grad_plane_rows(&grad_out[p, 0, 0], &grad_x[p, 0, 0], &g, &inv_row[0],
                                     &inv_col[0], &scratch[threadid(), 0],
                                     &scratch[threadid(), g.W_out],
                                     &scratch[threadid(), g.W_out + g.W])
        elif g.W_out < SHORT_ROW:
            avg_pool_grad_plane_windows(&grad_out[p, 0, 0], &grad_x[p, 0, 0], &g, &inv_row[0],
                                        &inv_col[0], tiled)
        else:
            avg_pool_grad_plane(&grad_out[p, 0, 0], &grad_x[p, 0, 0], &g, &inv_row[0],
                                &inv_col[0], &taps[0, 0])
