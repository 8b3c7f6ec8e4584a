// Row kernels of attention over cache rows (f16 bits or f32), shared by the reference and the SIMD
// variants. A "run" is consecutive cache slots; attend() walks the sinks and the (at most two,
// because of the ring's wrap) runs of the window.
//
// Scores are head-major: head h of the GQA group keeps its |A(t)| scores contiguous at
// scores + h * scores_stride, so the softmax of one head is one contiguous (vectorizable) pass.
#pragma once
#include <cstdint>
#include <type_traits>

#include "kv/sink_cache.h"
#include "ops/cpu/cpu_features.h"
#include "ops/ops.h"
#include "quant/quant_blocks.h"

namespace sinkstream::attention_kernels {

// scores[h * scores_stride + r] = scale * dot(q[h], row r), rows r < n_rows at keys + r * row_stride.
using ScoreRowsF16 = void (*)(const uint16_t* keys, int64_t n_rows, int64_t row_stride, const float* q,
                              int64_t group, int64_t dim, float scale, float* scores, int64_t scores_stride);
using ScoreRowsF32 = void (*)(const float* keys, int64_t n_rows, int64_t row_stride, const float* q,
                              int64_t group, int64_t dim, float scale, float* scores, int64_t scores_stride);
// out[h] += sum_r weights[h * weights_stride + r] * row r.
using AccumulateRowsF16 = void (*)(const uint16_t* values, int64_t n_rows, int64_t row_stride,
                                   const float* weights, int64_t weights_stride, int64_t group, int64_t dim,
                                   float* out);
using AccumulateRowsF32 = void (*)(const float* values, int64_t n_rows, int64_t row_stride,
                                   const float* weights, int64_t weights_stride, int64_t group, int64_t dim,
                                   float* out);
// The same over rows of GGML Q8_0 blocks (row r at keys + r * row_bytes; dim % 32 == 0).
using ScoreRowsQ8 = void (*)(const uint8_t* keys, int64_t n_rows, int64_t row_bytes, const float* q, int64_t group,
                             int64_t dim, float scale, float* scores, int64_t scores_stride);
using AccumulateRowsQ8 = void (*)(const uint8_t* values, int64_t n_rows, int64_t row_bytes, const float* weights,
                                  int64_t weights_stride, int64_t group, int64_t dim, float* out);
// s[0..n) = softmax(s[0..n)) in place; with round_half each weight is then rounded to half precision
// (the f16 cache multiplies half-precision weights by half-precision values, as llama.cpp does).
// `sink`: a learned sink logit (gpt-oss; StreamingLLM paper section 3.3's "sink token" learned as a
// parameter), or -inf for none: it takes part in the max and adds exp(sink - max) to the
// denominator, a softmax column with no value, so the weights sum to 1 - p(sink):
//   w_r = exp(s_r - m) / (exp(sink - m) + sum_r' exp(s_r' - m)),  m = max(sink, max_r s_r).
using SoftmaxInPlace = void (*)(float* s, int64_t n, float sink, bool round_half);
// out[i] = in[i] rounded to the nearest half-precision value (ties to even).
using RoundToHalf = void (*)(const float* in, int64_t n, float* out);
// out[i] = the half-precision bits of in[i], rounded the same way (fp16.h's f32_to_fp16).
using ToHalfBits = void (*)(const float* in, int64_t n, uint16_t* out);

// The query heads of a GQA group in passes of at most kMaxHeads (1 .. 4): calls
// fn(h0, std::integral_constant<int, HN>{}) for h0 = 0, kMaxHeads, ... with HN = min(kMaxHeads,
// group - h0), so the SIMD kernels get the pass size as a compile-time constant (their register
// blocks are sized by it). Generic code, no intrinsics: the SIMD files share it.
template <int kMaxHeads, typename Fn>
inline void for_head_passes(int64_t group, Fn&& fn) {
  static_assert(kMaxHeads >= 1 && kMaxHeads <= 4, "passes of 1 to 4 heads");
  for (int64_t h0 = 0; h0 < group; h0 += kMaxHeads) {
    switch (group - h0 < kMaxHeads ? group - h0 : kMaxHeads) {
      case 1: fn(h0, std::integral_constant<int, 1>{}); break;
      case 2: if constexpr (kMaxHeads >= 2) fn(h0, std::integral_constant<int, 2>{}); break;
      case 3: if constexpr (kMaxHeads >= 3) fn(h0, std::integral_constant<int, 3>{}); break;
      default: if constexpr (kMaxHeads >= 4) fn(h0, std::integral_constant<int, 4>{}); break;
    }
  }
}

// Cache rows are read once per token, a stream for which the hardware prefetchers alone keep too
// few requests in flight (on the AVX-512 machine measured, attention read at about half the bytes/s
// of the weight kernels, which prefetch). The SIMD kernels ask for the row kPrefetchRows ahead of
// the one they load; past the end of a run that touches lines of the next head or layer, harmless
// (a prefetch never faults). Not far: on the AVX-512 + AMX Xeon, a standalone loop over one token's
// attention (f16 cache, medians of 30) took 5-18% less time with 16 rows than with 64, cold or warm
// in L3, for SmolLM2's 64-wide and Gemma 3's 256-wide heads and for 120 or 700 rows; 8 and 24 were
// about as good as 16, none at all 10-25% slower. Requests far ahead hold the core's few line-fill
// buffers longer than the hardware prefetchers, which run ahead of the nearer ones, need them to.
constexpr int64_t kPrefetchRows = 16;
// n_bytes from `ahead` bytes past p. Integer arithmetic: the address may lie past the cache's
// storage, where pointer arithmetic would be undefined.
inline void prefetch_bytes(const void* p, int64_t ahead, int64_t n_bytes) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) + (uintptr_t)ahead;
  for (int64_t i = 0; i < n_bytes; i += 64) __builtin_prefetch(reinterpret_cast<const void*>(first + (uintptr_t)i), 0, 3);
}
// The first `elements` of the row kPrefetchRows rows after `row` (rows row_stride elements apart).
template <typename T>
inline void prefetch_row_ahead(const T* row, int64_t row_stride, int64_t elements) {
  prefetch_bytes(row, kPrefetchRows * row_stride * (int64_t)sizeof(T), elements * (int64_t)sizeof(T));
}

