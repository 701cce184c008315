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
    """
    int cnnx_openmp_enabled() noexcept nogil
    int cnnx_omp_max_threads() noexcept nogil
    int cnnx_openmp_version() noexcept nogil
    int CNNX_DEBUG


OPENMP = bool(cnnx_openmp_enabled())
OPENMP_VERSION = cnnx_openmp_version()
DEBUG_BUILD = bool(CNNX_DEBUG)


def omp_max_threads():
    """OpenMP's default thread count (1 when built without OpenMP)."""
    return cnnx_omp_max_threads()
