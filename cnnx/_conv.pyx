"""Convolution kernels (cross-correlation, NCHW), float32 and float64.

Two algorithms compute the same thing::

    y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] * x[n, g*C_in_g + c, i*S_h - P_top + u*D_h,
                                                               j*S_w - P_left + v*D_w]

(``g`` = o's group; taps outside the input count as zero padding).

* ``gemm``: for a tile of output rows of one sample and one group, gather the
  receptive fields into ``col`` (K = C_in_g*KH*KW rows, one column per output
  pixel: im2col) and multiply ``w_g (C_out_g x K) @ col`` with BLAS.  The
  backward pass uses the same tiles: ``grad_w_g += grad_y @ col^T`` and
  ``grad_col = w_g^T @ grad_y`` scattered back with col2im.  Workspace is one
  tile per thread, never an im2col buffer for the whole batch.
* ``direct``: the nested loops of the formula above, for grouped/depthwise and
  tiny-channel cases where a GEMM has nothing to chew on.

All arguments were validated by ``cnnx.functional``; nothing here raises.
Arrays are C-contiguous; outputs are allocated by the caller (marked OUT).
"""

from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

import numpy as np

from cnnx._corr_kernel cimport CORR_OB, CORR_OB_SMALL, CORR_SLACK, corr_kernel
from cnnx._kernel_utils cimport valid_range


cdef struct Geom:
    Py_ssize_t N, C_in, H, W, C_out, KH, KW
    Py_ssize_t stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w
    Py_ssize_t groups, H_out, W_out
    Py_ssize_t C_in_g, C_out_g, K, L     # per-group channels, K = C_in_g*KH*KW, L = H_out*W_out


cdef Geom make_geom(spec) except *:
    cdef Geom p
    p.N, p.C_in, p.H, p.W = spec.N, spec.C_in, spec.H, spec.W
    p.C_out, p.KH, p.KW = spec.C_out, spec.KH, spec.KW
    p.stride_h, p.stride_w = spec.stride_h, spec.stride_w
    p.pad_top, p.pad_left = spec.pad_top, spec.pad_left
    p.dilation_h, p.dilation_w = spec.dilation_h, spec.dilation_w
    p.groups, p.H_out, p.W_out = spec.groups, spec.H_out, spec.W_out
    p.C_in_g = p.C_in // p.groups
    p.C_out_g = p.C_out // p.groups
    p.K = p.C_in_g * p.KH * p.KW
    p.L = p.H_out * p.W_out
    return p


cdef inline bint is_pointwise(const Geom* p) noexcept nogil:
    """1x1 kernel, stride 1, no padding: x itself is the im2col matrix."""
    return (p.KH == 1 and p.KW == 1 and p.stride_h == 1 and p.stride_w == 1
            and p.pad_top == 0 and p.pad_left == 0 and p.H_out == p.H and p.W_out == p.W)


