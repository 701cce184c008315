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
/* Several runs at once (global pooling of many small planes), L runs of vectors of L
 * elements (one AVX register: 8 floats, 4 doubles): each run's L lanes as in NAME##_run
 * (element k in lane k % L), then the L*L lanes meet in rounds of shuffles that halve
 * the vectors, two runs' lanes side by side in each -- L-1 meetings for the L runs
 * instead of log2(L) each (the order is total: any order of meetings ends with the
 * greatest pair).  Runs of L <= n < 2**28 elements.  Measured (AMD EPYC, AVX2, 1 thread,
 * float32 forward, against plane by plane): 32x512x7x7 2.6x faster, 64x512x4x4 3.4x,
 * 8x256x14x14 1.5x. */
#  define CNNX_ARGMAX_LANES(NAME, T, I, L, STEP, POS)                                 \
typedef T NAME##_v##L __attribute__((vector_size(L * sizeof(T))));                   \
typedef I NAME##_i##L __attribute__((vector_size(L * sizeof(T))));                   \
                                                                                      \
/* the lanes where ``take`` is set become (v, pos) */                                 \
static inline void NAME##_take##L(NAME##_v##L* best, NAME##_i##L* code,               \
                                  NAME##_v##L v, NAME##_i##L pos, NAME##_i##L take) { \
    NAME##_i##L b, x;                                                                 \
    memcpy(&b, best, sizeof b);                                                       \
    memcpy(&x, &v, sizeof x);                                                         \
    b = (x & take) | (b & ~take);                                                     \
    memcpy(best, &b, sizeof b);                                                       \
    *code = (pos & take) | (*code & ~take);                                           \
}                                                                                     \
                                                                                      \
/* the lanes where (b2, c2) beats (*best, *code) become (b2, c2) */                   \
static inline void NAME##_meet##L(NAME##_v##L* best, NAME##_i##L* code,               \
                                  NAME##_v##L b2, NAME##_i##L c2) {                   \
    NAME##_take##L(best, code, b2, c2, CNNX_BEATS(*best, *code, b2, c2));             \
}                                                                                     \
                                                                                      \
/* lane q: the winner of the run's elements k = q (mod L), as NAME##_run's lanes (in  \
   locals: through the pointers gcc keeps them in memory, as the elements may alias) */ \
static inline void NAME##_lanes##L(const T* a, int64_t n, NAME##_v##L* best_out,     \
                                   NAME##_i##L* code_out) {                           \
    const NAME##_i##L step = STEP;                                                    \
    NAME##_i##L pos = POS, code = pos;                                                \
    NAME##_v##L v, best;                                                              \
    int64_t k;                                                                        \
    memcpy(&best, a, sizeof best);                                                    \
    for (k = L; k + L <= n; k += L) {                                                 \
        pos += step;                                                                  \
        memcpy(&v, a + k, sizeof v);                                                  \
        NAME##_take##L(&best, &code, v, pos, (v > best) | (v != v));                  \
    }                                                                                 \
    if (k < n) {                   /* the last L elements again */                    \
        pos += step - (I) (k + L - n);                                                \
        memcpy(&v, a + n - L, sizeof v);                                              \
        NAME##_take##L(&best, &code, v, pos, (v > best) | (v != v));                  \
    }                                                                                 \
    *best_out = best;                                                                 \
    *code_out = code;                                                                 \
}
/* (lo, clo) = the lanes I... of (b[i], b[j]) and (c[i], c[j]), (hi, chi) the lanes J...,
   then lo and hi meet */
#  define CNNX_ARGMAX_ROUND(NAME, L, i, j, lanes_lo, lanes_hi)                        \
    lo = __builtin_shufflevector(b[i], b[j], lanes_lo);                               \
    hi = __builtin_shufflevector(b[i], b[j], lanes_hi);                               \
    clo = __builtin_shufflevector(c[i], c[j], lanes_lo);                              \
    chi = __builtin_shufflevector(c[i], c[j], lanes_hi);                              \
    NAME##_meet##L(&lo, &clo, hi, chi);
#  define CNNX_LANES(...) __VA_ARGS__
/* the lanes (b[p], c[p]) of the L runs a + p*stride, and the rounds' variables */
#  define CNNX_ARGMAX_RUNS(NAME, L)                                                   \
    NAME##_v##L b[L], lo, hi;                                                         \
    NAME##_i##L c[L], clo, chi;                                                       \
    int p;                                                                            \
    for (p = 0; p < L; p++)                                                           \
        NAME##_lanes##L(a + p * stride, n, &b[p], &c[p]);
