// Internal interface between matmul.cc and the per-ISA dot-product kernels (vec_dot_*.cc).
//
// A matmul row of Y is dot(weight row, activation row). Quantized weights are not dequantized:
// the activation row X is quantized once per call to 8-bit blocks that line up with the weight
// blocks, and the kernels multiply integers, applying the float scales once per block:
//   dot = sum over blocks of d_w * d_x * sum_i(q_w[i] * q_x[i])   (+ min/offset terms per format)
// The 8-bit activation quantization costs about 0.4 % relative error per dot product (its rounding
// error is at most half a step, d_x / 2, per element, independent between elements).
//
// The activation quantizers of all ISAs give bit-identical bytes (the same IEEE operations: max|x|,
// d = max / 127, id = 127 / max, x * id, round half to even; Q8A keeps d at half precision), so the
// integer products are identical across ISAs and kernel paths differ only in float summation order.
#pragma once
#include <cstdint>

#include "core/thread_pool.h"
#include "ops/cpu/cpu_features.h"
#include "ops/ops.h"
#include "quant/quant_blocks.h"
#include "quant/quant_types.h"

namespace sinkstream {

// Activation row for the 32-element weight formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL), nb blocks:
//   int8 qs[64 * ceil(nb / 2)]  blocks in pairs (2p, 2p + 1), each pair 64 bytes laid out as
//                               [2p: 0..15][2p+1: 0..15][2p: 16..31][2p+1: 16..31]
//                               (an unpaired last block has zeros in its partner's places)
//   Q8AScale scales[nb]         x[i] ~= d * qs[i] per block; ds = d * sum(qs) serves the min
//                               (Q4_1, Q5_1) and offset (Q4_0, Q5_0, ...) terms
// then padding to a multiple of 64 bytes. The pair layout matches how packed nibbles unpack: the
// 16 bytes of two consecutive Q4 blocks give [lo nibbles | lo nibbles] and [hi | hi], which line up
// with the pair's first and second 32 activation bytes, so SIMD code does two blocks per vector.
struct Q8AScale {
  float d;
  float ds;
};
static_assert(sizeof(Q8AScale) == 8, "Q8AScale is 8 bytes");

// Byte offset, within a Q8A activation row, of the 16 quants [16 * half, 16 * half + 16) of block b.
inline int64_t q8a_quant_offset(int64_t b, int half) { return 64 * (b / 2) + 32 * half + 16 * (b % 2); }
// Byte offset of the Q8AScale array in a row of nb blocks.
inline int64_t q8a_scales_offset(int64_t nb) { return 64 * ((nb + 1) / 2); }

// Activation block for the K-quants (256-element super-blocks); 64-byte aligned size so the quants
// of every block in a row start on a cache line.
struct BlockQ8KA {
  int8_t qs[kQKK];          // x[i] ~= d * qs[i]
  int16_t bsums[kQKK / 16]; // sum of each group of 16 quants
  float d;
  uint8_t padding[28];
};
static_assert(sizeof(BlockQ8KA) == 320, "BlockQ8KA is 320 bytes");

enum class ActFormat {
  F32,  // float weights (F32, F16, BF16): the activation row stays float32
  Q8A,  // 32-element blocks in pairs (layout above)
  Q8K,  // BlockQ8KA per 256 elements
};

// Which activation format the kernels for a weight type consume; throws ArgumentError for a type
// without matmul kernels.
ActFormat activation_format(GgmlType weight_type);
// Bytes of one quantized activation row of `cols` elements (a multiple of the format's block);
// a multiple of 64 for the quantized formats.
int64_t activation_row_bytes(ActFormat format, int64_t cols);
// Converts one float row to the format (F32: a copy). Round half to even, |q| <= 127. This is the
// portable reference; ISA files may provide faster, bit-identical versions.
void quantize_activations(ActFormat format, const float* x, int64_t cols, uint8_t* out);
using QuantizeFn = void (*)(ActFormat format, const float* x, int64_t cols, uint8_t* out);
QuantizeFn avx2_quantize_activations();  // nullptr when not compiled for x86-64
// The quantizer matmul uses at level `isa`.
QuantizeFn select_quantize(Isa isa);

// A tile of nr weight rows, row r at w + r * w_stride, against nt (1 .. kTokenTile) activation rows,
// row t at x + t * x_stride:  y[t * y_stride + r] = dot(weight row r, activation row t).
// n_blocks counts weight blocks per row (for F32/F16/BF16: elements). Several tokens per call let a
// kernel unpack each weight block once and reuse it from registers (prefill). Rows are done one
// after the other: interleaving rows (to share activation loads) made DRAM streaming of the weights
// 2-4x slower, as the hardware prefetchers then see short interleaved streams instead of one.
// (packed_weights.h interleaves rows in storage instead, at load, for the levels that have kernels
// for it: one contiguous stream again; these per-row kernels serve the other levels and types.)
using DotTileFn = void (*)(int64_t n_blocks, const uint8_t* w, int64_t w_stride, int nr, const uint8_t* x,
                           int64_t x_stride, int nt, float* y, int64_t y_stride);
constexpr int kTokenTile = 4;

// Kernel tables, one per ISA file; nullptr where that ISA has no kernel for the type (or the file
// was compiled for another architecture). scalar_dot_tile covers every type with matmul support.
DotTileFn scalar_dot_tile(GgmlType type);
DotTileFn avx2_dot_tile(GgmlType type);
DotTileFn avx512_dot_tile(GgmlType type);
DotTileFn neon_dot_tile(GgmlType type);     // AArch64 baseline
DotTileFn dotprod_dot_tile(GgmlType type);  // AArch64 + SDOT (vec_dot_neon.inc)
DotTileFn i8mm_dot_tile(GgmlType type);     // AArch64 + SDOT + SMMLA

// The kernel matmul uses for `type` at level `isa` (falls back level by level), and the level it
// actually comes from.
DotTileFn select_dot_tile(GgmlType type, Isa isa, Isa* chosen = nullptr);

// matmul / matmul_shared_input (ops.h) with the kernel level given explicitly; tests compare the
// levels on one CPU.
void matmul_at_isa(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool& pool, Isa isa);
void matmul_shared_input_at_isa(const WeightMatrix* const* ws, float* const* ys, int count, const float* x, int64_t n,
                                ThreadPool& pool, Isa isa);

}  // namespace sinkstream
