// AArch64: the int8 matrix-multiply (SMMLA) kernels; CMakeLists.txt compiles this file
// with -march=armv8.2-a+dotprod+i8mm, and matmul.cc calls them only where cpu_features() saw
// HWCAP_ASIMDDP and HWCAP2_I8MM. The code is vec_dot_neon.inc's.
#define SINKSTREAM_NEON_TABLE i8mm_dot_tile
#include "ops/cpu/vec_dot_neon.inc"
