// Internal interface between matmul.cc and the per-ISA dot-product kernels (vec_dot_*.cc).
//
// A matmul row of Y is dot(weight row, activation row). Quantized weights are not dequantized:
// the activation row X is quantized once per call to 8-bit blocks that line up with the weight
// blocks, and the kernels multiply integers, applying the float scales once per block:
//   dot = sum over blocks of d_w * d_x * sum_i(q_w[i] * q_x[i])   (+ min/offset terms per format)
// The 8-bit activation quantization costs about 0.4 % relative error per dot product (its rounding
// error is at most half a step, d_x / 2, per element, independent between elements).
//
// Every ISA uses the same activation quantization (quantize_activations, scalar code), so the
// integer products are identical across ISAs and paths differ only in float summation order.
#pragma once
#include <cstdint>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_features.h"
#include "ops/ops.h"
#include "quant/quant_blocks.h"
#include "quant/quant_types.h"

namespace sinkstream {

// Activation block for the 32-element weight formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL).
// x[i] ~= d * qs[i]; ds = d * sum(qs) serves the minimum (Q4_1, Q5_1) and offset (Q4_0, Q5_0) terms.
struct BlockQ8A {
  float d;
  float ds;
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8A) == 40, "BlockQ8A is 40 bytes");

// The K-quants use BlockQ8_K activations (quant_blocks.h): 256 quants, float scale, 16 group sums.

enum class ActFormat {
  F32,  // float weights (F32, F16, BF16): the activation row stays float32
  Q8A,  // BlockQ8A per 32 elements
  Q8K,  // BlockQ8_K per 256 elements
};

// Which activation format the kernels for a weight type consume; throws ArgumentError for a type
// without matmul kernels.
ActFormat activation_format(GgmlType weight_type);
// Bytes of one quantized activation row of `cols` elements (a multiple of the format's block).
int64_t activation_row_bytes(ActFormat format, int64_t cols);
// Converts one float row to the format (F32: a copy). Round half to even, |q| <= 127.
void quantize_activations(ActFormat format, const float* x, int64_t cols, uint8_t* out);

// One weight row against nt (1 .. kTokenTile) activation rows:
//   y[t * y_stride] = dot(w_row, activation row at x + t * x_stride), for t in [0, nt).
// n_blocks counts weight blocks (for F32/F16/BF16: elements). Processing several tokens per call
// lets a kernel unpack each weight block once and reuse it from registers.
using RowDotFn = void (*)(int64_t n_blocks, const uint8_t* w_row, const uint8_t* x, int64_t x_stride,
                          int nt, float* y, int64_t y_stride);
constexpr int kTokenTile = 4;

// Kernel tables, one per ISA file; nullptr where that ISA has no kernel for the type (or the file
// was compiled for another architecture). scalar_row_dot covers every type with matmul support.
RowDotFn scalar_row_dot(GgmlType type);
RowDotFn avx2_row_dot(GgmlType type);
RowDotFn avx512_row_dot(GgmlType type);
RowDotFn neon_row_dot(GgmlType type);

// The kernel matmul uses for `type` at level `isa` (falls back level by level), and the level it
// actually comes from.
RowDotFn select_row_dot(GgmlType type, Isa isa, Isa* chosen = nullptr);

// matmul (ops.h) with the kernel level given explicitly; tests compare the levels on one CPU.
void matmul_at_isa(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool& pool, Isa isa);

}  // namespace sinkstream
