// AArch64: the baseline NEON kernels (no flags: Advanced SIMD is mandatory on AArch64). The code is vec_dot_neon.inc's.
#define SINKSTREAM_NEON_TABLE neon_dot_tile
#include "ops/cpu/vec_dot_neon.inc"
