// The op set the model is written in. cpu/ holds the reference implementations (the specification)
// and picks SIMD variants at run time; cuda/ implements the same set on the GPU.
#pragma once
#include <cstdint>
#include <string>

#include "core/thread_pool.h"
#include "quant/quant_types.h"

namespace sinkstream {

// A 2-D weight left in the GGUF map: `rows` rows of `cols` elements of `type`, rows contiguous.
// In ggml order a tensor with dims (cols, rows) is exactly this.
struct WeightMatrix {
  std::string name;
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_bytes = 0;
};

// Y (n x w.rows) = X (n x w.cols) . W^T, float32 row-major X and Y. Works directly on the quantized
// blocks (no dequantized copy of W). Cost: n * rows * cols multiply-adds; W is read once per call
// when n is small, so decode is bound by reading the weights.
void matmul(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool& pool);

// out[0 .. w.cols) = row `row` of W as float32 (embedding lookup).
void get_row(const WeightMatrix& w, int64_t row, float* out);

// out = x / sqrt(mean(x^2) + eps) * weight, for n rows of length d. out may alias x.
void rms_norm(const float* x, const float* weight, int64_t n, int64_t d, float eps, float* out);

// out = silu(gate) * up, elementwise over n values. out may alias gate.
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

// y += x over n values.
void add_inplace(float* y, const float* x, int64_t n);

}  // namespace sinkstream
