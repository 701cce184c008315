"""Which builds of the pooling, convolution and Winograd kernels this process uses.

``_pool_avx2`` is ``_pool.pyx`` compiled a second time with ``-mavx2``, ``_conv_avx2`` is
``_conv.pyx`` compiled with ``-mavx2 -mfma``, ``_winograd_avx2`` is ``_winograd.pyx``
compiled with ``-mavx2 -mfma`` (setup.py, x86-64).  Each is imported only when
the CPU and OS support what it was compiled for -- importing it elsewhere could execute an
AVX instruction -- and ``CNNX_NO_AVX2`` is not set; otherwise the baseline build (SSE2 on
x86-64) runs.  The pooling builds give bit-for-bit the same results; the convolution
builds' direct loops and the Winograd builds' blocked products differ in rounding only
(fused multiply-adds).
"""

import importlib
import os

from . import _build_info, _conv, _pool, _winograd


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _pick(baseline, name, cpu_ok, needs, variant):
    """(module, description) for the kernels of ``baseline``: its build ``name`` (reported
    as ``variant``) when the CPU has ``needs`` (``cpu_ok``) and it was built."""
    if _flag("CNNX_NO_AVX2"):
        return baseline, "baseline (CNNX_NO_AVX2 is set)"
    if not cpu_ok:
        return baseline, f"baseline (this CPU has no {needs})"
    try:
        module = importlib.import_module(f".{name}", __package__)
    except ImportError:
        return baseline, "baseline (built without the AVX2 variant)"
    return module, variant


pool, POOL_VARIANT = _pick(_pool, "_pool_avx2", _build_info.cpu_has_avx2(), "AVX2", "avx2")
conv, CONV_VARIANT = _pick(_conv, "_conv_avx2",
                           _build_info.cpu_has_avx2() and _build_info.cpu_has_fma(),
                           "AVX2/FMA", "avx2+fma")
winograd, WINOGRAD_VARIANT = _pick(_winograd, "_winograd_avx2",
                                   _build_info.cpu_has_avx2() and _build_info.cpu_has_fma(),
                                   "AVX2/FMA", "avx2+fma")
