# The pooling kernels of _pool.pyx, compiled a second time with -mavx2 (setup.py).
# cnnx.functional uses this module only when the CPU reports AVX2 (_build_info.cpu_has_avx2);
# the results are bit-for-bit those of _pool (tests/test_kernel_variants.py).  Measured on this
# project's machine: float64 max pooling vectorises only with AVX2 (gcc turns no SSE2 double
# compare into a 64-bit select): 3x3/2/1 forward 42 -> 11 ms (8 with the phased sweeps),
# 2x2 6.1 -> 1.4 ms; float32 2x2 max 25 % faster.
include "_pool.pyx"