/* out[p] = the arg-max of the run a + p*stride, p < 8, each of n elements (floats) */
#  define CNNX_ARGMAX8(NAME, T, I)                                                    \
CNNX_ARGMAX_LANES(NAME, T, I, 8, CNNX_LANES({8, 8, 8, 8, 8, 8, 8, 8}),              \
                  CNNX_LANES({0, 1, 2, 3, 4, 5, 6, 7}))                              \
static inline void NAME##_8(const T* a, int64_t stride, int64_t n, long long* out) {  \
    CNNX_ARGMAX_RUNS(NAME, 8)                                                         \
    for (p = 0; p < 4; p++) {      /* lanes q, q + 4: runs 2p (lanes 0-3), 2p+1 */    \
        CNNX_ARGMAX_ROUND(NAME, 8, 2 * p, 2 * p + 1, CNNX_LANES(0, 1, 2, 3, 8, 9, 10, 11), \
                          CNNX_LANES(4, 5, 6, 7, 12, 13, 14, 15))                    \
        b[p] = lo;                                                                    \
        c[p] = clo;                                                                   \
    }                                                                                 \
    for (p = 0; p < 2; p++) {      /* runs 4p, 4p+2, 4p+1, 4p+3: two lanes each */    \
        CNNX_ARGMAX_ROUND(NAME, 8, 2 * p, 2 * p + 1, CNNX_LANES(0, 1, 8, 9, 4, 5, 12, 13), \
                          CNNX_LANES(2, 3, 10, 11, 6, 7, 14, 15))                    \
        b[p] = lo;                                                                    \
        c[p] = clo;                                                                   \
    }                              /* runs 0, 4, 2, 6, 1, 5, 3, 7: one lane each */   \
    CNNX_ARGMAX_ROUND(NAME, 8, 0, 1, CNNX_LANES(0, 8, 2, 10, 4, 12, 6, 14),           \
                      CNNX_LANES(1, 9, 3, 11, 5, 13, 7, 15))                          \
    out[0] = clo[0]; out[4] = clo[1]; out[2] = clo[2]; out[6] = clo[3];               \
    out[1] = clo[4]; out[5] = clo[5]; out[3] = clo[6]; out[7] = clo[7];               \
}
/* out[p] = the arg-max of the run a + p*stride, p < 4, each of n elements (doubles) */
#  define CNNX_ARGMAX4(NAME, T, I)                                                    \
CNNX_ARGMAX_LANES(NAME, T, I, 4, CNNX_LANES({4, 4, 4, 4}), CNNX_LANES({0, 1, 2, 3}))  \
static inline void NAME##_4(const T* a, int64_t stride, int64_t n, long long* out) {  \
    CNNX_ARGMAX_RUNS(NAME, 4)                                                         \
    for (p = 0; p < 2; p++) {      /* lanes q, q + 2: runs 2p (lanes 0-1), 2p+1 */    \
        CNNX_ARGMAX_ROUND(NAME, 4, 2 * p, 2 * p + 1, CNNX_LANES(0, 1, 4, 5),          \
                          CNNX_LANES(2, 3, 6, 7))                                     \
        b[p] = lo;                                                                    \
        c[p] = clo;                                                                   \
    }                              /* runs 0, 2, 1, 3: one lane each */               \
    CNNX_ARGMAX_ROUND(NAME, 4, 0, 1, CNNX_LANES(0, 4, 2, 6), CNNX_LANES(1, 5, 3, 7))  \
    out[0] = clo[0]; out[2] = clo[1]; out[1] = clo[2]; out[3] = clo[3];               \
}
#else
/* runs one by one: without AVX the vectors of L elements are wider than a register, and
 * gcc's code for them was 2-5x slower than single runs */
#  define CNNX_ARGMAX_SINGLES(NAME, T, L)                                             \
static inline void NAME##_##L(const T* a, int64_t stride, int64_t n, long long* out) { \
    int p;                                                                            \
    for (p = 0; p < L; p++)                                                           \
        out[p] = NAME(a + p * stride, n);                                             \
}
#  define CNNX_ARGMAX8(NAME, T, I) CNNX_ARGMAX_SINGLES(NAME, T, 8)
#  define CNNX_ARGMAX4(NAME, T, I) CNNX_ARGMAX_SINGLES(NAME, T, 4)
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
CNNX_ARGMAX4(cnnx_argmax_d, double, int64_t)

#endif  /* CNNX_ARGMAX_H */
