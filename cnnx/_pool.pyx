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
from cython.parallel cimport prange
from libc.math cimport INFINITY

from cnnx._kernel_utils cimport valid_range


cdef struct PoolGeom:
    Py_ssize_t P, H, W, KH, KW, stride_h, stride_w, pad_h, pad_w
    Py_ssize_t dilation_h, dilation_w, H_out, W_out


cdef PoolGeom make_geom(spec) except *:
    cdef PoolGeom g
    g.P = spec.N * spec.C
    g.H, g.W, g.KH, g.KW = spec.H, spec.W, spec.KH, spec.KW
    g.stride_h, g.stride_w = spec.stride_h, spec.stride_w
    g.pad_h, g.pad_w = spec.pad_h, spec.pad_w
    g.dilation_h, g.dilation_w = spec.dilation_h, spec.dilation_w
    g.H_out, g.W_out = spec.H_out, spec.W_out
    return g


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------
cdef inline void max_pool_row(const floating* x_plane, floating* y_row, long long* idx_row,
                              const PoolGeom* g, Py_ssize_t i) noexcept nogil:
    """One output row i of one plane."""
    cdef Py_ssize_t h0 = i * g.stride_h - g.pad_h
    cdef Py_ssize_t u_lo, u_hi, v_lo, v_hi, u, v, j, w0, ih, iw, best_idx
    cdef floating best, val
    cdef const floating* x_row
    valid_range(h0, g.dilation_h, g.H, g.KH, &u_lo, &u_hi)
    for j in range(g.W_out):
        w0 = j * g.stride_w - g.pad_w
        valid_range(w0, g.dilation_w, g.W, g.KW, &v_lo, &v_hi)
        best = -INFINITY
        best_idx = (h0 + u_lo * g.dilation_h) * g.W + w0 + v_lo * g.dilation_w
        for u in range(u_lo, u_hi):
            ih = h0 + u * g.dilation_h
            x_row = x_plane + ih * g.W
            for v in range(v_lo, v_hi):
                iw = w0 + v * g.dilation_w
                val = x_row[iw]
                if val > best or val != val:  # '!=' is the NaN test
                    best = val
                    best_idx = ih * g.W + iw
        y_row[j] = best
        idx_row[j] = best_idx


def max_pool_forward(const floating[:, :, ::1] x,   # (P, H, W)
                     floating[:, :, ::1] y,         # OUT (P, H_out, W_out)
                     long long[:, :, ::1] indices,  # OUT (P, H_out, W_out)
                     spec, int n_threads):
    """One (plane, output row) per work item, so even a single plane uses every thread."""
    cdef PoolGeom g = make_geom(spec)
    cdef Py_ssize_t item, p, i
    for item in prange(g.P * g.H_out, nogil=True, schedule="static", num_threads=n_threads):
        p = item // g.H_out
        i = item % g.H_out
        max_pool_row(&x[p, 0, 0], &y[p, i, 0], &indices[p, i, 0], &g, i)


def max_pool_backward(const floating[:, ::1] grad_out,     # (P, H_out*W_out)
                      const long long[:, ::1] indices,     # (P, H_out*W_out), each in [0, H*W)
                      floating[:, ::1] grad_x,             # OUT, zero-filled (P, H*W)
                      int n_threads):
    """grad_x[p, indices[p, k]] += grad_out[p, k]; one plane per work item."""
    cdef Py_ssize_t P = grad_out.shape[0], L = grad_out.shape[1]
    cdef Py_ssize_t p, k
    cdef floating* gx
    cdef const floating* gy
    cdef const long long* idx
    for p in prange(P, nogil=True, schedule="static", num_threads=n_threads):
        gx = &grad_x[p, 0]
        gy = &grad_out[p, 0]
        idx = &indices[p, 0]
        for k in range(L):
            gx[idx[k]] += gy[k]


