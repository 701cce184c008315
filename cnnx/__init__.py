"""cnnx: readable, fast CPU kernels for CNN convolution and pooling.

``cnnx.functional`` holds the compiled ops (PyTorch semantics, NCHW),
``cnnx.reference`` their pure-Python twins, ``cnnx.layers`` a small layer API.
"""

__version__ = "0.1.0"

import os as _os

# OpenMP worker threads sleep between cnnx's parallel loops instead of spinning.
# With spinning (libgomp's default), an idle worker competes with every other busy
# process for the cores and each parallel region then waits for it to be scheduled:
# measured here, 2-thread loops took ~3 ms instead of ~30 us while another process
# was busy, and `cnnx train` ran 5x slower.  A user's own setting wins; it only
# takes effect if no OpenMP runtime shared with cnnx was loaded before this import.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenBLAS's worker threads likewise: after a multi-threaded BLAS call they busy-wait
# for 2**28 cycles (~0.1 s) by default, and OpenMP or BLAS work started meanwhile
# (cnnx's own loops right after one of its GEMMs, or another library's) gets one core
# of two: measured here, a 2-thread Winograd forward took 30 ms instead of 16 after
# NumPy's 2-thread np.dot.  2**16 cycles (~20 us) still covers the gaps between the
# GEMMs of one call (2**4, sleeping at once, made a batch-1 7x7 conv's 2-thread
# backward 3.3 -> 6.0 ms: every GEMM woke the workers).  Read when an OpenBLAS loads:
# SciPy's (the one cnnx calls) always loads after this line, NumPy's only if numpy was
# not imported first.  A user's own setting wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

from ._config import get_num_threads, set_num_threads
from .functional import (
    avg_pool2d,
    avg_pool2d_backward,
    conv2d,
    conv2d_backward,
    max_pool2d,
    max_pool2d_backward,
    relu,
    relu_backward,
)

__all__ = [
    "__version__",
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv2d",
    "conv2d_backward",
    "get_num_threads",
    "info_dict",
    "max_pool2d",
    "max_pool2d_backward",
    "relu",
    "relu_backward",
    "set_num_threads",
]


def info_dict():
    """Version, build flags, OpenMP, BLAS and thread settings as a dict."""
    import platform

    import numpy as np
    import scipy

    from . import _build_info, _kernels

    blas = "unknown"
    try:
        from threadpoolctl import threadpool_info

        from . import _conv  # noqa: F401  (loads scipy's BLAS)

        libs = [f"{i['internal_api']} {i.get('version') or ''} ({i['num_threads']} threads, "
                f"{i['filepath'].rsplit('/', 1)[-1]})"
                for i in threadpool_info() if i["user_api"] == "blas"]
        blas = "; ".join(libs) or "none found"
    except Exception as exc:  # pragma: no cover - informational only
        blas = f"unknown ({exc})"
    return {
        "cnnx": __version__,
        "location": __file__.rsplit("/", 1)[0],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "openmp": (f"yes (OpenMP {_build_info.OPENMP_VERSION})" if _build_info.OPENMP
                   else "no (kernels run on one thread)"),
        "pooling kernels": f"{_kernels.POOL_VARIANT} (CNNX_NO_AVX2=1 forces the baseline)",
        "convolution kernels": f"{_kernels.CONV_VARIANT} (CNNX_NO_AVX2=1 forces the baseline)",
        "winograd kernels": f"{_kernels.WINOGRAD_VARIANT} (CNNX_NO_AVX2=1 forces the baseline)",
        "debug build": "yes (bounds checks on)" if _build_info.DEBUG_BUILD else "no",
        "blas": f"scipy.linalg.cython_blas -> {blas}",
        "threads": f"{get_num_threads()} (set_num_threads / CNNX_NUM_THREADS)",
    }
