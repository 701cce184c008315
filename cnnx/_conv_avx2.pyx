# The convolution kernels of _conv.pyx, compiled a second time with -mavx2 -mfma (setup.py).
# cnnx.functional uses this module only when the CPU reports AVX2 and FMA (cnnx/_kernels.py).
# The GEMM paths move data and call the same BLAS (results bit-for-bit those of _conv); the
# direct loops run 8 float32 lanes with fused multiply-adds, so their results differ from
# _conv's in the last bits (tests/test_kernel_variants.py).  Measured on this project's
# machine, depthwise 3x3 8x64x56x56 float32 at 1 thread: forward 2.2 -> 1.4 ms, backward
# 4.0 -> 2.9 ms.
include "_conv.pyx"
