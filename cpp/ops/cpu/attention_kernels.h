// Row kernels of attention over cache rows (f16 bits or f32), shared by the reference and the SIMD
// variants. A "run" is consecutive cache slots; attend() walks the sinks and the (at most two,
// because of the ring's wrap) runs of the window.
#pragma once
#include <cstdint>

namespace sinkstream::attention_kernels {

// scores[r * group + h] = scale * dot(q[h], row r), rows r < n_rows at keys + r * row_stride.
using ScoreRowsF16 = void (*)(const uint16_t* keys, int64_t n_rows, int64_t row_stride, const float* q,
                              int64_t group, int64_t dim, float scale, float* scores);
using ScoreRowsF32 = void (*)(const float* keys, int64_t n_rows, int64_t row_stride, const float* q,
                              int64_t group, int64_t dim, float scale, float* scores);
// out[h] += sum_r weights[r * group + h] * row r.
using AccumulateRowsF16 = void (*)(const uint16_t* values, int64_t n_rows, int64_t row_stride,
                                   const float* weights, int64_t group, int64_t dim, float* out);
using AccumulateRowsF32 = void (*)(const float* values, int64_t n_rows, int64_t row_stride,
                                   const float* weights, int64_t group, int64_t dim, float* out);

struct Kernels {
  ScoreRowsF16 score_f16;
  ScoreRowsF32 score_f32;
  AccumulateRowsF16 accumulate_f16;
  AccumulateRowsF32 accumulate_f32;
};

// AVX2 + FMA + F16C versions (attention_avx2.cc); only called when the CPU has them and dim % 8 == 0.
Kernels avx2_kernels();

}  // namespace sinkstream::attention_kernels
