# The Winograd kernels of _winograd.pyx, compiled a second time with -mavx2 (setup.py).
# cnnx.functional uses this module only when the CPU reports AVX2 (cnnx/_kernels.py).  The
# transforms only add, subtract and halve, and the products are SciPy's BLAS either way, so
# the results are bit-for-bit those of _winograd (tests/test_kernel_variants.py); the
# transforms run 8 float32 lanes instead of 4.  Measured on this project's machine (1 thread,
# float32, one process): 64x32x32x32 -> 64 forward 1.14x faster, backward 1.02x; 32x64x56x56
# 1.04x | 1.02x; batch-1 64x56x56 1.04x | 1.06x.
include "_winograd.pyx"
