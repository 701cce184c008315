/* The arg-max of a contiguous run a[0], ..., a[n-1] (n >= 1) by max pooling's rule (see
 * _pool.pyx): the first maximum, a NaN over everything (the last NaN); an all -inf run gives
 * position 0.  Used for windows that are one contiguous run (global max pooling).
 *
 * With gcc/clang: one running maximum per vector lane (element k in lane k % L, in order),
 * then the lanes meet.  "(b2, c2) beats (b1, c1)" (CNNX_BEATS) is a total order on the
 * pairs (value, position), and its greatest pair is what one running maximum over the
 * whole run ends with; the lanes' winners are the greatest pairs of their elements, so
 * the greatest of the lanes' winners is the answer.  A run that does not fill the last
 * vector reads its last L elements again (n >= L): a lane that takes one of them takes a
 * real pair that beats its own (or is a NaN, whose later copy another lane then holds,
 * having taken it last), so no lane loses the answer.  The vectors are the compilers'
 * vector extensions, 32 bytes where the compiler targets AVX, else 16, so both builds of
 * _pool.pyx vectorise; other compilers get the one running maximum.  Measured (AMD EPYC,
 * AVX2, 1 thread), a 7x7 global max pooling of 32x512 planes: 3.3 ms as eight scalar
 * running maxima in Cython, 0.5 ms here.
 */
#ifndef CNNX_ARGMAX_H
#define CNNX_ARGMAX_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* (b2, c2) beats (b1, c1): a NaN beats any number and a NaN at a smaller position; a
 * number beats a smaller number and the same number at a larger position.  The operators
 * work on scalars and on vectors alike (on vectors: lane by lane, as masks). */
#define CNNX_BEATS(b1, c1, b2, c2)                                                  \
    ((((b2) != (b2)) & (((b1) == (b1)) | ((c2) > (c1))))                            \
     | (((b1) == (b1)) & ((b2) == (b2)) & (((b2) > (b1)) | (((b2) == (b1)) & ((c2) < (c1))))))

#if defined(__GNUC__) || defined(__clang__)
#  if defined(__AVX__)
#    define CNNX_ARGMAX_VBYTES 32
#  else
#    define CNNX_ARGMAX_VBYTES 16
#  endif
/* The lanes meet in a tree (lane q and lane q + s, s = L/2, ..., 1), the winner in lane 0:
 * with gcc's vector shuffles (1.5x faster on 49-element runs than scalar steps), else lane
 * by lane. */
#  if defined(__clang__)
#    define CNNX_ARGMAX_TREE(NAME, T, I)                                             \
    {                                                                                 \
        T b[L];                                                                       \
        I c[L];                                                                       \
        int s, take;                                                                  \
        memcpy(b, &best, sizeof b);                                                   \
        memcpy(c, &code, sizeof c);                                                   \
        for (s = L / 2; s >= 1; s /= 2)                                               \
            for (q = 0; q < s; q++) {                                                 \
                take = CNNX_BEATS(b[q], c[q], b[q + s], c[q + s]);                    \
                b[q] = take ? b[q + s] : b[q];                                        \
                c[q] = take ? c[q + s] : c[q];                                        \
            }                                                                         \
        code[0] = c[0];                                                               \
    }
#  else
#    define CNNX_ARGMAX_TREE(NAME, T, I)                                             \
    {                                                                                 \
        NAME##_vt b2;                                                                 \
        NAME##_vi c2, shift;                                                          \
        int s;                                                                        \
        for (s = L / 2; s >= 1; s /= 2) {                                             \
            for (q = 0; q < L; q++)                                                   \
                shift[q] = (I) (q ^ s);                                               \
            b2 = __builtin_shuffle(best, shift);                                      \
            c2 = __builtin_shuffle(code, shift);                                      \
            NAME##_take(&best, &code, b2, c2, CNNX_BEATS(best, code, b2, c2));        \
        }                                                                             \
    }
#  endif
/* T: the element type, I: a signed integer of its size (lane positions, masks); runs of
 * fewer than 2**29 elements (the positions fit in I) */
