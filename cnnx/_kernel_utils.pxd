# Small helpers shared by the kernels (inlined into each extension).

cdef inline void valid_range(Py_ssize_t offset, Py_ssize_t step, Py_ssize_t size,
                             Py_ssize_t count, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """The indices t in [0, count) with 0 <= offset + t*step < size are [lo, hi).

    ``step`` > 0.  Used for every "which taps/outputs fall inside the input"
    question: output columns of a kernel tap (step = stride) and kernel taps of
    a pooling window (step = dilation).
    """
    cdef Py_ssize_t a, b
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
