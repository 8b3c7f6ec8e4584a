// AArch64: the dot-product (SDOT) kernels; CMakeLists.txt compiles this file with
// -march=armv8.2-a+dotprod, and matmul.cc calls them only where cpu_features() saw HWCAP_ASIMDDP.
// The code is vec_dot_neon.inc's.
#define SINKSTREAM_NEON_TABLE dotprod_dot_tile
#include "ops/cpu/vec_dot_neon.inc"
