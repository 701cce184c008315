/* One row of 2x2 max-pooling windows with column stride 2 (_pool.pyx, max_pool_rows_2x2),
 * four outputs per step: output j's window is top[2j], top[2j+1], bot[2j], bot[2j+1], taps
 * in that (window) order with the codes 0, 1, W, W+1, and max pooling's rule -- a tap
 * replaces the running maximum when it is greater or a NaN (the first maximum, the last
 * NaN); idx[j] = at + 2j + code.
 *
 * With gcc >= 12 or clang: four lanes (one output each) in the compilers' vector
 * extensions, the windows' left and right columns split out of two loads by shuffles;
 * gcc's own vectorisation of the scalar loop was 1.1-2.3x slower, most on rows of 4
 * outputs (8x8 planes; measured in max_pool_rows_2x2).  Other compilers get the scalar
 * loop.
 */
#ifndef CNNX_MAX2X2_H
#define CNNX_MAX2X2_H

#include <stdint.h>
#include <string.h>

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
/* T: the element type, I: a signed integer of its size (codes, masks); n % 4 == 0 and
 * the codes fit in I */
#  define CNNX_MAX2X2(NAME, T, I)                                                    \
typedef T NAME##_vt __attribute__((vector_size(4 * sizeof(T))));                     \
typedef I NAME##_vi __attribute__((vector_size(4 * sizeof(T))));                     \
typedef long long NAME##_vl __attribute__((vector_size(4 * sizeof(long long))));     \
                                                                                     \
/* the lanes where v is greater than the running maximum, or a NaN, take (v, c) */  \
static inline void NAME##_take(NAME##_vt* best, NAME##_vi* code, NAME##_vt v, I c) { \
    NAME##_vi take = (v > *best) | (v != v), b, x, cv = {c, c, c, c};                \
    memcpy(&b, best, sizeof b);                                                      \
    memcpy(&x, &v, sizeof x);                                                        \
    b = (x & take) | (b & ~take);                                                    \
    memcpy(best, &b, sizeof b);                                                      \
    *code = (cv & take) | (*code & ~take);                                           \
}                                                                                    \
                                                                                     \
static inline void NAME(const T* top, const T* bot, T* y, long long* idx,            \
                        long long n, long long at, long long W) {                    \
    NAME##_vt a, b, left, best;                                                      \
    NAME##_vi code;                                                                  \
    NAME##_vl pos = {at, at + 2, at + 4, at + 6}, step = {8, 8, 8, 8}, out;          \
    long long j;                                                                     \
    for (j = 0; j < n; j += 4) {                                                     \
        memcpy(&a, top + 2 * j, sizeof a);                                           \
        memcpy(&b, top + 2 * j + 4, sizeof b);                                       \
        best = __builtin_shufflevector(a, b, 0, 2, 4, 6);                            \
        code = (NAME##_vi){0, 0, 0, 0};                                              \
        NAME##_take(&best, &code, __builtin_shufflevector(a, b, 1, 3, 5, 7), (I) 1); \
        memcpy(&a, bot + 2 * j, sizeof a);                                           \
        memcpy(&b, bot + 2 * j + 4, sizeof b);                                       \
        left = __builtin_shufflevector(a, b, 0, 2, 4, 6);                            \
        NAME##_take(&best, &code, left, (I) W);                                      \
        NAME##_take(&best, &code, __builtin_shufflevector(a, b, 1, 3, 5, 7),         \
                    (I) (W + 1));                                                    \
        memcpy(y + j, &best, sizeof best);                                           \
        out = __builtin_convertvector(code, NAME##_vl) + pos;                        \
        memcpy(idx + j, &out, sizeof out);                                           \
        pos += step;                                                                 \
    }                                                                                \
}
#else
#  define CNNX_MAX2X2(NAME, T, I)                                                    \
static inline void NAME(const T* top, const T* bot, T* y, long long* idx,            \
                        long long n, long long at, long long W) {                    \
    const T* w[4];                                                                   \
    long long j, t, code, c[4] = {0, 1, W, W + 1};                                   \
    T best;                                                                          \
    for (j = 0; j < n; j++) {                                                        \
        w[0] = top + 2 * j; w[1] = top + 2 * j + 1;                                  \
        w[2] = bot + 2 * j; w[3] = bot + 2 * j + 1;                                  \
        best = *w[0];                                                                \
        code = 0;                                                                    \
        for (t = 1; t < 4; t++)                                                      \
            if (*w[t] > best || *w[t] != *w[t]) {                                    \
                best = *w[t];                                                        \
                code = c[t];                                                         \
            }                                                                        \
        y[j] = best;                                                                 \
        idx[j] = at + 2 * j + code;                                                  \
    }                                                                                \
}
#endif

CNNX_MAX2X2(cnnx_max2x2_f, float, int32_t)
CNNX_MAX2X2(cnnx_max2x2_d, double, int64_t)

#endif  /* CNNX_MAX2X2_H */
