"""How this copy of cnnx was compiled (reported by ``cnnx info``)."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int cnnx_openmp_enabled(void) { return 1; }
    static int cnnx_omp_max_threads(void) { return omp_get_max_threads(); }
    static int cnnx_openmp_version(void) { return _OPENMP; }
    #else
    static int cnnx_openmp_enabled(void) { return 0; }
    static int cnnx_omp_max_threads(void) { return 1; }
    static int cnnx_openmp_version(void) { return 0; }
    #endif
    static int cnnx_cpu_has_avx2(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");  /* checks the OS saves AVX state too */
    #else
        return 0;
    #endif
    }
    static int cnnx_cpu_has_fma(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }
    """
    int cnnx_openmp_enabled() noexcept nogil
    int cnnx_omp_max_threads() noexcept nogil
    int cnnx_openmp_version() noexcept nogil
    int cnnx_cpu_has_avx2() noexcept nogil
    int cnnx_cpu_has_fma() noexcept nogil
    int CNNX_DEBUG


OPENMP = bool(cnnx_openmp_enabled())
OPENMP_VERSION = cnnx_openmp_version()
DEBUG_BUILD = bool(CNNX_DEBUG)


def omp_max_threads():
    """OpenMP's default thread count (1 when built without OpenMP)."""
    return cnnx_omp_max_threads()


def cpu_has_avx2():
    """Whether this CPU (and OS) can run AVX2 code: decides whether cnnx uses the
    kernels built with -mavx2 (``_pool_avx2``; ``_conv_avx2`` needs FMA as well)."""
    return bool(cnnx_cpu_has_avx2())


def cpu_has_fma():
    """Whether this CPU has FMA3: with AVX2, decides whether cnnx uses the convolution
    kernels built with -mavx2 -mfma (``_conv_avx2``)."""
    return bool(cnnx_cpu_has_fma())
