# Small helpers shared by the kernels (inlined into each extension).

cdef inline void valid_range(Py_ssize_t offset, Py_ssize_t step, Py_ssize_t size,
                             Py_ssize_t count, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """The indices t in [0, count) with 0 <= offset + t*step < size are [lo, hi).

    ``step`` > 0.  Used for every "which taps/outputs fall inside the input"
    question: output columns of a kernel tap (step = stride) and kernel taps of
    a pooling window (step = dilation).
    """
    cdef Py_ssize_t a, b
    if step == 1:               # the common case, without the divisions
        a = max(-offset, 0)
        b = max(size - offset, 0)
    else:
        if offset >= 0:
            a = 0
        else:
            a = (-offset + step - 1) // step
        if size - 1 - offset < 0:
            b = 0
        else:
            b = (size - 1 - offset) // step + 1
    if b > count:
        b = count
    if a > count:
        a = count
    if b < a:
        b = a
    lo[0] = a
    hi[0] = b


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define cnnx_prefetch(p) __builtin_prefetch((const void *)(p), 0, 3)
    #else
    #define cnnx_prefetch(p) ((void)(p))
    #endif
    """
    # a hint to fetch the cache line holding *p (never faults; callers keep p inside
    # the array all the same)
    void cnnx_prefetch(const void* p) noexcept nogil


cdef inline void prefetch_rows(const void* plane, Py_ssize_t itemsize, Py_ssize_t H,
                               Py_ssize_t W, Py_ssize_t h0, Py_ssize_t n_rows) noexcept nogil:
    """Prefetch the cache lines of rows h0 .. h0+n_rows-1 of an H x W plane (those inside
    [0, H)): for short runs of rows that the hardware prefetchers would not see coming."""
    cdef Py_ssize_t h_lo = max(h0, 0), h_hi = min(h0 + n_rows, H), k
    cdef const char* start = <const char*> plane + h_lo * W * itemsize
    cdef Py_ssize_t n_bytes = (h_hi - h_lo) * W * itemsize
    if n_bytes <= 0:
        return
    for k in range(0, n_bytes, 64):
        cnnx_prefetch(start + k)
    cnnx_prefetch(start + n_bytes - 1)
