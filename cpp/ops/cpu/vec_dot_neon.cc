// ARM NEON kernels: placeholder until the kernels land; matmul falls back to scalar.
#include "ops/cpu/vec_dot.h"

namespace sinkstream {
DotTileFn neon_dot_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream
