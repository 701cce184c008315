# The Winograd kernels of _winograd.pyx, compiled a second time with -mavx2 -mfma (setup.py).
# cnnx.functional uses this module only when the CPU reports AVX2 and FMA
# (cnnx/_kernels.py).  The transforms only add, subtract and halve (the same bits as
# _winograd's, 8 float32 lanes instead of 4); the blocked products (_corr_kernel.h) use fused
# multiply-adds, so they differ from _winograd's in the last bits, as the convolution builds'
# direct loops do; the BLAS products are the same calls (tests/test_kernel_variants.py).
# Measured on this project's machine (1 thread, float32 forward, one process), against the
# -mavx2 build without FMA: 64x32x32x32 -> 64 1.14x faster, 16x16x32x32 -> 32 1.11x,
# 8x64x56x56 -> 64 1.12x.
include "_winograd.pyx"
