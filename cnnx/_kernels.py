"""Which build of the pooling kernels this process uses.

``_pool_avx2`` is ``_pool.pyx`` compiled a second time with ``-mavx2`` (setup.py, x86-64).
It is imported only when the CPU and OS support AVX2 -- importing it elsewhere could
execute an AVX instruction -- and ``CNNX_NO_AVX2`` is not set; otherwise the baseline
``_pool`` (SSE2 on x86-64) runs.  Both give bit-for-bit the same results.
"""

import os

from . import _build_info, _pool


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _pick_pool():
    if _flag("CNNX_NO_AVX2"):
        return _pool, "baseline (CNNX_NO_AVX2 is set)"
    if not _build_info.cpu_has_avx2():
        return _pool, "baseline (this CPU has no AVX2)"
    try:
        from . import _pool_avx2
    except ImportError:
        return _pool, "baseline (built without the AVX2 variant)"
    return _pool_avx2, "avx2"


pool, POOL_VARIANT = _pick_pool()
