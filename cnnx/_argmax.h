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

#if defined(__AVX__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
/* Eight runs at once (global pooling of many small planes): each run's eight lanes as in
 * NAME##_run (run k % 8 in lane k), then the 64 lanes meet in three rounds of shuffles
 * that halve the vectors, two runs' lanes side by side in each -- 7 meetings for the 8
 * runs instead of 3 each (the order is total: any order of meetings ends with the
 * greatest pair).  The vectors are 8 floats, one AVX register.  Runs of
 * 8 <= n < 2**28 elements.  Measured (AMD EPYC, AVX2, 1 thread, float32 forward, against
 * plane by plane): 32x512x7x7 2.6x faster, 64x512x4x4 3.4x, 8x256x14x14 1.5x. */
#  define CNNX_ARGMAX8(NAME, T, I)                                                    \
typedef T NAME##_v8 __attribute__((vector_size(8 * sizeof(T))));                     \
typedef I NAME##_i8 __attribute__((vector_size(8 * sizeof(T))));                     \
                                                                                      \
/* the lanes where ``take`` is set become (v, pos) */                                 \
static inline void NAME##_take8(NAME##_v8* best, NAME##_i8* code, NAME##_v8 v,        \
                                NAME##_i8 pos, NAME##_i8 take) {                      \
    NAME##_i8 b, x;                                                                   \
    memcpy(&b, best, sizeof b);                                                       \
    memcpy(&x, &v, sizeof x);                                                         \
    b = (x & take) | (b & ~take);                                                     \
    memcpy(best, &b, sizeof b);                                                       \
    *code = (pos & take) | (*code & ~take);                                           \
}                                                                                     \
                                                                                      \
/* the lanes where (b2, c2) beats (*best, *code) become (b2, c2) */                   \
static inline void NAME##_meet(NAME##_v8* best, NAME##_i8* code, NAME##_v8 b2,       \
                               NAME##_i8 c2) {                                        \
    NAME##_take8(best, code, b2, c2, CNNX_BEATS(*best, *code, b2, c2));               \
}                                                                                     \
                                                                                      \
/* lane q: the winner of the run's elements k = q (mod 8), as NAME##_run's lanes (in     \
   locals: through the pointers gcc keeps them in memory, as the floats may alias) */   \
static inline void NAME##_lanes8(const T* a, int64_t n, NAME##_v8* best_out,         \
                                 NAME##_i8* code_out) {                               \
    const NAME##_i8 step = {8, 8, 8, 8, 8, 8, 8, 8};                                  \
    NAME##_i8 pos = {0, 1, 2, 3, 4, 5, 6, 7}, code = pos;                             \
    NAME##_v8 v, best;                                                                \
    int64_t k;                                                                        \
    memcpy(&best, a, sizeof best);                                                    \
    for (k = 8; k + 8 <= n; k += 8) {                                                 \
        pos += step;                                                                  \
        memcpy(&v, a + k, sizeof v);                                                  \
        NAME##_take8(&best, &code, v, pos, (v > best) | (v != v));                    \
    }                                                                                 \
    if (k < n) {                   /* the last 8 elements again */                    \
        pos += step - (I) (k + 8 - n);                                                \
        memcpy(&v, a + n - 8, sizeof v);                                              \
        NAME##_take8(&best, &code, v, pos, (v > best) | (v != v));                    \
    }                                                                                 \
    *best_out = best;                                                                 \
    *code_out = code;                                                                 \
}                                                                                     \
                                                                                      \
/* out[p] = the arg-max of the run a + p*stride, p < 8, each of n elements */         \
static inline void NAME##_8(const T* a, int64_t stride, int64_t n, long long* out) {  \
    NAME##_v8 b[8], lo, hi;                                                           \
    NAME##_i8 c[8], clo, chi;                                                         \
    int p;                                                                            \
    for (p = 0; p < 8; p++)                                                           \
        NAME##_lanes8(a + p * stride, n, &b[p], &c[p]);                               \
    for (p = 0; p < 4; p++) {      /* lanes q, q + 4: runs 2p (lanes 0-3), 2p+1 */    \
        lo = __builtin_shufflevector(b[2 * p], b[2 * p + 1], 0, 1, 2, 3, 8, 9, 10, 11);  \
        hi = __builtin_shufflevector(b[2 * p], b[2 * p + 1], 4, 5, 6, 7, 12, 13, 14, 15); \
        clo = __builtin_shufflevector(c[2 * p], c[2 * p + 1], 0, 1, 2, 3, 8, 9, 10, 11); \
        chi = __builtin_shufflevector(c[2 * p], c[2 * p + 1], 4, 5, 6, 7, 12, 13, 14, 15); \
        NAME##_meet(&lo, &clo, hi, chi);                                              \
        b[p] = lo;                                                                    \
        c[p] = clo;                                                                   \
    }                                                                                 \
    for (p = 0; p < 2; p++) {      /* runs 4p, 4p+2, 4p+1, 4p+3: two lanes each */    \
        lo = __builtin_shufflevector(b[2 * p], b[2 * p + 1], 0, 1, 8, 9, 4, 5, 12, 13);  \
        hi = __builtin_shufflevector(b[2 * p], b[2 * p + 1], 2, 3, 10, 11, 6, 7, 14, 15); \
        clo = __builtin_shufflevector(c[2 * p], c[2 * p + 1], 0, 1, 8, 9, 4, 5, 12, 13); \
        chi = __builtin_shufflevector(c[2 * p], c[2 * p + 1], 2, 3, 10, 11, 6, 7, 14, 15); \
        NAME##_meet(&lo, &clo, hi, chi);                                              \
        b[p] = lo;                                                                    \
        c[p] = clo;                                                                   \
    }                              /* runs 0, 4, 2, 6, 1, 5, 3, 7: one lane each */   \
    lo = __builtin_shufflevector(b[0], b[1], 0, 8, 2, 10, 4, 12, 6, 14);              \
    hi = __builtin_shufflevector(b[0], b[1], 1, 9, 3, 11, 5, 13, 7, 15);              \
    clo = __builtin_shufflevector(c[0], c[1], 0, 8, 2, 10, 4, 12, 6, 14);             \
    chi = __builtin_shufflevector(c[0], c[1], 1, 9, 3, 11, 5, 13, 7, 15);             \
    NAME##_meet(&lo, &clo, hi, chi);                                                  \
    out[0] = clo[0]; out[4] = clo[1]; out[2] = clo[2]; out[6] = clo[3];               \
    out[1] = clo[4]; out[5] = clo[5]; out[3] = clo[6]; out[7] = clo[7];               \
}
#else
/* eight single runs: without AVX (and for doubles, so not made for them) the vectors of
 * 8 elements are wider than a register, and gcc's code for them was 2-5x slower than
 * single runs */
#  define CNNX_ARGMAX8(NAME, T, I)                                                    \
static inline void NAME##_8(const T* a, int64_t stride, int64_t n, long long* out) {  \
    int p;                                                                            \
    for (p = 0; p < 8; p++)                                                           \
        out[p] = NAME(a + p * stride, n);                                             \
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
CNNX_ARGMAX8(cnnx_argmax_f, float, int32_t)

#endif  /* CNNX_ARGMAX_H */
