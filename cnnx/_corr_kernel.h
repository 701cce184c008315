/* The register-blocked correlation kernel shared by cnnx/_conv.pyx (the blocked direct
   convolution, _conv.correlate) and cnnx/_winograd.pyx (the products of the Winograd
   domain, M[xi] = U[xi] V[xi]): one implementation, included by both extensions (and
   compiled with each one's flags: -mavx2 -mfma in the AVX2 builds). */
#ifndef CNNX_CORR_KERNEL_H
#define CNNX_CORR_KERNEL_H
#include <string.h>
#include <Python.h>

#if defined(__GNUC__) || defined(__clang__)
#  if defined(__AVX__)
#    define CNNX_VBYTES 32
#  else
#    define CNNX_VBYTES 16
#  endif
/* one vector register of floats / doubles (gcc/clang vector extensions) */
typedef float cnnx_vec_f __attribute__((vector_size(CNNX_VBYTES)));
typedef double cnnx_vec_d __attribute__((vector_size(CNNX_VBYTES)));
#endif

enum { CNNX_CORR_OB = 6, CNNX_CORR_OB_SMALL = 4, CNNX_CORR_SLACK = 64 };
/* dst[o*ld + q] = sum_{t0 <= t < t1} wb[t*OB + o] * src[offs[t] + q]
   for o < OB (6, or 4: cnnx_corr_block4) and q < n_pos rounded up to 2 vectors:
   OB x 2 vectors of dst kept in registers over all the taps (written out, so that the
   compiler keeps the 12 sums in registers: arrays of vectors end up on the stack;
   6 x 2 measured fastest of 2..8 x 1..6 with AVX2: 89 GFLOP/s vs 79 for 4 x 2, 53
   for 4 x 3, which runs out of registers).  Positions past n_pos up to the next 2
   vectors are read and written too: src and dst need CNNX_CORR_SLACK values to spare
   past the last value read / position (_conv's band copies), or rows of ld values
   with ld >= n_pos rounded up (_winograd's V and M). */
#if defined(__GNUC__) || defined(__clang__)
#  define CNNX_CORR_LOAD(v, p) memcpy(&(v), (p), sizeof (v))
#  define CNNX_CORR_ZERO(o) a##o##0 = zero; a##o##1 = zero;
#  define CNNX_CORR_FMA(o) a##o##0 += w[o] * x0; a##o##1 += w[o] * x1;
#  define CNNX_CORR_STORE(o) \
    memcpy(dst + o * ld + q, &a##o##0, sizeof a##o##0); \
    memcpy(dst + o * ld + q + PER, &a##o##1, sizeof a##o##1);
/* not inlined: in the caller's register pressure gcc spills one of the 14 vectors */
#  define CNNX_CORR_KERNEL(T, S, NAME, OB, ROWS) \
__attribute__((noinline)) static void NAME(const T *restrict src, const Py_ssize_t *restrict offs, Py_ssize_t t0, \
                 Py_ssize_t t1, const T *restrict wb, T *restrict dst, Py_ssize_t ld, \
                 Py_ssize_t n_pos) { \
    enum { PER = CNNX_VBYTES / sizeof(T) }; \
    const cnnx_vec_##S zero = {0}; \
    cnnx_vec_##S a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51, x0, x1; \
    Py_ssize_t q, t; \
    for (q = 0; q < n_pos; q += 2 * PER) { \
        ROWS(CNNX_CORR_ZERO) \
        for (t = t0; t < t1; t++) { \
            const T *sp = src + offs[t] + q; \
            const T *w = wb + t * OB; \
            CNNX_CORR_LOAD(x0, sp); \
            CNNX_CORR_LOAD(x1, sp + PER); \
            ROWS(CNNX_CORR_FMA) \
        } \
        ROWS(CNNX_CORR_STORE) \
    } \
    (void) a40; (void) a41; (void) a50; (void) a51; \
}
#  define CNNX_CORR_ROWS6(M) M(0) M(1) M(2) M(3) M(4) M(5)
#  define CNNX_CORR_ROWS4(M) M(0) M(1) M(2) M(3)
#  define CNNX_CORR_BLOCKS(T, S) \
CNNX_CORR_KERNEL(T, S, cnnx_corr_block6_##S, 6, CNNX_CORR_ROWS6) \
CNNX_CORR_KERNEL(T, S, cnnx_corr_block4_##S, 4, CNNX_CORR_ROWS4)
#else
#  define CNNX_CORR_KERNEL(T, NAME, OB) \
static void NAME(const T *src, const Py_ssize_t *offs, Py_ssize_t t0, Py_ssize_t t1, \
                 const T *wb, T *dst, Py_ssize_t ld, Py_ssize_t n_pos) { \
    Py_ssize_t q, t; int o; T s; \
    for (o = 0; o < OB; o++) \
        for (q = 0; q < n_pos; q++) { \
            s = 0; \
            for (t = t0; t < t1; t++) s += wb[t * OB + o] * src[offs[t] + q]; \
            dst[o * ld + q] = s; \
        } \
}
#  define CNNX_CORR_BLOCKS(T, S) \
CNNX_CORR_KERNEL(T, cnnx_corr_block6_##S, 6) \
CNNX_CORR_KERNEL(T, cnnx_corr_block4_##S, 4)
#endif
/* the block of ``width`` (6 or 4) outputs */
#define CNNX_CORR_BLOCK(T, S) \
CNNX_CORR_BLOCKS(T, S) \
static void cnnx_corr_block_##S(int width, const T *src, const Py_ssize_t *offs, \
                                Py_ssize_t t0, Py_ssize_t t1, const T *wb, T *dst, \
                                Py_ssize_t ld, Py_ssize_t n_pos) { \
    if (width == 6) cnnx_corr_block6_##S(src, offs, t0, t1, wb, dst, ld, n_pos); \
    else cnnx_corr_block4_##S(src, offs, t0, t1, wb, dst, ld, n_pos); \
}
CNNX_CORR_BLOCK(float, f)
CNNX_CORR_BLOCK(double, d)

#endif  /* CNNX_CORR_KERNEL_H */