# ---------------------------------------------------------------------------
# average pooling
# ---------------------------------------------------------------------------
cdef inline void avg_window(const PoolGeom* g, Py_ssize_t i, Py_ssize_t j,
                            bint count_include_pad, Py_ssize_t divisor_override,
                            Py_ssize_t* h0, Py_ssize_t* h1, Py_ssize_t* w0, Py_ssize_t* w1,
                            Py_ssize_t* divisor) noexcept nogil:
    """The clipped window [h0, h1) x [w0, w1) of output (i, j) and its divisor."""
    cdef Py_ssize_t hs = i * g.stride_h - g.pad_h
    cdef Py_ssize_t ws = j * g.stride_w - g.pad_w
    cdef Py_ssize_t he = min(hs + g.KH, g.H + g.pad_h)
    cdef Py_ssize_t we = min(ws + g.KW, g.W + g.pad_w)
    cdef Py_ssize_t pool_size = (he - hs) * (we - ws)
    hs = max(hs, 0)
    ws = max(ws, 0)
    he = min(he, g.H)
    we = min(we, g.W)
    if divisor_override != 0:
        divisor[0] = divisor_override
    elif count_include_pad:
        divisor[0] = pool_size
    else:
        divisor[0] = (he - hs) * (we - ws)
    h0[0] = hs
    h1[0] = he
    w0[0] = ws
    w1[0] = we


cdef void avg_pool_row(const floating* x_plane, floating* y_row, const PoolGeom* g,
                       Py_ssize_t i, bint count_include_pad,
                       Py_ssize_t divisor_override) noexcept nogil:
    """One output row i of one plane."""
    cdef Py_ssize_t j, h0, h1, w0, w1, divisor, ih, iw
    cdef floating total
    for j in range(g.W_out):
        avg_window(g, i, j, count_include_pad, divisor_override, &h0, &h1, &w0, &w1, &divisor)
        if h0 >= h1 or w0 >= w1:
            y_row[j] = 0
            continue
        total = 0
        for ih in range(h0, h1):
            for iw in range(w0, w1):
                total += x_plane[ih * g.W + iw]
        y_row[j] = total / divisor


cdef void avg_pool_grad_plane(const floating* gy_plane, floating* gx_plane, const PoolGeom* g,
                              bint count_include_pad, Py_ssize_t divisor_override) noexcept nogil:
    """gx_plane[window of (i, j)] += gy_plane[i, j] / divisor (gx_plane zero-filled)."""
    cdef Py_ssize_t i, j, h0, h1, w0, w1, divisor, ih, iw
    cdef floating share
    for i in range(g.H_out):
        for j in range(g.W_out):
            avg_window(g, i, j, count_include_pad, divisor_override, &h0, &h1, &w0, &w1, &divisor)
            if h0 >= h1 or w0 >= w1:
                continue
            share = gy_plane[i * g.W_out + j] / divisor
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    gx_plane[ih * g.W + iw] += share


def avg_pool_forward(const floating[:, :, ::1] x,  # (P, H, W)
                     floating[:, :, ::1] y,        # OUT (P, H_out, W_out)
                     spec, bint count_include_pad, Py_ssize_t divisor_override, int n_threads):
    """One (plane, output row) per work item."""
    cdef PoolGeom g = make_geom(spec)
    cdef Py_ssize_t item, p, i
    for item in prange(g.P * g.H_out, nogil=True, schedule="static", num_threads=n_threads):
        p = item // g.H_out
        i = item % g.H_out
        avg_pool_row(&x[p, 0, 0], &y[p, i, 0], &g, i, count_include_pad, divisor_override)


def avg_pool_backward(const floating[:, :, ::1] grad_out,  # (P, H_out, W_out)
                      floating[:, :, ::1] grad_x,          # OUT, zero-filled (P, H, W)
                      spec, bint count_include_pad, Py_ssize_t divisor_override, int n_threads):
    """One plane per work item."""
    cdef PoolGeom g = make_geom(spec)
    cdef Py_ssize_t p
    for p in prange(g.P, nogil=True, schedule="static", num_threads=n_threads):
        avg_pool_grad_plane(&grad_out[p, 0, 0], &grad_x[p, 0, 0], &g, count_include_pad,
                            divisor_override)
