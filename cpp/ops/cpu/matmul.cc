// Placeholder reference matmul: dequantize a weight row, dot it with every input row.
// (The quant work replaces this with quantized-activation integer kernels.)
#include <vector>

#include "ops/ops.h"
#include "quant/dequantize.h"

namespace sinkstream {

void matmul(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  pool.parallel_for(w.rows, [&](int64_t r0, int64_t r1, int) {
    std::vector<float> row((size_t)w.cols);
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row(w.type, w.data + r * w.row_bytes, row.data(), w.cols);
      for (int64_t t = 0; t < n; ++t) {
        const float* xt = x + t * w.cols;
        float sum = 0.0f;
        for (int64_t i = 0; i < w.cols; ++i) sum += row[(size_t)i] * xt[i];
        y[t * w.rows + r] = sum;
      }
    }
  }, 16);
}

void get_row(const WeightMatrix& w, int64_t row, float* out) {
  dequantize_row(w.type, w.data + row * w.row_bytes, out, w.cols);
}

}  // namespace sinkstream
