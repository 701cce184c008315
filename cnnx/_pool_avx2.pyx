# The pooling kernels of _pool.pyx, compiled a second time with -mavx2 (setup.py).
# cnnx.functional uses this module only when the CPU reports AVX2 (_build_info.cpu_has_avx2);
# the results are bit-for-bit those of _pool (tests/test_kernel_variants.py).  Measured on this
# project's machine: float64 max pooling vectorises only with AVX2 (SSE2 has no double
# compare gcc will turn into a 64-bit select), 3-4x faster; float32 2x2 max 25 % faster.
include "_pool.pyx"
