// AVX-512 attention row kernels (F + F16C; compiled with those flags only in this file, called only
// when cpu_features.h reports the AVX-512 level and head_dim % 16 == 0). The scalar twins in
// attention.cc are the specification; the softmax and half rounding are the AVX2 file's.
//
// Why a second x86 version: a query-head group of 3 (SmolLM2: 9 query / 3 KV heads) against blocks
// of 4 rows needs 12 accumulators plus the 4 converted key vectors, more than AVX2's 16 registers,
// and the spilled accumulators put a store-to-load round trip into every FMA chain. With 32
// registers a block of 4 rows x up to 4 heads stays in registers, and a 64-element head is 4 vectors.
// On Zen 4 a 512-bit FMA takes both 256-bit pipes, so the gain is registers and fewer instructions
// per element, not wider arithmetic.
#include "ops/cpu/attention_kernels.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>

// GCC 12's AVX-512 intrinsics use _mm512_undefined_* as pass-through operands, which -Wmaybe-
// uninitialized reports at every inlined use (GCC bug 105593, fixed in GCC 13): not our code's.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace sinkstream::attention_kernels {

namespace {

constexpr int kMaxHeads = 4;  // query heads per pass: 4 x 4 accumulators + 4 key vectors + 1 query

static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Four accumulators (one per row, lanes hold partial sums) -> the four dot products, in one vector.
static inline __m128 sum_four(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  // 512 -> 256: add the halves; then the AVX2 reduction of four 256-bit sums.
  const auto half = [](__m512 v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  };
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(half(a0), half(a1)), _mm256_hadd_ps(half(a2), half(a3)));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// Scores of HN heads (q: HN x dim, contiguous) against all n_rows rows: blocks of 4 rows with one
// reduction per head and block, then the leftover rows one by one.
template <typename T, int HN>
static void score_heads(const T* keys, int64_t n_rows, int64_t row_stride, const float* q, int64_t dim, float scale,
                        float* scores, int64_t scores_stride) {
  const __m128 vscale = _mm_set1_ps(scale);
  int64_t r = 0;
  for (; r + 4 <= n_rows; r += 4) {
    const T* k = keys + r * row_stride;
    for (int j = 0; j < 4; ++j) prefetch_row_ahead(k + j * row_stride, row_stride, dim);
    __m512 acc[HN][4];
    for (int h = 0; h < HN; ++h)
      for (int j = 0; j < 4; ++j) acc[h][j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) {
      __m512 kv[4];
      for (int j = 0; j < 4; ++j) kv[j] = load16(k + j * row_stride + i);
      for (int h = 0; h < HN; ++h) {
        const __m512 qv = _mm512_loadu_ps(q + h * dim + i);
        for (int j = 0; j < 4; ++j) acc[h][j] = _mm512_fmadd_ps(qv, kv[j], acc[h][j]);
      }
    }
    for (int h = 0; h < HN; ++h)
      _mm_storeu_ps(scores + h * scores_stride + r,
                    _mm_mul_ps(sum_four(acc[h][0], acc[h][1], acc[h][2], acc[h][3]), vscale));
  }
  for (; r < n_rows; ++r) {
    const T* k = keys + r * row_stride;
    __m512 acc[HN];
    for (int h = 0; h < HN; ++h) acc[h] = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) {
      const __m512 kv = load16(k + i);
      for (int h = 0; h < HN; ++h) acc[h] = _mm512_fmadd_ps(_mm512_loadu_ps(q + h * dim + i), kv, acc[h]);
    }
    for (int h = 0; h < HN; ++h) scores[h * scores_stride + r] = _mm512_reduce_add_ps(acc[h]) * scale;
  }
}

template <typename T>
static void score_rows(const T* keys, int64_t n_rows, int64_t row_stride, const float* q, int64_t group, int64_t dim,
                       float scale, float* scores, int64_t scores_stride) {
  for_head_passes<kMaxHeads>(group, [&](int64_t h0, auto heads) {
    score_heads<T, decltype(heads)::value>(keys, n_rows, row_stride, q + h0 * dim, dim, scale,
                                           scores + h0 * scores_stride, scores_stride);
  });
}

// out[h] += sum_r w[h, r] * v_r for HN heads over NB * 16 columns: HN x NB accumulators stay in
// registers for all rows, and each value vector is converted once for the HN heads.
template <typename T, int HN, int NB>
static void accumulate_block(const T* values, int64_t n_rows, int64_t row_stride, const float* weights,
                             int64_t weights_stride, float* out, int64_t dim) {
  __m512 acc[HN][NB];
  for (int h = 0; h < HN; ++h)
    for (int b = 0; b < NB; ++b) acc[h][b] = _mm512_loadu_ps(out + h * dim + 16 * b);
  for (int64_t r = 0; r < n_rows; ++r) {
    const T* v = values + r * row_stride;
    prefetch_row_ahead(v, row_stride, 16 * NB);
    __m512 vv[NB];
    for (int b = 0; b < NB; ++b) vv[b] = load16(v + 16 * b);
    for (int h = 0; h < HN; ++h) {
      const __m512 w = _mm512_set1_ps(weights[h * weights_stride + r]);
      for (int b = 0; b < NB; ++b) acc[h][b] = _mm512_fmadd_ps(w, vv[b], acc[h][b]);
    }
  }
  for (int h = 0; h < HN; ++h)
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(out + h * dim + 16 * b, acc[h][b]);
}

template <typename T, int HN>
static void accumulate_heads(const T* values, int64_t n_rows, int64_t row_stride, const float* weights,
                             int64_t weights_stride, float* out, int64_t dim) {
  for (int64_t i0 = 0; i0 < dim; i0 += 64) {  // columns in pieces of up to 4 vectors
    const T* v = values + i0;
    float* o = out + i0;
    switch ((dim - i0 < 64 ? dim - i0 : 64) / 16) {
      case 1: accumulate_block<T, HN, 1>(v, n_rows, row_stride, weights, weights_stride, o, dim); break;
      case 2: accumulate_block<T, HN, 2>(v, n_rows, row_stride, weights, weights_stride, o, dim); break;
      case 3: accumulate_block<T, HN, 3>(v, n_rows, row_stride, weights, weights_stride, o, dim); break;
      default: accumulate_block<T, HN, 4>(v, n_rows, row_stride, weights, weights_stride, o, dim); break;
    }
  }
}

template <typename T>
static void accumulate_rows(const T* values, int64_t n_rows, int64_t row_stride, const float* weights,
                            int64_t weights_stride, int64_t group, int64_t dim, float* out) {
  for_head_passes<kMaxHeads>(group, [&](int64_t h0, auto heads) {
    accumulate_heads<T, decltype(heads)::value>(values, n_rows, row_stride, weights + h0 * weights_stride,
                                                weights_stride, out + h0 * dim, dim);
  });
}

}  // namespace

Kernels avx512_kernels() {
  const Kernels avx2 = avx2_kernels();
  return Kernels{score_rows<uint16_t>, score_rows<float>, accumulate_rows<uint16_t>, accumulate_rows<float>,
                 avx2.softmax,         avx2.round_to_half, avx2.score_q8,           avx2.accumulate_q8,
                 avx2.to_half_bits};
}

}  // namespace sinkstream::attention_kernels

#else  // not compiled for AVX-512 (another architecture): never called (see cpu_features.h)

namespace sinkstream::attention_kernels {
Kernels avx512_kernels() { return Kernels{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr}; }
}  // namespace sinkstream::attention_kernels

#endif