cdef inline void gemm(char transa, char transb, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """Column-major C = alpha*op(A) @ op(B) + beta*C through the BLAS of SciPy."""
    if floating is float:
        sgemm(&transa, &transb, &m, &n, &k, &alpha, <float*> a, &lda,
              <float*> b, &ldb, &beta, c, &ldc)
    else:
        dgemm(&transa, &transb, &m, &n, &k, &alpha, <double*> a, &lda,
              <double*> b, &ldb, &beta, c, &ldc)


# Short-row copies, zero fills and adds, inlined: im2col/col2im move rows of
# W_out values (often 10-30), where a memcpy/memset call per row costs more
# than the copy.  Plain copy loops would be turned back into memmove calls by
# the compiler, so runs are copied in fixed-size pieces (which compile to a
# few vector moves): 32 bytes at a time, then 16/8/4 for the tail.  Runs of
# 64 bytes or more go to memcpy (libc's AVX-512 copy is faster there).
cdef extern from "_corr_kernel.h":   # CNNX_VBYTES, cnnx_vec_f/d and the blocked kernels
    """
    #include <string.h>
    #define CNNX_PIECE(dst, src, bytes, nb) \
        if (bytes & nb) { memcpy(dst, src, nb); dst += nb; src += nb; }
    static inline void cnnx_copy_bytes(char *dst, const char *src, Py_ssize_t bytes) {
        if (bytes >= 64) { memcpy(dst, src, (size_t) bytes); return; }
        while (bytes >= 32) { memcpy(dst, src, 32); dst += 32; src += 32; bytes -= 32; }
        CNNX_PIECE(dst, src, bytes, 16)
        CNNX_PIECE(dst, src, bytes, 8)
        CNNX_PIECE(dst, src, bytes, 4)
    }
    static const char cnnx_zeros[32] = {0};
    static inline void cnnx_zero_bytes(char *dst, Py_ssize_t bytes) {
        const char *z;
        while (bytes >= 32) { memcpy(dst, cnnx_zeros, 32); dst += 32; bytes -= 32; }
        z = cnnx_zeros;
        CNNX_PIECE(dst, z, bytes, 16)
        z = cnnx_zeros;
        CNNX_PIECE(dst, z, bytes, 8)
        z = cnnx_zeros;
        CNNX_PIECE(dst, z, bytes, 4)
    }
    #define CNNX_ROW_OPS(T, S) \
    static inline void cnnx_copy_row_##S(T *restrict dst, const T *restrict src, \
                                         Py_ssize_t n, Py_ssize_t stride) { \
        Py_ssize_t j; \
        if (stride == 1) cnnx_copy_bytes((char *) dst, (const char *) src, n * sizeof(T)); \
        else if (stride == 2) { for (j = 0; j < n; j++) dst[j] = src[j * 2]; } \
        else { for (j = 0; j < n; j++) dst[j] = src[j * stride]; } \
    } \
    static inline void cnnx_zero_row_##S(T *dst, Py_ssize_t n) { \
        if (n > 0) cnnx_zero_bytes((char *) dst, n * sizeof(T)); \
    } \
    static inline void cnnx_add_row_##S(T *restrict dst, const T *restrict src, \
                                        Py_ssize_t n, Py_ssize_t stride) { \
        Py_ssize_t j; \
        if (stride == 1) { for (j = 0; j < n; j++) dst[j] += src[j]; } \
        else { for (j = 0; j < n; j++) dst[j * stride] += src[j]; } \
    } \
    static inline void cnnx_axpy_row_##S(T *restrict dst, Py_ssize_t dst_stride, \
                                         const T *restrict src, Py_ssize_t src_stride, \
                                         T w, Py_ssize_t n) { \
        Py_ssize_t j; \
        if (dst_stride == 1 && src_stride == 1) { for (j = 0; j < n; j++) dst[j] += w * src[j]; } \
        else { for (j = 0; j < n; j++) dst[j * dst_stride] += w * src[j * src_stride]; } \
    }
    CNNX_ROW_OPS(float, f)
    CNNX_ROW_OPS(double, d)

    /* sum_{i < n_rows, j < m} a[i*a_row + j] * b[i*b_row + j*b_step], in two vectors of
       partial sums (gcc/clang vector extensions, the target's vector width): runs of
       products that the compiler cannot vectorise as a sum without reassociating it.  A row's
       last m % PER products are the top lanes of the PER ending at m, the lanes below
       (summed already) set to zero. */
    #if defined(__GNUC__) || defined(__clang__)
    #  include <stdint.h>
    /* lane masks: the PER entries from index 32/sizeof(T) - PER + n have the top n set */
    static const int32_t cnnx_mask_f[16] = {0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1};
    static const int64_t cnnx_mask_d[8] = {0, 0, 0, 0, -1, -1, -1, -1};
    #  define CNNX_DOT_ROWS(T, S, I) \
    typedef I cnnx_ivec_##S __attribute__((vector_size(CNNX_VBYTES))); \
    static inline cnnx_vec_##S cnnx_products_##S(const T *a, const T *b, Py_ssize_t b_step) { \
        cnnx_vec_##S va, vb; int q; \
        memcpy(&va, a, sizeof va); \
        if (b_step == 1) memcpy(&vb, b, sizeof vb); \
        else for (q = 0; q < (int) (CNNX_VBYTES / sizeof(T)); q++) vb[q] = b[q * b_step]; \
        return va * vb; \
    } \
    static T cnnx_dot_rows_##S(const T *a, Py_ssize_t a_row, const T *b, Py_ssize_t b_row, \
                               Py_ssize_t b_step, Py_ssize_t n_rows, Py_ssize_t m) { \
        enum { PER = CNNX_VBYTES / sizeof(T) }; \
        cnnx_vec_##S s0 = {0}, s1 = {0}, t; \
        cnnx_ivec_##S mask; \
        Py_ssize_t i, j, k; int q; \
        T sum = 0; \
        for (i = 0; i < n_rows; i++) { \
            const T *ar = a + i * a_row, *br = b + i * b_row; \
            for (j = 0; j + 2 * PER <= m; j += 2 * PER) { \
                s0 += cnnx_products_##S(ar + j, br + j * b_step, b_step); \
                s1 += cnnx_products_##S(ar + j + PER, br + (j + PER) * b_step, b_step); \
            } \
            if (j + PER <= m) { \
                s0 += cnnx_products_##S(ar + j, br + j * b_step, b_step); \
                j += PER; \
            } \
            if (j < m && m >= PER) { \
                k = m - PER; \
                t = cnnx_products_##S(ar + k, br + k * b_step, b_step); \
                memcpy(&mask, cnnx_mask_##S + (32 / sizeof(T)) - PER + (m - j), sizeof mask); \
                s1 += (cnnx_vec_##S) ((cnnx_ivec_##S) t & mask); \
            } else { \
                for (; j < m; j++) sum += ar[j] * br[j * b_step]; \
            } \
        } \
        s0 += s1; \
        for (q = 0; q < PER; q++) sum += s0[q]; \
        return sum; \
    }
    #else
    #  define CNNX_DOT_ROWS(T, S, I) \
    static T cnnx_dot_rows_##S(const T *a, Py_ssize_t a_row, const T *b, Py_ssize_t b_row, \
                               Py_ssize_t b_step, Py_ssize_t n_rows, Py_ssize_t m) { \
        T part[8] = {0}, sum = 0; Py_ssize_t i, j; int q; \
        for (i = 0; i < n_rows; i++) \
            for (j = 0; j < m; j++) part[j % 8] += a[i * a_row + j] * b[i * b_row + j * b_step]; \
        for (q = 0; q < 8; q++) sum += part[q]; \
        return sum; \
    }
    #endif
    CNNX_DOT_ROWS(float, f, int32_t)
    CNNX_DOT_ROWS(double, d, int64_t)

    /* acc[u*KW + v] += sum_{i < n_rows, j < m} gy[i*m + j] * xp[i*Wp + u*row_step + j +
       v*col_step] for u < KH, v < KW <= 8 (a weight gradient's taps over a band of output
       rows, xp its input rows zero-padded so that every tap is inside): one pass over the
       band per kernel row u, each vector of gy loaded once for the row's KW taps (KW
       vectors of partial sums, a row's last m % PER products masked as in dot_rows); the
       band's sums added into acc (doubles). */
    #if defined(__GNUC__) || defined(__clang__)
    #  define CNNX_WGRAD_PASS(T, S) \
    static inline __attribute__((always_inline)) void cnnx_wgrad_pass_##S( \
            const T *gy, Py_ssize_t m, Py_ssize_t n_rows, const T *xr0, Py_ssize_t Wp, \
            Py_ssize_t col_step, Py_ssize_t KW, double *acc) { \
        enum { PER = CNNX_VBYTES / sizeof(T) }; \
        cnnx_vec_##S s[8], gv, t; \
        cnnx_ivec_##S mask; \
        T short_sums[8] = {0}, sum; \
        Py_ssize_t i, j, k, v; int q; \
        for (v = 0; v < KW; v++) s[v] = (cnnx_vec_##S) {0}; \
        memcpy(&mask, cnnx_mask_##S + (32 / sizeof(T)) - PER + m % PER, sizeof mask); \
        for (i = 0; i < n_rows; i++) { \
            const T *g = gy + i * m, *xr = xr0 + i * Wp; \
            for (j = 0; j + PER <= m; j += PER) { \
                memcpy(&gv, g + j, sizeof gv); \
                for (v = 0; v < KW; v++) { \
                    memcpy(&t, xr + j + v * col_step, sizeof t); \
                    s[v] += gv * t; \
                } \
            } \
            if (j < m && m >= PER) { \
                k = m - PER; \
                memcpy(&gv, g + k, sizeof gv); \
                for (v = 0; v < KW; v++) { \
                    memcpy(&t, xr + k + v * col_step, sizeof t); \
                    t = gv * t; \
                    s[v] += (cnnx_vec_##S) ((cnnx_ivec_##S) t & mask); \
                } \
            } else { \
                for (; j < m; j++) \
                    for (v = 0; v < KW; v++) \
                        short_sums[v] += g[j] * xr[j + v * col_step]; \
            } \
        } \
        for (v = 0; v < KW; v++) { \
            sum = short_sums[v]; \
            for (q = 0; q < PER; q++) sum += s[v][q]; \
            acc[v] += sum; \
        } \
    }
    #else
    #  define CNNX_WGRAD_PASS(T, S) \
    static void cnnx_wgrad_pass_##S(const T *gy, Py_ssize_t m, Py_ssize_t n_rows, \
                                    const T *xr0, Py_ssize_t Wp, Py_ssize_t col_step, \
                                    Py_ssize_t KW, double *acc) { \
        Py_ssize_t v, i, j; T sum; \
        for (v = 0; v < KW; v++) { \
            sum = 0; \
            for (i = 0; i < n_rows; i++) \
                for (j = 0; j < m; j++) \
                    sum += gy[i * m + j] * xr0[i * Wp + j + v * col_step]; \
            acc[v] += sum; \
        } \
    }
    #endif
    #define CNNX_WGRAD_ROWS(T, S) \
    CNNX_WGRAD_PASS(T, S) \
    static void cnnx_wgrad_rows_##S(const T *gy, Py_ssize_t m, Py_ssize_t n_rows, \
                                    const T *xp, Py_ssize_t Wp, Py_ssize_t row_step, \
                                    Py_ssize_t col_step, Py_ssize_t KH, Py_ssize_t KW, \
                                    double *acc) { \
        Py_ssize_t u; \
        for (u = 0; u < KH; u++) { \
            const T *xr0 = xp + u * row_step; \
            double *a = acc + u * KW; \
            switch (KW) { \
            case 1: cnnx_wgrad_pass_##S(gy, m, n_rows, xr0, Wp, col_step, 1, a); break; \
            case 2: cnnx_wgrad_pass_##S(gy, m, n_rows, xr0, Wp, col_step, 2, a); break; \
            case 3: cnnx_wgrad_pass_##S(gy, m, n_rows, xr0, Wp, col_step, 3, a); break; \
            case 5: cnnx_wgrad_pass_##S(gy, m, n_rows, xr0, Wp, col_step, 5, a); break; \
            case 7: cnnx_wgrad_pass_##S(gy, m, n_rows, xr0, Wp, col_step, 7, a); break; \
            default: cnnx_wgrad_pass_##S(gy, m, n_rows, xr0, Wp, col_step, KW, a); \
            } \
        } \
    }
    CNNX_WGRAD_ROWS(float, f)
    CNNX_WGRAD_ROWS(double, d)

    /* dst[k] += sum over taps (u, v), in that order, of w[tap] * src[k + u*row_step + v*col_step]
       for k < n, tap = u*KW + v (or KH*KW-1 minus that, ``flip``): all the taps of a kernel
       over one contiguous run, vectors of dst at a time kept in registers (gcc/clang)
       instead of one pass over dst per tap; the values from k0 on one at a time
       (cnnx_taps_scalar: the remainder, or all of them for other compilers). */
    #define CNNX_TAP(u, v) w[flip ? KH * KW - 1 - ((u) * KW + (v)) : (u) * KW + (v)]
    #define CNNX_TAPS_SCALAR(T, S) \
    static void cnnx_taps_scalar_##S(T *dst, const T *src, const T *w, int flip, Py_ssize_t KH, \
                                     Py_ssize_t KW, Py_ssize_t row_step, Py_ssize_t col_step, \
                                     Py_ssize_t k0, Py_ssize_t n) { \
        Py_ssize_t k, u, v; T s; \
        for (k = k0; k < n; k++) { \
            s = dst[k]; \
            for (u = 0; u < KH; u++) \
                for (v = 0; v < KW; v++) \
                    s += CNNX_TAP(u, v) * src[k + u * row_step + v * col_step]; \
            dst[k] = s; \
        } \
    }
    CNNX_TAPS_SCALAR(float, f)
    CNNX_TAPS_SCALAR(double, d)
    #if defined(__GNUC__) || defined(__clang__)
    /* the vectorised loops over dst (returns where they stopped); inlined with constant
       KH, KW, col_step and no flip for 3x3 kernels, so that the taps unroll and their
       weights stay in registers */
    #  define CNNX_TAPS_BODY(T, S) \
    static inline __attribute__((always_inline)) Py_ssize_t cnnx_taps_body_##S( \
            T *restrict dst, const T *restrict src, const T *w, int flip, Py_ssize_t KH, \
            Py_ssize_t KW, Py_ssize_t row_step, Py_ssize_t col_step, Py_ssize_t n) { \
        enum { PER = CNNX_VBYTES / sizeof(T) }; \
        cnnx_vec_##S a0, a1, t0, t1; \
        Py_ssize_t k = 0, u, v; \
        for (; k + 2 * PER <= n; k += 2 * PER) { \
            memcpy(&a0, dst + k, sizeof a0); \
            memcpy(&a1, dst + k + PER, sizeof a1); \
            for (u = 0; u < KH; u++) \
                for (v = 0; v < KW; v++) { \
                    const T *sp = src + k + u * row_step + v * col_step; \
                    memcpy(&t0, sp, sizeof t0); \
                    memcpy(&t1, sp + PER, sizeof t1); \
                    a0 += CNNX_TAP(u, v) * t0; \
                    a1 += CNNX_TAP(u, v) * t1; \
                } \
            memcpy(dst + k, &a0, sizeof a0); \
            memcpy(dst + k + PER, &a1, sizeof a1); \
        } \
        for (; k + PER <= n; k += PER) { \
            memcpy(&a0, dst + k, sizeof a0); \
            for (u = 0; u < KH; u++) \
                for (v = 0; v < KW; v++) { \
                    memcpy(&t0, src + k + u * row_step + v * col_step, sizeof t0); \
                    a0 += CNNX_TAP(u, v) * t0; \
                } \
            memcpy(dst + k, &a0, sizeof a0); \
        } \
        return k; \
    }
    CNNX_TAPS_BODY(float, f)
    CNNX_TAPS_BODY(double, d)
    /* measured (AMD EPYC, AVX2, 1 thread, float32, against the loops with KH, KW and flip
       left to run time): depthwise 3x3 8x64x56x56 forward 1.2-1.5x faster (2.2 -> 1.7 ms) */
    #  define CNNX_TAPS_RUN(T, S) \
    static void cnnx_taps_run_##S(T *restrict dst, const T *restrict src, const T *w, int flip, \
                                  Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t row_step, \
                                  Py_ssize_t col_step, Py_ssize_t n) { \
        T w3[9]; \
        Py_ssize_t k, t; \
        if (KH == 3 && KW == 3 && col_step == 1) { \
            for (t = 0; t < 9; t++) \
                w3[t] = w[flip ? 8 - t : t]; \
            k = cnnx_taps_body_##S(dst, src, w3, 0, 3, 3, row_step, 1, n); \
        } else { \
            k = cnnx_taps_body_##S(dst, src, w, flip, KH, KW, row_step, col_step, n); \
        } \
        cnnx_taps_scalar_##S(dst, src, w, flip, KH, KW, row_step, col_step, k, n); \
    }
    #else
    #  define CNNX_TAPS_RUN(T, S) \
    static void cnnx_taps_run_##S(T *dst, const T *src, const T *w, int flip, Py_ssize_t KH, \
                                  Py_ssize_t KW, Py_ssize_t row_step, Py_ssize_t col_step, \
                                  Py_ssize_t n) { \
        cnnx_taps_scalar_##S(dst, src, w, flip, KH, KW, row_step, col_step, 0, n); \
    }
    #endif
    CNNX_TAPS_RUN(float, f)
    CNNX_TAPS_RUN(double, d)
    """
    void cnnx_copy_row_f(float* dst, const float* src, Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    void cnnx_copy_row_d(double* dst, const double* src, Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    void cnnx_zero_row_f(float* dst, Py_ssize_t n) noexcept nogil
    void cnnx_zero_row_d(double* dst, Py_ssize_t n) noexcept nogil
    void cnnx_add_row_f(float* dst, const float* src, Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    void cnnx_add_row_d(double* dst, const double* src, Py_ssize_t n, Py_ssize_t stride) noexcept nogil
    float cnnx_dot_rows_f(const float* a, Py_ssize_t a_row, const float* b, Py_ssize_t b_row,
                          Py_ssize_t b_step, Py_ssize_t n_rows, Py_ssize_t m) noexcept nogil
    double cnnx_dot_rows_d(const double* a, Py_ssize_t a_row, const double* b, Py_ssize_t b_row,
                           Py_ssize_t b_step, Py_ssize_t n_rows, Py_ssize_t m) noexcept nogil
    void cnnx_taps_run_f(float* dst, const float* src, const float* w, int flip, Py_ssize_t KH,
                         Py_ssize_t KW, Py_ssize_t row_step, Py_ssize_t col_step,
                         Py_ssize_t n) noexcept nogil
    void cnnx_taps_run_d(double* dst, const double* src, const double* w, int flip,
                         Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t row_step,
                         Py_ssize_t col_step, Py_ssize_t n) noexcept nogil
    void cnnx_axpy_row_f(float* dst, Py_ssize_t dst_stride, const float* src,
                         Py_ssize_t src_stride, float w, Py_ssize_t n) noexcept nogil
    void cnnx_wgrad_rows_f(const float* gy, Py_ssize_t m, Py_ssize_t n_rows, const float* xp,
                           Py_ssize_t Wp, Py_ssize_t row_step, Py_ssize_t col_step,
                           Py_ssize_t KH, Py_ssize_t KW, double* acc) noexcept nogil
    void cnnx_wgrad_rows_d(const double* gy, Py_ssize_t m, Py_ssize_t n_rows, const double* xp,
                           Py_ssize_t Wp, Py_ssize_t row_step, Py_ssize_t col_step,
                           Py_ssize_t KH, Py_ssize_t KW, double* acc) noexcept nogil
    void cnnx_axpy_row_d(double* dst, Py_ssize_t dst_stride, const double* src,
                         Py_ssize_t src_stride, double w, Py_ssize_t n) noexcept nogil


cdef inline void copy_row(floating* dst, const floating* src, Py_ssize_t n,
                          Py_ssize_t stride) noexcept nogil:
    """dst[j] = src[j*stride] for j < n (no overlap)."""
    if floating is float:
        cnnx_copy_row_f(dst, src, n, stride)
    else:
        cnnx_copy_row_d(dst, src, n, stride)


cdef inline void zero_row(floating* dst, Py_ssize_t n) noexcept nogil:
    """dst[j] = 0 for j < n."""
    if floating is float:
        cnnx_zero_row_f(dst, n)
    else:
        cnnx_zero_row_d(dst, n)


cdef inline void add_row(floating* dst, const floating* src, Py_ssize_t n,
                         Py_ssize_t stride) noexcept nogil:
    """dst[j*stride] += src[j] for j < n (no overlap)."""
    if floating is float:
        cnnx_add_row_f(dst, src, n, stride)
    else:
        cnnx_add_row_d(dst, src, n, stride)


cdef inline floating dot_rows(const floating* a, Py_ssize_t a_row, const floating* b,
                             Py_ssize_t b_row, Py_ssize_t b_step, Py_ssize_t n_rows,
                             Py_ssize_t m) noexcept nogil:
    """sum_{i < n_rows, j < m} a[i*a_row + j] * b[i*b_row + j*b_step] (vector partial sums)."""
    if floating is float:
        return cnnx_dot_rows_f(a, a_row, b, b_row, b_step, n_rows, m)
    else:
        return cnnx_dot_rows_d(a, a_row, b, b_row, b_step, n_rows, m)


cdef inline void taps_run(floating* dst, const floating* src, const floating* w, bint flip,
                          const Geom* p, Py_ssize_t row_step, Py_ssize_t n) noexcept nogil:
    """dst[k] += sum_{u,v} w[tap] * src[k + u*row_step + v*D_w] for k < n, taps in order
    (tap = u*KW + v, or flipped: KH*KW-1 minus that)."""
    if floating is float:
        cnnx_taps_run_f(dst, src, w, flip, p.KH, p.KW, row_step, p.dilation_w, n)
    else:
        cnnx_taps_run_d(dst, src, w, flip, p.KH, p.KW, row_step, p.dilation_w, n)


cdef inline void wgrad_rows(const floating* gy, Py_ssize_t m, Py_ssize_t n_rows,
                            const floating* xp, Py_ssize_t Wp, Py_ssize_t row_step,
                            Py_ssize_t col_step, Py_ssize_t KH, Py_ssize_t KW,
                            double* acc) noexcept nogil:
    """acc[u*KW + v] += sum_{i, j} gy[i*m + j] * xp[i*Wp + u*row_step + j + v*col_step]."""
    if floating is float:
        cnnx_wgrad_rows_f(gy, m, n_rows, xp, Wp, row_step, col_step, KH, KW, acc)
    else:
        cnnx_wgrad_rows_d(gy, m, n_rows, xp, Wp, row_step, col_step, KH, KW, acc)


cdef inline void axpy_row(floating* dst, Py_ssize_t dst_stride, const floating* src,
                          Py_ssize_t src_stride, floating w, Py_ssize_t n) noexcept nogil:
    """dst[j*dst_stride] += w * src[j*src_stride] for j < n (no overlap)."""
    if floating is float:
        cnnx_axpy_row_f(dst, dst_stride, src, src_stride, w, n)
    else:
        cnnx_axpy_row_d(dst, dst_stride, src, src_stride, w, n)


# ---------------------------------------------------------------------------
# im2col / col2im on a tile of output rows [oh0, oh1) of one sample and group
# ---------------------------------------------------------------------------
cdef void im2col_tile(const floating* x_g, floating* col, Py_ssize_t ld, const Geom* p,
                      Py_ssize_t oh0, Py_ssize_t oh1) noexcept nogil:
    """col[(c*KH + u)*KW + v, (i-oh0)*W_out + j] = x_g[c, i*S_h - P_top + u*D_h, j*S_w - P_left + v*D_w]

    (zero where the tap falls in the padding); ``ld`` is the distance between
    rows of ``col``, so several samples can sit side by side in one matrix.
    """
    cdef Py_ssize_t c, u, v, i, j, ih, iw_off, j_lo, j_hi
    cdef floating* dst
    cdef const floating* src
    for c in range(p.C_in_g):
        for u in range(p.KH):
            for v in range(p.KW):
                iw_off = v * p.dilation_w - p.pad_left
                valid_range(iw_off, p.stride_w, p.W, p.W_out, &j_lo, &j_hi)
                dst = col + ((c * p.KH + u) * p.KW + v) * ld
                for i in range(oh0, oh1):
                    ih = i * p.stride_h - p.pad_top + u * p.dilation_h
                    if ih < 0 or ih >= p.H:
                        zero_row(dst, p.W_out)
                    else:
                        src = x_g + (c * p.H + ih) * p.W + iw_off
                        zero_row(dst, j_lo)
                        copy_row(dst + j_lo, src + j_lo * p.stride_w, j_hi - j_lo, p.stride_w)
                        zero_row(dst + j_hi, p.W_out - j_hi)
                    dst += p.W_out


cdef void col2im_tile(const floating* col, Py_ssize_t ld, floating* gx_g, const Geom* p,
                      Py_ssize_t oh0, Py_ssize_t oh1) noexcept nogil:
    """The transpose of im2col_tile: gx_g[c, ih, iw] += col[row, column] (OUT gx_g)."""
    cdef Py_ssize_t c, u, v, i, j, ih, iw_off, j_lo, j_hi
    cdef const floating* src
    cdef floating* dst
    for c in range(p.C_in_g):
        for u in range(p.KH):
            for v in range(p.KW):
                iw_off = v * p.dilation_w - p.pad_left
                valid_range(iw_off, p.stride_w, p.W, p.W_out, &j_lo, &j_hi)
                src = col + ((c * p.KH + u) * p.KW + v) * ld
                for i in range(oh0, oh1):
                    ih = i * p.stride_h - p.pad_top + u * p.dilation_h
                    if 0 <= ih < p.H:
                        dst = gx_g + (c * p.H + ih) * p.W + iw_off
                        add_row(dst + j_lo * p.stride_w, src + j_lo, j_hi - j_lo, p.stride_w)
                    src += p.W_out


cdef inline Py_ssize_t wide_width(const Geom* p) noexcept nogil:
    """Columns per output row in the 'wide' layout: the padded input width for
    stride 1, the width of one polyphase plane for a larger stride."""
    return p.W_out + (p.dilation_w * (p.KW - 1)) // p.stride_w


cdef void im2col_wide_strided_tile(const floating* x_g, floating* col, Py_ssize_t ld,
                                   const Geom* p, Py_ssize_t oh0, Py_ssize_t oh1,
                                   floating* plane) noexcept nogil:
    """im2col_wide_tile for stride > 1, through the polyphase planes of x_pad::

        Q[a, b][r, q] = x_pad[c, (oh0 + r)*S_h + a, q*S_w + b]    (a < S_h, b < S_w)

    Tap (u, v) at output (i, j) reads x_pad[c, i*S_h + u*D_h, j*S_w + v*D_w] =
    Q[a, b][i - oh0 + su, j + sv] with (su, a) = divmod(u*D_h, S_h) and
    (sv, b) = divmod(v*D_w, S_w): a stride-1 correlation on the planes, so each
    row of ``col`` is again one contiguous run, with Wq = W_out + (D_w*(KW-1))//S_w
    columns per output row.  ``plane`` holds the S_h*S_w planes of one channel
    (Rq x Wq each, Rq = rows + (D_h*(KH-1))//S_h).
    """
    cdef Py_ssize_t Wq = wide_width(p)
    cdef Py_ssize_t rows = oh1 - oh0
    cdef Py_ssize_t Rq = rows + (p.dilation_h * (p.KH - 1)) // p.stride_h
    cdef Py_ssize_t run = (rows - 1) * Wq + p.W_out
    cdef Py_ssize_t c, u, v, r, a, b, ih, q_lo, q_hi
    cdef floating* dst = col
    cdef floating* qrow
    cdef const floating* x_row
    for c in range(p.C_in_g):
        for a in range(p.stride_h):
            for b in range(p.stride_w):
                # input columns q*S_w + b - P_left inside [0, W) for q in [q_lo, q_hi)
                valid_range(b - p.pad_left, p.stride_w, p.W, Wq, &q_lo, &q_hi)
                for r in range(Rq):
                    qrow = plane + ((a * p.stride_w + b) * Rq + r) * Wq
                    ih = (oh0 + r) * p.stride_h + a - p.pad_top
                    if ih < 0 or ih >= p.H:
                        zero_row(qrow, Wq)
                    else:
                        x_row = x_g + (c * p.H + ih) * p.W + b - p.pad_left
                        zero_row(qrow, q_lo)
                        copy_row(qrow + q_lo, x_row + q_lo * p.stride_w, q_hi - q_lo, p.stride_w)
                        zero_row(qrow + q_hi, Wq - q_hi)
        for u in range(p.KH):
            a = (u * p.dilation_h) % p.stride_h
            for v in range(p.KW):
                b = (v * p.dilation_w) % p.stride_w
                copy_row(dst, plane + (a * p.stride_w + b) * Rq * Wq
                         + ((u * p.dilation_h) // p.stride_h) * Wq + (v * p.dilation_w) // p.stride_w,
                         run, 1)
                dst += ld


cdef void im2col_wide_tile(const floating* x_g, floating* col, Py_ssize_t ld, const Geom* p,
                           Py_ssize_t oh0, Py_ssize_t oh1, floating* plane) noexcept nogil:
    """im2col for stride 1 in the 'wide' layout: one column per padded-input pixel.

    With Wp = W_out + D_w*(KW-1) columns per output row (the last row cut to
    W_out), the row of ``col`` for tap (c, u, v) is ONE contiguous run of the
    zero-padded plane c, starting at row oh0 + u*D_h, column v*D_w::

        col[(c*KH + u)*KW + v, (i-oh0)*Wp + j] = x_pad[c, i + u*D_h, j + v*D_w]

    so it is copied with one long copy instead of one short copy per output
    row.  Columns j >= W_out are garbage (values of the next padded row) and
    must be dropped from the product.  ``plane`` is scratch for the padded
    rows of one channel, ((oh1-oh0-1) + D_h*(KH-1) + 1) * Wp values; it is
    not used when the tile needs no padding.  Strides > 1: im2col_wide_strided_tile.
    """
    if p.stride_h != 1 or p.stride_w != 1:
        im2col_wide_strided_tile(x_g, col, ld, p, oh0, oh1, plane)
        return
    cdef Py_ssize_t Wp = wide_width(p)
    cdef Py_ssize_t rows = oh1 - oh0
    cdef Py_ssize_t in_rows = rows + p.dilation_h * (p.KH - 1)
    cdef Py_ssize_t run = (rows - 1) * Wp + p.W_out
    cdef Py_ssize_t c, u, v, r, ih, iw_lo, iw_hi
    cdef const floating* src
    cdef floating* dst = col
    cdef bint padded = (p.pad_left != 0 or Wp != p.W or oh0 - p.pad_top < 0
                        or oh0 - p.pad_top + in_rows > p.H)
    # the input columns of a padded row: [pad_left, pad_left + W) clipped to [0, Wp)
    iw_lo = min(p.pad_left, Wp)
    iw_hi = min(p.pad_left + p.W, Wp)
    for c in range(p.C_in_g):
        if padded:
            for r in range(in_rows):
                ih = oh0 + r - p.pad_top
                if ih < 0 or ih >= p.H or iw_hi <= iw_lo:
                    zero_row(plane + r * Wp, Wp)
                else:
                    zero_row(plane + r * Wp, iw_lo)
                    copy_row(plane + r * Wp + iw_lo, x_g + (c * p.H + ih) * p.W + iw_lo - p.pad_left,
                             iw_hi - iw_lo, 1)
                    zero_row(plane + r * Wp + iw_hi, Wp - iw_hi)
            src = plane
        else:
            src = x_g + (c * p.H + oh0 - p.pad_top) * p.W
        for u in range(p.KH):
            for v in range(p.KW):
                copy_row(dst, src + u * p.dilation_h * Wp + v * p.dilation_w, run, 1)
                dst += ld


cdef void zero_wide_gaps(floating* mat, Py_ssize_t ld, Py_ssize_t n_rows, const Geom* p,
                         Py_ssize_t rows) noexcept nogil:
    """Zero the garbage columns (j >= W_out of each output row but the last) of
    ``n_rows`` rows of a wide-layout matrix tile of ``rows`` output rows."""
    cdef Py_ssize_t Wp = wide_width(p)
    cdef Py_ssize_t r, i
    if Wp == p.W_out:
        return
    for r in range(n_rows):
        for i in range(rows - 1):
            zero_row(mat + r * ld + i * Wp + p.W_out, Wp - p.W_out)


cdef void gather_grad_y_wide(const floating* gy_g, floating* dst, Py_ssize_t ld, const Geom* p,
                             Py_ssize_t oh0, Py_ssize_t oh1) noexcept nogil:
    """dst[o, (i-oh0)*Wp + j] = gy_g[o, i, j] for j < W_out, 0 in the garbage columns
    (gy_g: the C_out_g planes of one sample and group)."""
    cdef Py_ssize_t Wp = wide_width(p)
    cdef Py_ssize_t o, i
    for o in range(p.C_out_g):
        for i in range(oh0, oh1):
            copy_row(dst + o * ld + (i - oh0) * Wp, gy_g + o * p.L + i * p.W_out, p.W_out, 1)
            if i < oh1 - 1:
                zero_row(dst + o * ld + (i - oh0) * Wp + p.W_out, Wp - p.W_out)


cdef void col2im_wide_tile(const floating* col, Py_ssize_t ld, floating* gx_g, const Geom* p,
                           Py_ssize_t oh0, Py_ssize_t oh1, floating* plane) noexcept nogil:
    """The transpose of im2col_wide_tile (OUT gx_g += ...): each row of ``col``
    is added as one run into a zero-padded band of the input plane, whose
    input part is then added to gx_g.  The garbage columns of ``col`` must be
    zero (they land on real band positions)."""
    cdef Py_ssize_t Wp = wide_width(p)
    cdef Py_ssize_t rows = oh1 - oh0
    cdef Py_ssize_t in_rows = rows + p.dilation_h * (p.KH - 1)
    cdef Py_ssize_t run = (rows - 1) * Wp + p.W_out
    cdef Py_ssize_t c, u, v, r, ih
    cdef Py_ssize_t iw_lo = min(p.pad_left, Wp)
    cdef Py_ssize_t iw_hi = min(p.pad_left + p.W, Wp)
    cdef const floating* src = col
    for c in range(p.C_in_g):
        zero_row(plane, in_rows * Wp)
        for u in range(p.KH):
            for v in range(p.KW):
                add_row(plane + u * p.dilation_h * Wp + v * p.dilation_w, src, run, 1)
                src += ld
        if iw_hi > iw_lo:
            for r in range(in_rows):
                ih = oh0 + r - p.pad_top
                if 0 <= ih < p.H:
                    add_row(gx_g + (c * p.H + ih) * p.W + iw_lo - p.pad_left,
                            plane + r * Wp + iw_lo, iw_hi - iw_lo, 1)


def gemm_tiling(spec, Py_ssize_t max_elems, Py_ssize_t min_columns, bint wide=False,
                Py_ssize_t tile_multiple=1):
    """(samples per tile, output rows per tile) for the im2col tiles.

    A tile has about ``max(min_columns, max_elems / K)`` columns: wide enough
    for an efficient GEMM, small enough to stay in cache.  When one image has
    fewer than ``min_columns`` columns, a tile holds several whole images (a
    GEMM over one small image is too thin to run fast), in a multiple of
    ``tile_multiple`` tiles when there are enough images (so that no thread idles
    while another finishes); otherwise it is a band of rows of one image (also
    when a whole image would fit: gathering several images of >= min_columns
    columns measured slower, e.g. x (64,3,32,32) k3 s2: 4 images per tile 0.31 ms
    forward, 1 image 0.24).
    """
    cdef Geom p = make_geom(spec)
    cdef Py_ssize_t columns = max(min_columns, max_elems // max(p.K, 1))
    cdef Py_ssize_t width = wide_width(&p) if wide else p.W_out
    cdef Py_ssize_t L = (p.H_out - 1) * width + p.W_out
    cdef Py_ssize_t nb, n_tiles
    if L < min_columns and not is_pointwise(&p):
        nb = max(1, min(columns // L, p.N))
        # as many tiles, the samples spread evenly over them (8 samples: 4 + 4, not 5 + 3,
        # which left one of two threads idle for a quarter of the call)
        n_tiles = (p.N + nb - 1) // nb
        n_tiles = min(p.N, (n_tiles + tile_multiple - 1) // tile_multiple * tile_multiple)
        return (p.N + n_tiles - 1) // n_tiles, p.H_out
    return 1, max(1, min(columns // width, p.H_out))


# ---------------------------------------------------------------------------
# GEMM algorithm
# ---------------------------------------------------------------------------
# A tile is (group g, samples [n0, n0+nb), output rows [oh0, oh1)); either nb == 1
# (a band of rows of one sample) or the tile holds whole images (oh0=0, oh1=H_out).
# Its im2col matrix has K rows and nb*(oh1-oh0)*W_out columns, sample s's at s*L.

def forward_gemm(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                 const floating[::1] bias, bint has_bias,
                 floating[:, :, :, ::1] y,  # OUT
                 floating[:, ::1] work,     # scratch per thread: im2col tile (+ output tile if nb > 1)
                 spec, Py_ssize_t samples_per_tile, Py_ssize_t rows_per_tile, int n_threads,
                 bint wide=False):
    """y = conv2d(x, weight) + bias, one tile per work item.

    ``wide`` (stride 1 only): im2col in the wide layout (im2col_wide_tile),
    the product into a tile, then its W_out valid columns of each row to y.
    """
    cdef Geom p = make_geom(spec)
    cdef Py_ssize_t nb = samples_per_tile
    cdef Py_ssize_t n_tiles = (p.H_out + rows_per_tile - 1) // rows_per_tile
    cdef Py_ssize_t n_blocks = (p.N + nb - 1) // nb
    cdef Py_ssize_t n_items = n_blocks * p.groups * n_tiles
    cdef bint pointwise = is_pointwise(&p)
    cdef Py_ssize_t item, n0, n1, s, g, t, oh0, oh1, L_tile, ld, o, l
    cdef floating* col
    cdef floating* out
    cdef floating* y_tile
    cdef const floating* b_mat
    cdef floating beta, bo
    cdef Py_ssize_t Wp = wide_width(&p), i
    cdef floating* out_row
    if n_items == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        for item in prange(n_items, schedule="dynamic"):
            col = &work[threadid(), 0]
            t = item % n_tiles
            g = (item // n_tiles) % p.groups
            n0 = (item // (n_tiles * p.groups)) * nb
            n1 = min(n0 + nb, p.N)
            oh0 = t * rows_per_tile
            oh1 = min(oh0 + rows_per_tile, p.H_out)
            L_tile = (oh1 - oh0) * p.W_out
            ld = (n1 - n0) * L_tile
            if wide:
                L_tile = (oh1 - oh0 - 1) * Wp + p.W_out
                ld = (n1 - n0) * L_tile
                out = col + p.K * ld
                for s in range(n1 - n0):
                    im2col_wide_tile(&x[n0 + s, g * p.C_in_g, 0, 0], col + s * L_tile, ld, &p,
                                     oh0, oh1, out + p.C_out_g * ld)
                gemm(c"N", c"N", <int> ld, <int> p.C_out_g, <int> p.K,
                     1, col, <int> ld, &weight[g * p.C_out_g, 0, 0, 0], <int> p.K,
                     0, out, <int> ld)
                for s in range(n1 - n0):
                    for o in range(p.C_out_g):
                        bo = bias[g * p.C_out_g + o] if has_bias else 0
                        y_tile = &y[n0 + s, g * p.C_out_g + o, 0, 0]
                        for i in range(oh0, oh1):
                            out_row = out + o * ld + s * L_tile + (i - oh0) * Wp
                            for l in range(p.W_out):
                                y_tile[i * p.W_out + l] = out_row[l] + bo
                continue
            if pointwise:  # x itself is the im2col matrix (nb == 1 here)
                b_mat = &x[n0, g * p.C_in_g, 0, 0] + oh0 * p.W_out
                ld = p.L
            else:
                for s in range(n1 - n0):
                    im2col_tile(&x[n0 + s, g * p.C_in_g, 0, 0], col + s * L_tile, ld, &p, oh0, oh1)
                b_mat = col
            if n1 - n0 == 1:   # write straight into y (rows of length L_tile, ld L)
                y_tile = &y[n0, g * p.C_out_g, 0, 0] + oh0 * p.W_out
                beta = 0
                if has_bias:
                    beta = 1
                    for o in range(p.C_out_g):
                        for l in range(L_tile):
                            y_tile[o * p.L + l] = bias[g * p.C_out_g + o]
                # row-major y_tile (C_out_g x L_tile) = w_g (C_out_g x K) @ col (K x L_tile)
                gemm(c"N", c"N", <int> L_tile, <int> p.C_out_g, <int> p.K,
                     1, b_mat, <int> ld, &weight[g * p.C_out_g, 0, 0, 0], <int> p.K,
                     beta, y_tile, <int> p.L)
            else:              # whole images: multiply into a tile, then scatter per sample
                out = col + p.K * ld
                gemm(c"N", c"N", <int> ld, <int> p.C_out_g, <int> p.K,
                     1, b_mat, <int> ld, &weight[g * p.C_out_g, 0, 0, 0], <int> p.K,
                     0, out, <int> ld)
                for s in range(n1 - n0):
                    for o in range(p.C_out_g):
                        y_tile = &y[n0 + s, g * p.C_out_g + o, 0, 0]
                        for l in range(p.L):
                            y_tile[l] = out[o * ld + s * p.L + l] + (
                                bias[g * p.C_out_g + o] if has_bias else 0)


cdef inline void grad_weight_gemm(const floating* gy, int ld_gy, const floating* x_mat,
                                  int ld_x, Py_ssize_t ld, floating* gw, const Geom* p,
                                  bint transposed) noexcept nogil:
    """One tile's share of grad_weight (ld columns of grad_y and of im2col):
    transposed, grad_w_g^T (K x C_out_g, row-major) += col (K x ld) @ grad_y^T;
    else grad_w_g (C_out_g x K) += grad_y (C_out_g x ld) @ col^T."""
    if transposed:
        gemm(c"T", c"N", <int> p.C_out_g, <int> p.K, <int> ld,
             1, gy, ld_gy, x_mat, ld_x, 1, gw, <int> p.C_out_g)
    else:
        gemm(c"T", c"N", <int> p.K, <int> p.C_out_g, <int> ld,
             1, x_mat, ld_x, gy, ld_gy, 1, gw, <int> p.K)


cdef void sum_thread_rows(const floating* acc, Py_ssize_t n_rows, const unsigned char* used,
                          floating* gw, const Geom* p, bint transposed,
                          Py_ssize_t go0, Py_ssize_t go1) noexcept nogil:
    """gw[go, r] = sum over the used rows t of acc (in order) of acc[t][go, r], or with
    ``transposed`` of acc[t][group of go][r, go % C_out_g], for go in [go0, go1) (gw: C_out x K,
    row-major).  In 32 x 32 blocks: read transposed, a plain loop would take a cache miss per
    value once the matrices outgrow the cache (512 x 4608: 27 % of a backward pass)."""
    cdef Py_ssize_t w_size = p.C_out * p.K
    cdef Py_ssize_t b0, r0, go, r, t, first = 0, base, step = p.C_out_g if transposed else 1
    cdef const floating* row
    cdef floating* out
    while first < n_rows and not used[first]:
        first += 1
    for b0 in range(go0, go1, 32):
        for r0 in range(0, p.K, 32):
            for go in range(b0, min(b0 + 32, go1)):
                # acc[t][go, r] is acc[t][base + r*step]
                if transposed:
                    base = (go // p.C_out_g) * p.C_out_g * p.K + go % p.C_out_g
                else:
                    base = go * p.K
                out = gw + go * p.K
                if first == n_rows:
                    for r in range(r0, min(r0 + 32, p.K)):
                        out[r] = 0
                    continue
                row = acc + first * w_size + base
                for r in range(r0, min(r0 + 32, p.K)):
                    out[r] = row[r * step]
                for t in range(first + 1, n_rows):
                    if used[t]:
                        row = acc + t * w_size + base
                        for r in range(r0, min(r0 + 32, p.K)):
                            out[r] = out[r] + row[r * step]


cdef void backward_tile(const floating* grad_out, const floating* x, const floating* weight,
                        floating* grad_x, floating* gw_acc, floating* work, const Geom* p,
                        Py_ssize_t nb, Py_ssize_t rows_per_tile, Py_ssize_t item, Py_ssize_t t,
                        bint gw_transposed, bint wide) noexcept nogil:
    """Work item ``item`` (sample block, group; see backward_gemm), row tile t: its share of
    grad_weight added into ``gw_acc`` (one thread's grad_weight) and its grad_col added into
    grad_x (the input rows of the tile's receptive fields).  Arrays C-contiguous NCHW
    (weight: C_out x K); ``work``: the thread's col, grad_col and grad_y tile."""
    cdef Py_ssize_t Wp = wide_width(p)
    cdef Py_ssize_t width = Wp if wide else p.W_out
    cdef Py_ssize_t tile_size = p.K * nb * rows_per_tile * width
    cdef Py_ssize_t gy_size = p.C_out_g * nb * rows_per_tile * width
    cdef Py_ssize_t HW = p.H * p.W
    cdef Py_ssize_t g = item % p.groups
    cdef Py_ssize_t n0 = (item // p.groups) * nb
    cdef Py_ssize_t n1 = min(n0 + nb, p.N)
    cdef Py_ssize_t oh0 = t * rows_per_tile
    cdef Py_ssize_t oh1 = min(oh0 + rows_per_tile, p.H_out)
    cdef Py_ssize_t s, o, L_tile, ld
    cdef floating* col = work
    cdef floating* gcol = col + tile_size
    cdef floating* gy_t = gcol + tile_size
    cdef floating* gw = gw_acc + g * p.C_out_g * p.K
    cdef const floating* w_g = weight + g * p.C_out_g * p.K
    cdef const floating* x_mat
    cdef const floating* gy
    cdef int ld_x, ld_gy
    if wide:
        L_tile = (oh1 - oh0 - 1) * Wp + p.W_out
        ld = (n1 - n0) * L_tile
        for s in range(n1 - n0):
            gather_grad_y_wide(grad_out + ((n0 + s) * p.C_out + g * p.C_out_g) * p.L,
                               gy_t + s * L_tile, ld, p, oh0, oh1)
            im2col_wide_tile(x + ((n0 + s) * p.C_in + g * p.C_in_g) * HW, col + s * L_tile, ld,
                             p, oh0, oh1, gy_t + gy_size)
            zero_wide_gaps(col + s * L_tile, ld, p.K, p, oh1 - oh0)
        grad_weight_gemm(gy_t, <int> ld, col, <int> ld, ld, gw, p, gw_transposed)
        gemm(c"N", c"T", <int> ld, <int> p.K, <int> p.C_out_g,
             1, gy_t, <int> ld, w_g, <int> p.K, 0, gcol, <int> ld)
        for s in range(n1 - n0):
            col2im_wide_tile(gcol + s * L_tile, ld,
                             grad_x + ((n0 + s) * p.C_in + g * p.C_in_g) * HW, p, oh0, oh1,
                             gy_t + gy_size)
        return
    L_tile = (oh1 - oh0) * p.W_out
    ld = (n1 - n0) * L_tile
    if n1 - n0 == 1:
        gy = grad_out + (n0 * p.C_out + g * p.C_out_g) * p.L + oh0 * p.W_out
        ld_gy = <int> p.L
    else:  # gather the samples' grad_y side by side, like their columns
        for s in range(n1 - n0):
            for o in range(p.C_out_g):
                memcpy(gy_t + o * ld + s * p.L,
                       grad_out + ((n0 + s) * p.C_out + g * p.C_out_g + o) * p.L,
                       p.L * sizeof(floating))
        gy = gy_t
        ld_gy = <int> ld
    if is_pointwise(p):  # nb == 1 here
        x_mat = x + (n0 * p.C_in + g * p.C_in_g) * HW + oh0 * p.W_out
        ld_x = <int> p.L
    else:
        for s in range(n1 - n0):
            im2col_tile(x + ((n0 + s) * p.C_in + g * p.C_in_g) * HW, col + s * L_tile, ld,
                        p, oh0, oh1)
        x_mat = col
        ld_x = <int> ld
    grad_weight_gemm(gy, ld_gy, x_mat, ld_x, ld, gw, p, gw_transposed)
    # grad_col (K x ld) = w_g^T (K x C_out_g) @ grad_y
    if is_pointwise(p):
        gemm(c"N", c"T", <int> L_tile, <int> p.K, <int> p.C_out_g,
             1, gy, ld_gy, w_g, <int> p.K,
             0, grad_x + (n0 * p.C_in + g * p.C_in_g) * HW + oh0 * p.W_out, <int> p.L)
    else:
        gemm(c"N", c"T", <int> ld, <int> p.K, <int> p.C_out_g,
             1, gy, ld_gy, w_g, <int> p.K, 0, gcol, <int> ld)
        for s in range(n1 - n0):
            col2im_tile(gcol + s * L_tile, ld, grad_x + ((n0 + s) * p.C_in + g * p.C_in_g) * HW,
                        p, oh0, oh1)



cdef void backward_chunk(const floating* grad_out, const floating* x, const floating* weight,
                         floating* grad_x, floating* gw_acc, floating* work, const Geom* p,
                         Py_ssize_t nb, Py_ssize_t rows_per_tile, Py_ssize_t item, Py_ssize_t k,
                         Py_ssize_t c, bint gw_transposed, bint wide) noexcept nogil:
    """backward_tile for the row tiles of chunk k (c tiles) of ``item``, in order (none
    when the chunk lies past the last tile)."""
    cdef Py_ssize_t t, n_tiles = (p.H_out + rows_per_tile - 1) // rows_per_tile
    for t in range(k * c, min(k * c + c, n_tiles)):
        backward_tile(grad_out, x, weight, grad_x, gw_acc, work, p, nb, rows_per_tile, item, t,
                      gw_transposed, wide)

cdef enum:
    # backward_gemm: a sample's row tiles go in (at most about) this many chunks, in two
    # phases (even chunks, then odd), so that up to TILE_CHUNKS // 2 threads share them
    TILE_CHUNKS = 8


cdef Py_ssize_t tile_chunk(const Geom* p, Py_ssize_t rows_per_tile, Py_ssize_t n_tiles) noexcept nogil:
    """Row tiles per chunk for backward_gemm: about n_tiles / TILE_CHUNKS, and enough that
    chunks k and k + 2 of a sample never touch the same input row.  Chunk k of R output
    rows reads the input rows k*R*S - P to ((k+1)*R - 1)*S - P + D*(KH-1); chunk k + 2
    starts at (k+2)*R*S - P: apart when D*(KH-1) < (R + 1)*S."""
    cdef Py_ssize_t c = max(1, (n_tiles + TILE_CHUNKS - 1) // TILE_CHUNKS)
    while (c * rows_per_tile + 1) * p.stride_h <= p.dilation_h * (p.KH - 1):
        c += 1
    return c


def backward_tile_chunk(spec, Py_ssize_t rows_per_tile):
    """(tiles per chunk, chunks per sample) of backward_gemm for ``spec``."""
    cdef Geom p = make_geom(spec)
    cdef Py_ssize_t n_tiles = (p.H_out + rows_per_tile - 1) // rows_per_tile
    cdef Py_ssize_t c = tile_chunk(&p, rows_per_tile, n_tiles)
    return c, (n_tiles + c - 1) // c


def backward_gemm(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                  const floating[:, :, :, ::1] weight,
                  floating[:, :, :, ::1] grad_x,  # OUT, zero-filled by the caller
                  floating[:, ::1] grad_w,        # OUT, (C_out, K)
                  floating[:, ::1] grad_w_acc,    # scratch per thread: one grad_weight
                  floating[:, ::1] work,          # scratch per thread: col, grad_col, grad_y tile
                                                  # (functional._gemm_plan)
                  spec, Py_ssize_t samples_per_tile, Py_ssize_t rows_per_tile, int n_threads,
                  bint gw_transposed=True, bint wide=False, bint share_tiles=False):
    """grad_x and per-thread partial grad_weight of conv2d; one (sample block, group) per item.

    Row tiles of one sample overlap in grad_x (neighbouring receptive fields).  Each
    item walks its row tiles in chunks of consecutive tiles (tile_chunk), the even chunks
    first, then the odd ones; two even (or two odd) chunks never add into the same rows
    of grad_x, so with ``share_tiles`` (fewer items than threads: a batch-1 call) the
    threads share the even chunks of every item at once, and then the odd ones.  Either
    way each value of grad_x takes its tiles' terms in the same order, so grad_x has the
    same bits at every thread count.
    Each thread zeroes its own row of ``grad_w_acc`` and accumulates grad_weight in it;
    the rows are then summed into ``grad_w`` (in thread order: run-to-run deterministic),
    by all the threads, each over a block of its rows.

    With ``gw_transposed`` grad_weight is accumulated transposed, (K x C_out_g)
    per group, so that the GEMM has m = C_out_g and n = K: 1.2-1.7x faster than
    m = K, n = C_out_g when C_out_g fills the BLAS kernel's rows (sgemm 16 x 150 x 200:
    139 vs 82 GFLOP/s); the sum transposes it back.  Otherwise m = K.

    ``wide`` (stride 1 only; the caller checked that the weight is finite):
    col, grad_y and grad_col in the wide layout of im2col_wide_tile, with the
    garbage columns of col and grad_y zeroed so that they add nothing to
    grad_weight and give all-zero garbage columns of grad_col (finite weight).
    """
    cdef Geom p = make_geom(spec)
    cdef Py_ssize_t nb = samples_per_tile
    cdef Py_ssize_t n_tiles = (p.H_out + rows_per_tile - 1) // rows_per_tile
    cdef Py_ssize_t n_blocks = (p.N + nb - 1) // nb
    cdef Py_ssize_t n_items = n_blocks * p.groups
    cdef Py_ssize_t c = tile_chunk(&p, rows_per_tile, n_tiles)
    cdef Py_ssize_t n_chunks = (n_tiles + c - 1) // c
    cdef Py_ssize_t per_phase = (n_chunks + 1) // 2
    cdef Py_ssize_t w_size = p.C_out * p.K
    cdef Py_ssize_t item, j, k, phase, odd, tid, blk, n_rows = grad_w_acc.shape[0]
    # which rows of grad_w_acc a thread zeroed and summed into (OpenMP may run fewer threads)
    cdef unsigned char[::1] used = bytearray(max(n_rows, 1))
    if n_items == 0:
        grad_w[:, :] = 0
        return
    tid = 0   # (assigned in the parallel block; initialised for the compiler)
    # static schedule: which thread sums which items (and so the rounding of
    # grad_weight) is the same on every call, as in PyTorch
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        used[tid] = 1
        memset(&grad_w_acc[tid, 0], 0, w_size * sizeof(floating))
        if share_tiles:
            for phase in range(2):   # (each prange ends with a barrier)
                for j in prange(n_items * per_phase, schedule="static"):
                    backward_chunk(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &weight[0, 0, 0, 0],
                                   &grad_x[0, 0, 0, 0], &grad_w_acc[threadid(), 0],
                                   &work[threadid(), 0], &p, nb, rows_per_tile, j // per_phase,
                                   phase + 2 * (j % per_phase), c, gw_transposed, wide)
        else:
            for item in prange(n_items, schedule="static"):
                for odd in range(2):
                    for k in range(odd, n_chunks, 2):
                        backward_chunk(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &weight[0, 0, 0, 0],
                                       &grad_x[0, 0, 0, 0], &grad_w_acc[threadid(), 0],
                                       &work[threadid(), 0], &p, nb, rows_per_tile, item, k, c,
                                       gw_transposed, wide)
    for blk in prange((p.C_out + 31) // 32, nogil=True, schedule="static", num_threads=n_threads):
        sum_thread_rows(&grad_w_acc[0, 0], n_rows, &used[0], &grad_w[0, 0], &p, gw_transposed,
                        blk * 32, min(blk * 32 + 32, p.C_out))


# ---------------------------------------------------------------------------
# direct algorithm: the formula's loops
# ---------------------------------------------------------------------------
# Planes are summed band by band: every tap adds into a band of about this many values
# (rows of the plane summed into) while it sits in L1, rather than sweeping whole planes.
# A band sums one channel's KH*KW taps in the output's precision; when several channels
# are summed (C_in_g > 1 going forward, C_out_g > 1 for grad_x), their band sums are added
# up in double (``acc``), so that long float32 sums stay as accurate as PyTorch's.
cdef Py_ssize_t DIRECT_BAND = 2048


cdef inline void add_band_to(double* acc, floating* band, Py_ssize_t n, bint first) noexcept nogil:
    """acc[k] (+)= band[k] (= when first) for k < n, then band[k] = 0 for the next channel."""
    cdef Py_ssize_t k
    for k in range(n):
        acc[k] = band[k] if first else acc[k] + band[k]
        band[k] = 0


cdef inline void tap_accumulate(const floating* src, floating* dst, floating w, const Geom* p,
                                Py_ssize_t u, Py_ssize_t v, bint to_input,
                                Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """One kernel tap (u, v) between an input plane and an output plane, on the rows
    [r0, r1) of the plane summed into (``dst``; ``src`` is the plane read):

    forward  (to_input False): out[i, j] += w * in[i*S_h - P_top + u*D_h, j*S_w - P_left + v*D_w]
    backward (to_input True):  in[same place] += w * out[i, j]
    """
    cdef Py_ssize_t ih_off = u * p.dilation_h - p.pad_top
    cdef Py_ssize_t iw_off = v * p.dilation_w - p.pad_left
    cdef Py_ssize_t i, i_lo, i_hi, j_lo, j_hi, in_row, out_row
    if to_input:    # outputs i whose input row lands in [r0, r1)
        valid_range(ih_off - r0, p.stride_h, r1 - r0, p.H_out, &i_lo, &i_hi)
    else:           # outputs i in [r0, r1) whose input row lands in [0, H)
        valid_range(ih_off + r0 * p.stride_h, p.stride_h, p.H, r1 - r0, &i_lo, &i_hi)
        i_lo, i_hi = i_lo + r0, i_hi + r0
    valid_range(iw_off, p.stride_w, p.W, p.W_out, &j_lo, &j_hi)
    if j_hi <= j_lo:
        return
    for i in range(i_lo, i_hi):
        in_row = (i * p.stride_h + ih_off) * p.W + iw_off + j_lo * p.stride_w
        out_row = i * p.W_out + j_lo
        if to_input:
            axpy_row(dst + in_row, p.stride_w, src + out_row, 1, w, j_hi - j_lo)
        else:
            axpy_row(dst + out_row, 1, src + in_row, p.stride_w, w, j_hi - j_lo)


cdef enum:
    PADDED_MAX_SPAN = 64    # correlate_padded: kernels spanning at most this many rows and
    PADDED_MAX_W = 4096     # columns (D*(K-1)), planes at most this wide (bounded scratch)


cdef inline bint padded_fits(const Geom* p) noexcept nogil:
    """Whether correlate_padded may run this convolution: stride 1, and a padded band's
    scratch (direct_scratch) small whatever the dilation."""
    return (p.stride_h == 1 and p.stride_w == 1
            and p.KH - 1 <= PADDED_MAX_SPAN // p.dilation_h
            and p.KW - 1 <= PADDED_MAX_SPAN // p.dilation_w
            and p.W <= PADDED_MAX_W and p.W_out <= PADDED_MAX_W)


cdef inline Py_ssize_t padded_band(Py_ssize_t Wp) noexcept nogil:
    """Rows per band of the padded kernels, for rows of Wp values."""
    return max(1, DIRECT_BAND // Wp)


cdef inline Py_ssize_t padded_scratch(const Geom* p, Py_ssize_t Wp) noexcept nogil:
    """Doubles that correlate_padded (acc, ywide, xpad) uses with rows of Wp values."""
    return (3 * padded_band(Wp) + p.dilation_h * (p.KH - 1)) * Wp


cdef bint all_finite(const floating* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        if not (a[k] - a[k] == 0):     # inf - inf and NaN - NaN are NaN
            return False
    return True


cdef void direct_output_plane(const floating* x_n, const floating* weight, floating b,
                              floating* y_plane, double* acc, const Geom* p,
                              Py_ssize_t o) noexcept nogil:
    """y_plane = b + sum_{c,u,v} w[o,c,u,v] * x_n[g*C_in_g + c] shifted by tap (u, v)."""
    cdef Py_ssize_t g = o // p.C_out_g
    cdef Py_ssize_t band = max(1, DIRECT_BAND // max(p.W_out, 1))
    cdef Py_ssize_t c, u, v, k, r0, r1, n
    if padded_fits(p) and all_finite(weight + o * p.K, p.K):
        correlate_padded(x_n + g * p.C_in_g * p.H * p.W, p.C_in_g, p.H, p.W,
                         weight + o * p.K, p.KH * p.KW, False, b, y_plane, p.H_out, p.W_out,
                         p.pad_top, p.pad_left, acc, p)
        return
    r0 = 0
    while r0 < p.H_out:
        r1 = min(r0 + band, p.H_out)
        n = (r1 - r0) * p.W_out
        for k in range(n):
            y_plane[r0 * p.W_out + k] = b if p.C_in_g == 1 else 0
        for c in range(p.C_in_g):
            for u in range(p.KH):
                for v in range(p.KW):
                    tap_accumulate(x_n + (g * p.C_in_g + c) * p.H * p.W, y_plane,
                                   weight[((o * p.C_in_g + c) * p.KH + u) * p.KW + v],
                                   p, u, v, False, r0, r1)
            if p.C_in_g > 1:
                add_band_to(acc, y_plane + r0 * p.W_out, n, c == 0)
        if p.C_in_g > 1:
            for k in range(n):
                y_plane[r0 * p.W_out + k] = <floating> (b + acc[k])
        r0 = r1


cdef void copy_padded_rows(const floating* plane, Py_ssize_t H, Py_ssize_t W, floating* xpad,
                           Py_ssize_t Wp, Py_ssize_t h0, Py_ssize_t n_rows,
                           Py_ssize_t pad_left) noexcept nogil:
    """xpad row r (Wp values) = plane row h0 + r placed at column pad_left, zeros around it
    (all zeros for rows outside [0, H)); pad_left >= 0 and Wp >= pad_left + W."""
    cdef Py_ssize_t r, h
    cdef floating* row
    for r in range(n_rows):
        h = h0 + r
        row = xpad + r * Wp
        if 0 <= h < H:
            zero_row(row, pad_left)
            copy_row(row + pad_left, plane + h * W, W, 1)
            zero_row(row + pad_left + W, Wp - pad_left - W)
        else:
            zero_row(row, Wp)


cdef void correlate_padded(const floating* src, Py_ssize_t n_src, Py_ssize_t H_src,
                           Py_ssize_t W_src, const floating* w, Py_ssize_t w_step, bint flip,
                           floating b, floating* dst, Py_ssize_t H_dst, Py_ssize_t W_dst,
                           Py_ssize_t pad_top, Py_ssize_t pad_left, double* work,
                           const Geom* p) noexcept nogil:
    """dst[i, j] = b + sum_{c < n_src, u, v} w[c*w_step + tap] * src[c, i - pad_top + u*D_h,
    j - pad_left + v*D_w] (stride 1; tap = u*KW + v, or the flipped (KH-1-u)*KW + KW-1-v),
    source values outside the plane taken as zeros -- which add w * 0 = 0 for finite w.

    Each source plane's band of rows is copied into ``xpad`` with its zero padding (rows of
    Wp = W_dst + D_w*(KW-1) columns), so that the taps are one contiguous run over the
    whole band (into ``ywide``, rows of Wp values, the last Wp - W_dst of each not outputs),
    all of them at once (taps_run), instead of one short run per row and tap.  Channels summed in double when n_src > 1.
    The caller keeps the column padding non-negative: pad_left >= 0 and
    Wp - pad_left - W_src >= 0."""
    cdef Py_ssize_t Wp = W_dst + p.dilation_w * (p.KW - 1)
    cdef Py_ssize_t band = padded_band(Wp)
    cdef Py_ssize_t halo = p.dilation_h * (p.KH - 1)
    cdef double* acc = work
    cdef floating* ywide = <floating*> (work + band * Wp)
    cdef floating* xpad = <floating*> (work + 2 * band * Wp)
    cdef Py_ssize_t c, k, r0, r1, rows, rr, j
    r0 = 0
    while r0 < H_dst:
        r1 = min(r0 + band, H_dst)
        rows = r1 - r0
        for k in range(rows * Wp):
            ywide[k] = b if n_src == 1 else 0
        for c in range(n_src):
            copy_padded_rows(src + c * H_src * W_src, H_src, W_src, xpad, Wp, r0 - pad_top,
                             rows + halo, pad_left)
            taps_run(ywide, xpad, w + c * w_step, flip, p, p.dilation_h * Wp,
                     (rows - 1) * Wp + W_dst)
            if n_src > 1:
                add_band_to(acc, ywide, rows * Wp, c == 0)
        for rr in range(rows):
            for j in range(W_dst):
                if n_src == 1:
                    dst[(r0 + rr) * W_dst + j] = ywide[rr * Wp + j]
                else:
                    dst[(r0 + rr) * W_dst + j] = <floating> (b + acc[rr * Wp + j])
        r0 = r1


cdef void direct_input_grad_plane(const floating* gy_n, const floating* weight,
                                  floating* gx_plane, double* acc, const Geom* p,
                                  Py_ssize_t ci) noexcept nogil:
    """gx_plane[h, w] = sum over outputs o of ci's group and taps (u, v) landing on (h, w)
    of grad_y[o, i, j] * w[o, c, u, v]."""
    cdef Py_ssize_t g = ci // p.C_in_g
    cdef Py_ssize_t c = ci % p.C_in_g
    cdef Py_ssize_t band = max(1, DIRECT_BAND // p.W)
    cdef Py_ssize_t o, u, v, k, r0, r1, n, K_g = p.C_out_g * p.K
    # stride 1: the convolution of grad_y with the kernels flipped (and in <-> out
    # transposed), padded by D*(K-1) - P, when the group's kernels are finite and that
    # padding is not negative on the left or right (P_left, P_right <= D_w*(KW-1))
    if (padded_fits(p) and p.pad_left <= p.dilation_w * (p.KW - 1)
            and p.W + p.pad_left >= p.W_out and all_finite(weight + g * K_g, K_g)):
        correlate_padded(gy_n + g * p.C_out_g * p.L, p.C_out_g, p.H_out, p.W_out,
                         weight + g * K_g + c * p.KH * p.KW, p.K, True, 0, gx_plane, p.H, p.W,
                         p.dilation_h * (p.KH - 1) - p.pad_top,
                         p.dilation_w * (p.KW - 1) - p.pad_left, acc, p)
        return
    r0 = 0
    while r0 < p.H:
        r1 = min(r0 + band, p.H)
        n = (r1 - r0) * p.W
        zero_row(gx_plane + r0 * p.W, n)
        for o in range(g * p.C_out_g, (g + 1) * p.C_out_g):
            for u in range(p.KH):
                for v in range(p.KW):
                    tap_accumulate(gy_n + o * p.L, gx_plane,
                                   weight[((o * p.C_in_g + c) * p.KH + u) * p.KW + v],
                                   p, u, v, True, r0, r1)
            if p.C_out_g > 1:
                add_band_to(acc, gx_plane + r0 * p.W, n, o == g * p.C_out_g)
        if p.C_out_g > 1:
            for k in range(n):
                gx_plane[r0 * p.W + k] = <floating> acc[k]
        r0 = r1


cdef inline bint plane_finite(const floating* a, Py_ssize_t n) noexcept nogil:
    """all_finite without the early exit (one vectorised pass)."""
    cdef Py_ssize_t k
    cdef int bad = 0
    for k in range(n):
        bad |= not (a[k] - a[k] == 0)
    return not bad


cdef void direct_weight_grad(const floating* grad_out, const floating* x, floating* gw_oc,
                             double* acc, const Geom* p, Py_ssize_t o, Py_ssize_t c) noexcept nogil:
    """gw_oc[u, v] = sum_{n,i,j} grad_y[n, o, i, j] * x[n, g*C_in_g + c, ih, iw].

    Sample by sample, so that its two planes stay in cache for all KH*KW taps, added up
    over the samples in ``acc`` (KH*KW doubles).  Stride 1 with kernels up to 8 wide
    (padded_fits) reads the sample's input rows from zero-padded band copies, every tap one
    contiguous run (wgrad_rows: each vector of grad_y loaded once per kernel row, not once
    per tap), where the sample's grad_y plane is finite (0 * inf would add a NaN the
    formula does not have); otherwise a tap's sum over one plane (dot_rows, in the data's
    precision).  Measured (AMD EPYC, AVX2, 1 thread, float32, whole backward against the
    taps' dot_rows alone): depthwise 3x3 8x64x56x56 1.1-1.35x faster, 5x5 8x32x28x28
    1.4-1.8x."""
    cdef Py_ssize_t g = o // p.C_out_g
    cdef Py_ssize_t n, u, v, q, ih_off, iw_off, i_lo, i_hi, j_lo, j_hi, r0, rows
    cdef Py_ssize_t Wp = p.W_out + p.dilation_w * (p.KW - 1)
    cdef Py_ssize_t band = padded_band(Wp), halo = p.dilation_h * (p.KH - 1)
    cdef bint padded = padded_fits(p) and p.KW <= 8
    cdef floating* xpad = <floating*> (acc + p.KH * p.KW)
    cdef const floating* gy_plane
    cdef const floating* x_plane
    for q in range(p.KH * p.KW):
        acc[q] = 0
    for n in range(p.N):
        gy_plane = grad_out + (n * p.C_out + o) * p.L
        x_plane = x + (n * p.C_in + g * p.C_in_g + c) * p.H * p.W
        if padded and plane_finite(gy_plane, p.L):
            r0 = 0
            while r0 < p.H_out:
                rows = min(band, p.H_out - r0)
                copy_padded_rows(x_plane, p.H, p.W, xpad, Wp, r0 - p.pad_top, rows + halo,
                                 p.pad_left)
                wgrad_rows(gy_plane + r0 * p.W_out, p.W_out, rows, xpad, Wp,
                           p.dilation_h * Wp, p.dilation_w, p.KH, p.KW, acc)
                r0 += rows
            continue
        for u in range(p.KH):
            ih_off = u * p.dilation_h - p.pad_top
            valid_range(ih_off, p.stride_h, p.H, p.H_out, &i_lo, &i_hi)
            for v in range(p.KW):
                iw_off = v * p.dilation_w - p.pad_left
                valid_range(iw_off, p.stride_w, p.W, p.W_out, &j_lo, &j_hi)
                if i_hi > i_lo and j_hi > j_lo:
                    acc[u * p.KW + v] += dot_rows(
                        gy_plane + i_lo * p.W_out + j_lo, p.W_out,
                        x_plane + (i_lo * p.stride_h + ih_off) * p.W + iw_off + j_lo * p.stride_w,
                        p.stride_h * p.W, p.stride_w, i_hi - i_lo, j_hi - j_lo)
    for q in range(p.KH * p.KW):
        gw_oc[q] = <floating> acc[q]


def direct_scratch(spec):
    """Doubles of scratch per thread of forward_direct/backward_direct: a band of either
    pass (correlate_padded's three) and one grad_weight slice (with its padded band)."""
    cdef Geom p = make_geom(spec)
    cdef Py_ssize_t padded = 0, Wq = p.W_out + p.dilation_w * (p.KW - 1)
    if padded_fits(&p):     # the forward's and grad_x's padded widths
        padded = max(padded_scratch(&p, Wq), padded_scratch(&p, p.W + p.dilation_w * (p.KW - 1)),
                     p.KH * p.KW + (padded_band(Wq) + p.dilation_h * (p.KH - 1)) * Wq)
    return max(DIRECT_BAND + max(p.W_out, p.W), p.KH * p.KW, padded)


def forward_direct(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                   const floating[::1] bias, bint has_bias,
                   floating[:, :, :, ::1] y,  # OUT
                   double[:, ::1] work,       # scratch per thread: direct_scratch() doubles
                   spec, int n_threads):
    """The formula's loops; one output plane (n, o) per work item."""
    cdef Geom p = make_geom(spec)
    cdef Py_ssize_t item, n, o
    cdef floating b
    for item in prange(p.N * p.C_out, nogil=True, schedule="static", num_threads=n_threads):
        n = item // p.C_out
        o = item % p.C_out
        b = bias[o] if has_bias else 0
        direct_output_plane(&x[n, 0, 0, 0], &weight[0, 0, 0, 0], b, &y[n, o, 0, 0],
                            &work[threadid(), 0], &p, o)


def backward_direct(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] weight,
                    floating[:, :, :, ::1] grad_x,        # OUT
                    floating[:, :, :, ::1] grad_weight,   # OUT
                    double[:, ::1] work,                  # scratch per thread: direct_scratch()
                    spec, int n_threads, bint input_grad=True, bint weight_grad=True):
    """grad_x: one input plane (n, c_in) per item; grad_w: one (o, c) filter slice per item.
    (``input_grad``/``weight_grad`` False: that output is left as it is.)"""
    cdef Geom p = make_geom(spec)
    cdef Py_ssize_t item, n, ci, o, c
    cdef Py_ssize_t n_x = p.N * p.C_in if input_grad else 0
    cdef Py_ssize_t n_w = p.C_out * p.C_in_g if weight_grad else 0
    for item in prange(n_x, nogil=True, schedule="static", num_threads=n_threads):
        n = item // p.C_in
        ci = item % p.C_in
        direct_input_grad_plane(&grad_out[n, 0, 0, 0], &weight[0, 0, 0, 0], &grad_x[n, ci, 0, 0],
                                &work[threadid(), 0], &p, ci)
    for item in prange(n_w, nogil=True, schedule="static", num_threads=n_threads):
        o = item // p.C_in_g
        c = item % p.C_in_g
        direct_weight_grad(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &grad_weight[o, c, 0, 0],
                           &work[threadid(), 0], &p, o, c)


# ---------------------------------------------------------------------------
# blocked direct algorithm: several output channels x a run of output pixels in registers
# ---------------------------------------------------------------------------
# The formula once more, organised for a CPU: a band of output rows of one sample is read
# from a zero-padded copy of its input rows, split into stride phases
#
#     buf[c, a, b, r, s] = x[c, (i0 + r)*S_h + a - P_top, s*S_w + b - P_left]   (0 outside x)
#
# so that tap (c, u, v) of output (i, j) is buf[offs[t] + (i - i0)*Wq + j] with
# offs[t] = plane (c, (u*D_h) % S_h, (v*D_w) % S_w) + ((u*D_h) // S_h)*Wq + (v*D_w) // S_w:
# every tap is one contiguous run over the band, whatever the stride and dilation.  The
# kernel keeps CORR_OB (6, or 4 for a last block) output channels x 2 vectors of pixels
# in registers and adds tap after tap into them (two loads of pixels, 12 multiply-adds per
# tap).  Rows are Wq = W_out + (D_w*(KW-1)) // S_w wide, so the last Wq - W_out values of
# each row are not outputs (computed, never stored).  The input gradient of a stride-1
# convolution is the same correlation of grad_y with the kernels flipped and transposed;
# the weight gradient (correlate_weight_grad) reads the same band copies.
cdef extern from "_corr_kernel.h":
    """

    /* The weight gradient, the forward's kernel with the roles turned round:
       out[(t0 + m)*out_ld + o] += sum over the positions q = r*Wq + j (r < n_rows,
       j < W_out) of src[offs[t0 + m] + q] * gyT[(r*W_out + j)*ldo + o]
       for m < nt (at most 6) and o < 2 vectors: 6 taps x 2 vectors of output channels in
       registers, one broadcast of src per tap and position (grad_y transposed: a position's
       output channels contiguous), the sums added into ``out`` (double) at the end. */
    #if defined(__GNUC__) || defined(__clang__)
    #  define CNNX_WGRAD_FMA(m) \
        xs = sp##m[q]; a##m##0 += xs * g0; a##m##1 += xs * g1;
    #  define CNNX_WGRAD_OUT(m) \
        if (m < nt) for (k = 0; k < PER; k++) { \
            out[(t0 + m) * out_ld + k] += a##m##0[k]; \
            out[(t0 + m) * out_ld + PER + k] += a##m##1[k]; }
    #  define CNNX_CORR_GRAD(T, S) \
    __attribute__((noinline)) static void cnnx_corr_wgrad_##S( \
            const T *restrict src, const Py_ssize_t *restrict offs, Py_ssize_t t0, int nt, \
            const T *restrict gyT, Py_ssize_t ldo, Py_ssize_t n_rows, Py_ssize_t W_out, \
            Py_ssize_t Wq, double *restrict out, Py_ssize_t out_ld) { \
        enum { PER = CNNX_VBYTES / sizeof(T) }; \
        const cnnx_vec_##S zero = {0}; \
        cnnx_vec_##S a00 = zero, a01 = zero, a10 = zero, a11 = zero, a20 = zero, a21 = zero, \
                     a30 = zero, a31 = zero, a40 = zero, a41 = zero, a50 = zero, a51 = zero, \
                     g0, g1; \
        const T *sp0, *sp1, *sp2, *sp3, *sp4, *sp5; \
        Py_ssize_t r, q, k; T xs; \
        for (r = 0; r < n_rows; r++) { \
            const T *gr = gyT + r * W_out * ldo; \
            sp0 = src + offs[t0] + r * Wq; \
            sp1 = src + offs[t0 + (nt > 1)] + r * Wq; \
            sp2 = src + offs[t0 + 2 * (nt > 2)] + r * Wq; \
            sp3 = src + offs[t0 + 3 * (nt > 3)] + r * Wq; \
            sp4 = src + offs[t0 + 4 * (nt > 4)] + r * Wq; \
            sp5 = src + offs[t0 + 5 * (nt > 5)] + r * Wq; \
            for (q = 0; q < W_out; q++) { \
                CNNX_CORR_LOAD(g0, gr + q * ldo); \
                CNNX_CORR_LOAD(g1, gr + q * ldo + PER); \
                CNNX_WGRAD_FMA(0) CNNX_WGRAD_FMA(1) CNNX_WGRAD_FMA(2) \
                CNNX_WGRAD_FMA(3) CNNX_WGRAD_FMA(4) CNNX_WGRAD_FMA(5) \
            } \
        } \
        CNNX_WGRAD_OUT(0) CNNX_WGRAD_OUT(1) CNNX_WGRAD_OUT(2) \
        CNNX_WGRAD_OUT(3) CNNX_WGRAD_OUT(4) CNNX_WGRAD_OUT(5) \
    }
    #  define CNNX_WGRAD_WIDTH (2 * CNNX_VBYTES)
    #else
    #  define CNNX_CORR_GRAD(T, S) \
    static void cnnx_corr_wgrad_##S(const T *src, const Py_ssize_t *offs, Py_ssize_t t0, \
                                    int nt, const T *gyT, Py_ssize_t ldo, Py_ssize_t n_rows, \
                                    Py_ssize_t W_out, Py_ssize_t Wq, double *out, \
                                    Py_ssize_t out_ld) { \
        Py_ssize_t r, q, o; int m; T s; \
        for (m = 0; m < nt; m++) \
            for (o = 0; o < (Py_ssize_t) (CNNX_WGRAD_WIDTH / sizeof(T)); o++) { \
                s = 0; \
                for (r = 0; r < n_rows; r++) \
                    for (q = 0; q < W_out; q++) \
                        s += src[offs[t0 + m] + r * Wq + q] * gyT[(r * W_out + q) * ldo + o]; \
                out[(t0 + m) * out_ld + o] += s; \
            } \
    }
    #  define CNNX_WGRAD_WIDTH 32
    #endif
    /* output channels per call of cnnx_corr_wgrad_*: 2 vectors */
    #define CNNX_WGRAD_F ((Py_ssize_t) (CNNX_WGRAD_WIDTH / sizeof(float)))
    #define CNNX_WGRAD_D ((Py_ssize_t) (CNNX_WGRAD_WIDTH / sizeof(double)))
    CNNX_CORR_GRAD(float, f)
    CNNX_CORR_GRAD(double, d)
    """
    Py_ssize_t CNNX_WGRAD_F
    Py_ssize_t CNNX_WGRAD_D
    void cnnx_corr_wgrad_f(const float* src, const Py_ssize_t* offs, Py_ssize_t t0, int nt,
                           const float* gyT, Py_ssize_t ldo, Py_ssize_t n_rows, Py_ssize_t W_out,
                           Py_ssize_t Wq, double* out, Py_ssize_t out_ld) noexcept nogil
    void cnnx_corr_wgrad_d(const double* src, const Py_ssize_t* offs, Py_ssize_t t0, int nt,
                           const double* gyT, Py_ssize_t ldo, Py_ssize_t n_rows, Py_ssize_t W_out,
                           Py_ssize_t Wq, double* out, Py_ssize_t out_ld) noexcept nogil


# The taps of one output are summed in runs of at most this many in the registers, the
# runs added up in double: a 4096-term float32 sum in one running sum, or in runs of 256
# added up in float32, is several times less accurate than PyTorch's.
cdef Py_ssize_t CORR_TAP_RUN = 256
BLOCK, BLOCK_SMALL = CORR_OB, CORR_OB_SMALL   # see block_width and _blocked_weights


cdef struct Corr:
    # a correlation of n_src planes (H_src x W_src) into n_dst planes (H_out x W_out)
    Py_ssize_t n_src, H_src, W_src, n_dst, H_out, W_out
    Py_ssize_t KH, KW, S_h, S_w, D_h, D_w, pad_top, pad_left
    Py_ssize_t n_pa, n_pb          # stride phases used (rows, columns)
    Py_ssize_t halo_r, halo_s      # extra phase rows / columns a band reads
    Py_ssize_t Wq, band, Rb        # phase row width, output rows per band, phase rows per band
    Py_ssize_t T, n_ob             # taps per output (n_src*KH*KW), blocks of outputs
    Py_ssize_t last_w              # outputs in the last block (block_width)
    Py_ssize_t buf_size, out_ld    # scratch: band copy, one block's band of outputs
    Py_ssize_t pa[8]               # the phases used (rows, then columns); 8 >= any stride
    Py_ssize_t pb[8]               # functional._corr_band allows


cdef inline void corr_copy_band(const floating* src, const Corr* k, Py_ssize_t i0,
                                floating* buf) noexcept nogil:
    """buf[c, a, b, r, s] for the band starting at output row i0 (see above)."""
    cdef Py_ssize_t c, ia, ib, r, h, s_lo, s_hi, off_w
    cdef floating* row
    for c in range(k.n_src):
        for ia in range(k.n_pa):
            for ib in range(k.n_pb):
                off_w = k.pb[ib] - k.pad_left
                valid_range(off_w, k.S_w, k.W_src, k.Wq, &s_lo, &s_hi)
                for r in range(k.Rb):
                    row = buf + (((c * k.n_pa + ia) * k.n_pb + ib) * k.Rb + r) * k.Wq
                    h = (i0 + r) * k.S_h + k.pa[ia] - k.pad_top
                    if h < 0 or h >= k.H_src or s_hi <= s_lo:
                        zero_row(row, k.Wq)
                        continue
                    zero_row(row, s_lo)
                    copy_row(row + s_lo, src + (c * k.H_src + h) * k.W_src + s_lo * k.S_w + off_w,
                             s_hi - s_lo, k.S_w)
                    zero_row(row + s_hi, k.Wq - s_hi)
    # the slack read past the last plane (by outputs that are not stored) holds zeros:
    # the weight gradient multiplies it by grad_y's zeros, which must give 0
    zero_row(buf + k.buf_size - CORR_SLACK, CORR_SLACK)


def block_width(Py_ssize_t n_dst):
    """(blocks, outputs in the last block): outputs are computed CORR_OB (6) at a time, the
    last block CORR_OB_SMALL (4) wide when that covers what is left (16 outputs: 6 + 6 + 4,
    not 6 + 6 + 6).  Block b's weights start at b*CORR_OB*T (see _blocked_weights)."""
    cdef Py_ssize_t n_ob = (n_dst + CORR_OB - 1) // CORR_OB, rest = n_dst % CORR_OB
    return n_ob, (CORR_OB_SMALL if 0 < rest <= CORR_OB_SMALL else CORR_OB)


cdef inline void corr_block(const floating* buf, const Py_ssize_t* offs, const floating* wb,
                            Py_ssize_t width, floating* out, double* acc, const Corr* k,
                            Py_ssize_t n_pos) noexcept nogil:
    """out[o*out_ld + q] = sum_t wb[t*width + o] * buf[offs[t] + q] for o < width (6 or 4)
    and q < n_pos, the taps in runs of CORR_TAP_RUN, added up in ``acc`` (width*out_ld
    doubles) when there are several."""
    cdef Py_ssize_t t0 = 0, t1, m, o, q
    cdef Py_ssize_t n_runs = (k.T + CORR_TAP_RUN - 1) // CORR_TAP_RUN
    cdef Py_ssize_t run = (k.T + n_runs - 1) // n_runs
    while t0 < k.T:
        t1 = min(t0 + run, k.T)
        corr_kernel(<int> width, buf, offs, t0, t1, wb, out, k.out_ld, n_pos)
        if t0 > 0 or t1 < k.T:
            for o in range(width):
                m = o * k.out_ld
                for q in range(m, m + n_pos):
                    acc[q] = out[q] if t0 == 0 else acc[q] + out[q]
        t0 = t1
    if k.T > CORR_TAP_RUN:
        for o in range(width):
            m = o * k.out_ld
            for q in range(m, m + n_pos):
                out[q] = <floating> acc[q]


cdef void corr_band(const floating* src, const floating* wblk, const Py_ssize_t* offs,
                    const floating* bias, floating* dst, const Corr* k, Py_ssize_t i0,
                    double* work) noexcept nogil:
    """dst[o, i, j] = bias[o] + the correlation, for the output rows [i0, i0 + band) of
    one sample's planes (bias may be NULL); ``work``: blocked_workspace() doubles."""
    cdef Py_ssize_t i1 = min(i0 + k.band, k.H_out)
    cdef Py_ssize_t n_pos = (i1 - i0 - 1) * k.Wq + k.W_out
    cdef double* acc = work
    cdef floating* buf = <floating*> (work + CORR_OB * k.out_ld)
    cdef floating* out = buf + k.buf_size
    cdef Py_ssize_t ob, o, oo, i, j, width
    cdef floating b
    cdef const floating* row
    corr_copy_band(src, k, i0, buf)
    for ob in range(k.n_ob):
        width = k.last_w if ob == k.n_ob - 1 else CORR_OB
        corr_block(buf, offs, wblk + ob * k.T * CORR_OB, width, out, acc, k, n_pos)
        for oo in range(min(width, k.n_dst - ob * CORR_OB)):
            o = ob * CORR_OB + oo
            b = bias[o] if bias != NULL else 0
            for i in range(i0, i1):
                row = out + oo * k.out_ld + (i - i0) * k.Wq
                for j in range(k.W_out):
                    dst[(o * k.H_out + i) * k.W_out + j] = row[j] + b


cdef Corr make_corr(Py_ssize_t n_src, Py_ssize_t H_src, Py_ssize_t W_src, Py_ssize_t n_dst,
                    Py_ssize_t H_out, Py_ssize_t W_out, Py_ssize_t KH, Py_ssize_t KW,
                    Py_ssize_t S_h, Py_ssize_t S_w, Py_ssize_t D_h, Py_ssize_t D_w,
                    Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t band):
    """The geometry of a blocked correlation (strides at most 8: functional._corr_band)."""
    cdef Corr k
    cdef Py_ssize_t a, u
    k.n_src, k.H_src, k.W_src, k.n_dst, k.H_out, k.W_out = n_src, H_src, W_src, n_dst, H_out, W_out
    k.KH, k.KW, k.S_h, k.S_w, k.D_h, k.D_w = KH, KW, S_h, S_w, D_h, D_w
    k.pad_top, k.pad_left = pad_top, pad_left
    k.n_pa = 0
    for a in range(S_h):          # the row phases some tap falls in
        for u in range(KH):
            if (u * D_h) % S_h == a:
                k.pa[k.n_pa] = a
                k.n_pa += 1
                break
    k.n_pb = 0
    for a in range(S_w):
        for u in range(KW):
            if (u * D_w) % S_w == a:
                k.pb[k.n_pb] = a
                k.n_pb += 1
                break
    k.halo_r = (D_h * (KH - 1)) // S_h
    k.halo_s = (D_w * (KW - 1)) // S_w
    k.Wq = W_out + k.halo_s
    k.band = max(1, min(band, H_out))
    k.Rb = k.band + k.halo_r
    k.T = n_src * KH * KW
    k.n_ob, k.last_w = block_width(n_dst)
    k.buf_size = n_src * k.n_pa * k.n_pb * k.Rb * k.Wq + CORR_SLACK
    k.out_ld = k.band * k.Wq + CORR_SLACK
    return k


cdef void corr_offsets(const Corr* k, Py_ssize_t* offs) noexcept nogil:
    """offs[t] of tap t = (c*KH + u)*KW + v (see above)."""
    cdef Py_ssize_t c, u, v, ia, ib
    for c in range(k.n_src):
        for u in range(k.KH):
            ia = 0
            while k.pa[ia] != (u * k.D_h) % k.S_h:
                ia += 1
            for v in range(k.KW):
                ib = 0
                while k.pb[ib] != (v * k.D_w) % k.S_w:
                    ib += 1
                offs[(c * k.KH + u) * k.KW + v] = (
                    ((c * k.n_pa + ia) * k.n_pb + ib) * k.Rb * k.Wq
                    + ((u * k.D_h) // k.S_h) * k.Wq + (v * k.D_w) // k.S_w)


def blocked_workspace(Py_ssize_t n_src, Py_ssize_t H_src, Py_ssize_t W_src, Py_ssize_t n_dst,
                      Py_ssize_t H_out, Py_ssize_t W_out, Py_ssize_t KH, Py_ssize_t KW,
                      Py_ssize_t S_h, Py_ssize_t S_w, Py_ssize_t D_h, Py_ssize_t D_w,
                      Py_ssize_t band):
    """Doubles of scratch per thread that ``correlate`` and ``correlate_weight_grad`` need:
    the sums of one output block in double, a band copy and one block's band of outputs
    (in the data's type, float32 taking half a double)."""
    cdef Corr k = make_corr(n_src, H_src, W_src, n_dst, H_out, W_out, KH, KW, S_h, S_w,
                            D_h, D_w, 0, 0, band)
    return CORR_OB * k.out_ld + k.buf_size + CORR_OB * k.out_ld


def correlate(const floating[:, :, :, ::1] src,     # (N, groups*n_src, H_src, W_src)
              const floating[:, ::1] wblk,          # (groups, blocks), see block_width
              const floating[::1] bias, bint has_bias,
              floating[:, :, :, ::1] dst,           # OUT (N, groups*n_dst, H_out, W_out)
              double[:, ::1] work,                  # scratch per thread: blocked_workspace()
              Py_ssize_t groups, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t S_h, Py_ssize_t S_w,
              Py_ssize_t D_h, Py_ssize_t D_w, Py_ssize_t pad_top, Py_ssize_t pad_left,
              Py_ssize_t band, int n_threads):
    """dst[n, g*n_dst + o, i, j] = bias + sum_{c, u, v} w[g, o, (c*KH + u)*KW + v]
    * src[n, g*n_src + c, i*S_h - pad_top + u*D_h, j*S_w - pad_left + v*D_w] (zero outside
    src), one band of output rows of one sample and group per work item; w blocked in
    wblk[g]: block b (outputs b*6 on, see block_width) at b*6*T, tap t's weights of its
    outputs at t*width.

    conv2d forward is this with the weight blocked as wblk; the input gradient of a stride-1
    convolution is this on grad_y, with the kernels flipped and transposed and the padding
    D*(K-1) - P (cnnx.functional._blocked_weights)."""
    cdef Py_ssize_t N = src.shape[0]
    cdef Py_ssize_t n_src = src.shape[1] // groups, n_dst = dst.shape[1] // groups
    cdef Corr k = make_corr(n_src, src.shape[2], src.shape[3], n_dst, dst.shape[2],
                            dst.shape[3], KH, KW, S_h, S_w, D_h, D_w, pad_top, pad_left, band)
    cdef Py_ssize_t n_bands = (k.H_out + k.band - 1) // k.band
    cdef Py_ssize_t item, n, g, i0
    cdef Py_ssize_t[::1] offs = np.empty(max(k.T, 1), dtype=np.intp)
    corr_offsets(&k, &offs[0])
    if N * groups * n_bands == 0 or k.W_out == 0:
        return
    for item in prange(N * groups * n_bands, nogil=True, schedule="static",
                       num_threads=n_threads):
        n = item // (groups * n_bands)
        g = (item // n_bands) % groups
        i0 = (item % n_bands) * k.band
        corr_band(&src[n, g * n_src, 0, 0], &wblk[g, 0], &offs[0],
                  &bias[g * n_dst] if has_bias else NULL, &dst[n, g * n_dst, 0, 0], &k, i0,
                  &work[threadid(), 0])


cdef enum:
    WGRAD_TAPS = 6      # taps per cnnx_corr_wgrad call
    WGRAD_PAD = 16      # output channels padded to a multiple of this (every build's width)


cdef void corr_gather_grad(const floating* gy, const Corr* k, Py_ssize_t i0, Py_ssize_t ldo,
                           floating* gyT) noexcept nogil:
    """gyT[((i - i0)*W_out + j)*ldo + o] = gy[o, i, j] for the band's rows, zero for the
    outputs o in [n_dst, ldo): grad_y transposed, a position's output channels contiguous.
    Eight planes at a time, 64 positions at a time: eight streams that the hardware
    prefetchers follow (one stream per output channel was too many), writes that stay in L1."""
    cdef Py_ssize_t o, o0, o1, q, q0, q1, i1 = min(i0 + k.band, k.H_out)
    cdef Py_ssize_t n_q = (i1 - i0) * k.W_out
    cdef const floating* plane
    for q in range(n_q):
        for o in range(k.n_dst, ldo):
            gyT[q * ldo + o] = 0
    for o0 in range(0, k.n_dst, 8):
        o1 = min(o0 + 8, k.n_dst)
        for q0 in range(0, n_q, 64):
            q1 = min(q0 + 64, n_q)
            for o in range(o0, o1):
                plane = gy + (o * k.H_out + i0) * k.W_out
                for q in range(q0, q1):
                    gyT[q * ldo + o] = plane[q]


def weight_grad_workspace(Py_ssize_t n_src, Py_ssize_t H_src, Py_ssize_t W_src,
                          Py_ssize_t n_dst, Py_ssize_t H_out, Py_ssize_t W_out, Py_ssize_t KH,
                          Py_ssize_t KW, Py_ssize_t S_h, Py_ssize_t S_w, Py_ssize_t D_h,
                          Py_ssize_t D_w, Py_ssize_t band):
    """Doubles of scratch per thread for ``correlate_weight_grad``: a band copy and the
    band's grad_y transposed (in the data's type, float32 taking half a double)."""
    cdef Corr k = make_corr(n_src, H_src, W_src, n_dst, H_out, W_out, KH, KW, S_h, S_w,
                            D_h, D_w, 0, 0, band)
    return k.buf_size + k.band * W_out * ((n_dst + WGRAD_PAD - 1) // WGRAD_PAD * WGRAD_PAD)


def correlate_weight_grad(const floating[:, :, :, ::1] src,   # (N, groups*n_src, H_src, W_src)
                          const floating[:, :, :, ::1] gy,    # (N, groups*n_dst, H_out, W_out)
                          double[:, ::1] partial,             # OUT (n_runs, groups*T*n_pad)
                          double[:, ::1] work,                # scratch per thread: weight_grad_workspace()
                          Py_ssize_t groups, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t S_h,
                          Py_ssize_t S_w, Py_ssize_t D_h, Py_ssize_t D_w, Py_ssize_t pad_top,
                          Py_ssize_t pad_left, Py_ssize_t band, int n_threads):
    """The weight gradient of ``correlate`` (for a finite gy: the copies' zero padding is
    multiplied by it), transposed:

        partial[r, (g*T + (c*KH + u)*KW + v)*n_pad + o] = sum over run r of
            gy[n, g*n_dst + o, i, j] * src[n, g*n_src + c, i*S_h - pad_top + u*D_h, ...]

    with n_pad = n_dst rounded up to a multiple of WGRAD_PAD (16; the rest written, and
    meaningless): the (sample, band) pairs are split into n_runs runs, in order, each summed
    in double into its own row, so that the sum over the runs (the caller's) is the same
    whatever the thread count."""
    cdef Py_ssize_t N = src.shape[0]
    cdef Py_ssize_t n_src = src.shape[1] // groups, n_dst = gy.shape[1] // groups
    cdef Corr k = make_corr(n_src, src.shape[2], src.shape[3], n_dst, gy.shape[2],
                            gy.shape[3], KH, KW, S_h, S_w, D_h, D_w, pad_top, pad_left, band)
    cdef Py_ssize_t n_bands = (k.H_out + k.band - 1) // k.band
    cdef Py_ssize_t n_pairs = N * n_bands, n_runs = partial.shape[0]
    cdef Py_ssize_t ldo = (n_dst + WGRAD_PAD - 1) // WGRAD_PAD * WGRAD_PAD
    cdef Py_ssize_t width = CNNX_WGRAD_F if floating is float else CNNX_WGRAD_D
    cdef Py_ssize_t run, pair, n, g, i0, i1, ob, m, g_size = k.T * ldo
    cdef Py_ssize_t[::1] offs = np.empty(max(k.T, 1), dtype=np.intp)
    cdef floating* buf
    cdef floating* gyT
    cdef double* acc
    corr_offsets(&k, &offs[0])
    for run in prange(n_runs, nogil=True, schedule="static", num_threads=n_threads):
        acc = &partial[run, 0]
        buf = <floating*> &work[threadid(), 0]
        gyT = buf + k.buf_size
        for m in range(groups * g_size):
            acc[m] = 0
        if k.W_out == 0:
            continue
        for pair in range(run * n_pairs // n_runs, (run + 1) * n_pairs // n_runs):
            n = pair // n_bands
            i0 = (pair % n_bands) * k.band
            i1 = min(i0 + k.band, k.H_out)
            for g in range(groups):
                corr_copy_band(&src[n, g * n_src, 0, 0], &k, i0, buf)
                corr_gather_grad(&gy[n, g * n_dst, 0, 0], &k, i0, ldo, gyT)
                for ob in range((n_dst + width - 1) // width):
                    for m in range(0, k.T, 6):   # WGRAD_TAPS at a time
                        if floating is float:
                            cnnx_corr_wgrad_f(buf, &offs[0], m, min(WGRAD_TAPS, k.T - m),
                                              gyT + ob * width, ldo, i1 - i0, k.W_out, k.Wq,
                                              acc + g * g_size + ob * width, ldo)
                        else:
                            cnnx_corr_wgrad_d(buf, &offs[0], m, min(WGRAD_TAPS, k.T - m),
                                              gyT + ob * width, ldo, i1 - i0, k.W_out, k.Wq,
                                              acc + g * g_size + ob * width, ldo)
