// AVX2 + FMA + F16C attention row kernels (compiled with those flags only in this file; called only
// after cpu_features.h reports the AVX2 level). The scalar twins in attention.cc are the specification.
#include "ops/cpu/attention_kernels.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

namespace sinkstream::attention_kernels {

namespace {

static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

static inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Up to 8 query heads per pass share each loaded key vector (GQA groups are 1..8 in practice).
template <typename T>
static void score_rows(const T* keys, int64_t n_rows, int64_t row_stride, const float* q, int64_t group, int64_t dim,
                       float scale, float* scores) {
  for (int64_t h0 = 0; h0 < group; h0 += 8) {
    const int64_t hn = group - h0 < 8 ? group - h0 : 8;
    for (int64_t r = 0; r < n_rows; ++r) {
      const T* k = keys + r * row_stride;
      __m256 acc[8];
      for (int64_t h = 0; h < hn; ++h) acc[h] = _mm256_setzero_ps();
      for (int64_t i = 0; i < dim; i += 8) {
        const __m256 kv = load8(k + i);
        for (int64_t h = 0; h < hn; ++h) acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (h0 + h) * dim + i), kv, acc[h]);
      }
      for (int64_t h = 0; h < hn; ++h) scores[r * group + h0 + h] = horizontal_sum(acc[h]) * scale;
    }
  }
}

// out[h] += sum_r w[r, h] * v_r: the output of a head (dim <= 256) stays in registers over all rows.
template <typename T>
static void accumulate_rows(const T* values, int64_t n_rows, int64_t row_stride, const float* weights, int64_t group,
                            int64_t dim, float* out) {
  for (int64_t h = 0; h < group; ++h) {
    float* o = out + h * dim;
    for (int64_t i0 = 0; i0 < dim; i0 += 32) {
      const int64_t width = dim - i0 < 32 ? dim - i0 : 32;  // multiple of 8
      __m256 acc[4];
      for (int64_t b = 0; b < width / 8; ++b) acc[b] = _mm256_loadu_ps(o + i0 + 8 * b);
      for (int64_t r = 0; r < n_rows; ++r) {
        const __m256 w = _mm256_set1_ps(weights[r * group + h]);
        const T* v = values + r * row_stride + i0;
        for (int64_t b = 0; b < width / 8; ++b) acc[b] = _mm256_fmadd_ps(w, load8(v + 8 * b), acc[b]);
      }
      for (int64_t b = 0; b < width / 8; ++b) _mm256_storeu_ps(o + i0 + 8 * b, acc[b]);
    }
  }
}

}  // namespace

Kernels avx2_kernels() {
  return Kernels{score_rows<uint16_t>, score_rows<float>, accumulate_rows<uint16_t>, accumulate_rows<float>};
}

}  // namespace sinkstream::attention_kernels

#else  // not compiled for AVX2 (another architecture): never called (see cpu_features.h)

namespace sinkstream::attention_kernels {
Kernels avx2_kernels() { return Kernels{nullptr, nullptr, nullptr, nullptr}; }
}  // namespace sinkstream::attention_kernels

#endif
