// ARM NEON kernels: placeholder until the kernels land; matmul falls back to scalar.
#include "ops/cpu/vec_dot.h"

namespace sinkstream {
RowDotFn neon_row_dot(GgmlType) { return nullptr; }
}  // namespace sinkstream