// Cache rows as the SIMD kernels address them; each ISA file adds a load of one vector of floats
// (load16 / load8 / load4 at row r, column i), so one kernel template serves every storage type.
// prefetch_ahead(r, i, n) asks for the bytes of columns i .. i + n - 1 of the row kPrefetchRows
// after r.
template <typename T>
struct PlainRows {  // f32 or f16 bits
  const T* base;
  int64_t stride;  // elements from one row to the next
  const T* at(int64_t r, int64_t i) const { return base + r * stride + i; }
  void prefetch_ahead(int64_t r, int64_t i, int64_t n) const { prefetch_row_ahead(at(r, i), stride, n); }
};

// GGML Q8_0 blocks (sink_cache.h): a row is dim / 32 blocks of an f16 scale d and 32 int8 values;
// a vector of at most 32 columns from a multiple of its width never straddles two blocks.
struct Q8BlockRows {
  const uint8_t* base;
  int64_t row_bytes;
  const BlockQ8_0* block(int64_t r, int64_t i) const {
    return reinterpret_cast<const BlockQ8_0*>(base + r * row_bytes) + i / kQK;
  }
  void prefetch_ahead(int64_t r, int64_t i, int64_t n) const {
    const int64_t first = i / kQK * (int64_t)sizeof(BlockQ8_0);
    const int64_t last = (i + n + kQK - 1) / kQK * (int64_t)sizeof(BlockQ8_0);
    prefetch_bytes(base + r * row_bytes + first, kPrefetchRows * row_bytes, last - first);
  }
};

struct Kernels {
  ScoreRowsF16 score_f16;
  ScoreRowsF32 score_f32;
  AccumulateRowsF16 accumulate_f16;
  AccumulateRowsF32 accumulate_f32;
  SoftmaxInPlace softmax;
  RoundToHalf round_to_half;
  // Q8_0 rows; nullptr where a level has none (the scalar twins serve then).
  ScoreRowsQ8 score_q8 = nullptr;
  AccumulateRowsQ8 accumulate_q8 = nullptr;
  ToHalfBits to_half_bits = nullptr;  // nullptr: the scalar conversion (fp16.h)
};

// AVX2 + FMA + F16C versions (attention_avx2.cc); only called when the CPU has them and dim % 8 == 0.
Kernels avx2_kernels();
// AVX-512 versions (attention_avx512.cc; softmax and rounding from AVX2); only called at the
// AVX-512 level with dim % 16 == 0.
Kernels avx512_kernels();
// NEON versions (attention_neon.cc); AArch64 only, dim % 4 == 0.
Kernels neon_kernels();

}  // namespace sinkstream::attention_kernels

namespace sinkstream {
// The vectorized f32 -> f16 row conversion of level `isa` for SinkCache::store (the same bits as
// the scalar one), or nullptr where the level has none.
SinkCache::HalfRowFn half_row_conversion(Isa isa);

// attend() (ops.h) with the kernel level given explicitly (falling back to narrower kernels where
// head_dim does not suit the level); tests compare the levels on one CPU.
int64_t attend_at_isa(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
                      const float* q_sink, const float* q_window, float scale, const ScoreBias& bias, float* scores,
                      float* out, Isa isa);
}  // namespace sinkstream
