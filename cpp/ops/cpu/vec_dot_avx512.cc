// AVX-512 (F/BW/VL/DQ/VNNI) kernels: placeholder until the kernels land; matmul falls back to AVX2.
#include "ops/cpu/vec_dot.h"

namespace sinkstream {
RowDotFn avx512_row_dot(GgmlType) { return nullptr; }
}  // namespace sinkstream
