# The register-blocked correlation kernel of _corr_kernel.h, for the extensions that call it
# (_conv.pyx: the blocked direct convolution; _winograd.pyx: the Winograd-domain products).

from cython cimport floating

cdef extern from "_corr_kernel.h":
    enum:
        CORR_OB "CNNX_CORR_OB"
        CORR_OB_SMALL "CNNX_CORR_OB_SMALL"
        CORR_SLACK "CNNX_CORR_SLACK"
    # dst[o*ld + q] = sum_{t0 <= t < t1} wb[t*width + o] * src[offs[t] + q], o < width (6 or
    # 4), q < n_pos rounded up to 2 vectors (see _corr_kernel.h)
    void cnnx_corr_block_f(int width, const float* src, const Py_ssize_t* offs,
                           Py_ssize_t t0, Py_ssize_t t1, const float* wb, float* dst,
                           Py_ssize_t ld, Py_ssize_t n_pos) noexcept nogil
    void cnnx_corr_block_d(int width, const double* src, const Py_ssize_t* offs,
                           Py_ssize_t t0, Py_ssize_t t1, const double* wb, double* dst,
                           Py_ssize_t ld, Py_ssize_t n_pos) noexcept nogil


cdef inline void corr_kernel(int width, const floating* src, const Py_ssize_t* offs,
                             Py_ssize_t t0, Py_ssize_t t1, const floating* wb, floating* dst,
                             Py_ssize_t ld, Py_ssize_t n_pos) noexcept nogil:
    """cnnx_corr_block_f or _d, for the data's type."""
    if floating is float:
        cnnx_corr_block_f(width, src, offs, t0, t1, wb, dst, ld, n_pos)
    else:
        cnnx_corr_block_d(width, src, offs, t0, t1, wb, dst, ld, n_pos)