#  define CNNX_ARGMAX_RUN(NAME, T, I)                                                  \
typedef T NAME##_vt __attribute__((vector_size(CNNX_ARGMAX_VBYTES)));                 \
typedef I NAME##_vi __attribute__((vector_size(CNNX_ARGMAX_VBYTES)));                 \
enum { NAME##_lanes = CNNX_ARGMAX_VBYTES / sizeof(T) };                               \
                                                                                      \
/* the lanes where ``take`` is set become (v, pos) */                                 \
static inline void NAME##_take(NAME##_vt* best, NAME##_vi* code, NAME##_vt v,         \
                               NAME##_vi pos, NAME##_vi take) {                       \
    NAME##_vi b, x;                                                                   \
    memcpy(&b, best, sizeof b);                                                       \
    memcpy(&x, &v, sizeof x);                                                         \
    b = (x & take) | (b & ~take);                                                     \
    memcpy(best, &b, sizeof b);                                                       \
    *code = (pos & take) | (*code & ~take);                                           \
}                                                                                     \
                                                                                      \
static inline int64_t NAME##_run(const T* a, int64_t n) {                             \
    enum { L = NAME##_lanes };                                                        \
    NAME##_vt best, v;                                                                \
    NAME##_vi code, pos, step;                                                        \
    T tail[L];                                                                        \
    int q;                                                                            \
    int64_t k = 0;                                                                    \
    for (q = 0; q < L; q++) {                                                         \
        best[q] = -INFINITY;  /* a lane without elements never wins (lane 0 has one) */ \
        code[q] = (I) q;                                                              \
        step[q] = (I) L;                                                              \
    }                                                                                 \
    pos = code;                                                                       \
    for (; k + L <= n; k += L) {   /* the running maxima: take v > best or a NaN */    \
        memcpy(&v, a + k, sizeof v);                                                  \
        NAME##_take(&best, &code, v, pos, (v > best) | (v != v));                     \
        pos += step;                                                                  \
    }                                                                                 \
    if (k < n && n >= L) {         /* the last L elements again */                  \
        memcpy(&v, a + n - L, sizeof v);                                              \
        pos -= step - (I) (n - k);                                                    \
        NAME##_take(&best, &code, v, pos, (v > best) | (v != v));                     \
    } else if (k < n) {            /* fewer than L: -inf after them */                \
        for (q = 0; q < L; q++)                                                       \
            tail[q] = k + q < n ? a[k + q] : (T) -INFINITY;                           \
        memcpy(&v, tail, sizeof v);                                                   \
        NAME##_take(&best, &code, v, pos, (v > best) | (v != v));                     \
    }                                                                                 \
    CNNX_ARGMAX_TREE(NAME, T, I)                                                      \
    return (int64_t) code[0];                                                         \
}
#else
#  define CNNX_ARGMAX_RUN(NAME, T, I)                                                  \
static inline int64_t NAME##_run(const T* a, int64_t n) {                             \
    int64_t k, c = 0;                                                                 \
    T b = a[0];                                                                       \
    for (k = 1; k < n; k++)                                                           \
        if (a[k] > b || a[k] != a[k]) {                                               \
            b = a[k];                                                                 \
            c = k;                                                                    \
        }                                                                             \
    return c;                                                                         \
}
#endif

/* any n >= 1: runs of up to 2**28 elements, their winners compared as the lanes' */
#define CNNX_ARGMAX(NAME, T, I)                                                       \
CNNX_ARGMAX_RUN(NAME, T, I)                                                           \
static inline int64_t NAME(const T* a, int64_t n) {                                   \
    const int64_t RUN = (int64_t) 1 << 28;                                            \
    int64_t c = NAME##_run(a, n < RUN ? n : RUN), k, c2;                              \
    for (k = RUN; k < n; k += RUN) {                                                  \
        c2 = k + NAME##_run(a + k, n - k < RUN ? n - k : RUN);                        \
        if (CNNX_BEATS(a[c], c, a[c2], c2))                                           \
            c = c2;                                                                   \
    }                                                                                 \
    return c;                                                                         \
}

CNNX_ARGMAX(cnnx_argmax_f, float, int32_t)
CNNX_ARGMAX(cnnx_argmax_d, double, int64_t)

#endif  /* CNNX_ARGMAX_H */
