// AVX-512 (F/BW/VL/DQ/VNNI) kernels: placeholder until the kernels land; matmul falls back to AVX2.
#include "ops/cpu/vec_dot.h"

namespace sinkstream {
DotTileFn avx512_dot_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream
