// AVX-512 attention row kernels for f16, f32 and Q8_0 cache rows (F + F16C; compiled with those
// flags only in this file, called only when cpu_features.h reports the AVX-512 level and head_dim %
// 16 == 0). The scalar twins in attention.cc are the specification; the softmax and half rounding
// are the AVX2 file's.
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

// The cache's rows with this file's vector load (attention_kernels.h).
struct FloatRows : PlainRows<float> {
  __m512 load16(int64_t r, int64_t i) const { return _mm512_loadu_ps(at(r, i)); }
};

struct HalfRows : PlainRows<uint16_t> {
  __m512 load16(int64_t r, int64_t i) const {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at(r, i))));
  }
};

struct Q8Rows : Q8BlockRows {  // the int8 values widened to floats, times the block's scale d
  __m512 load16(int64_t r, int64_t i) const {
    const BlockQ8_0* b = block(r, i);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b->qs + i % kQK));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_set1_ps(_cvtsh_ss(b->d)));
  }
};

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
template <typename Rows, int HN>
static void score_heads(const Rows& keys, int64_t n_rows, const float* q, int64_t dim, float scale, float* scores,
                        int64_t scores_stride) {
  const __m128 vscale = _mm_set1_ps(scale);
  int64_t r = 0;
  for (; r + 4 <= n_rows; r += 4) {
    for (int j = 0; j < 4; ++j) keys.prefetch_ahead(r + j, 0, dim);
    __m512 acc[HN][4];
    for (int h = 0; h < HN; ++h)
      for (int j = 0; j < 4; ++j) acc[h][j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) {
      __m512 kv[4];
      for (int j = 0; j < 4; ++j) kv[j] = keys.load16(r + j, i);
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
    __m512 acc[HN];
    for (int h = 0; h < HN; ++h) acc[h] = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) {
      const __m512 kv = keys.load16(r, i);
      for (int h = 0; h < HN; ++h) acc[h] = _mm512_fmadd_ps(_mm512_loadu_ps(q + h * dim + i), kv, acc[h]);
    }
    // Reduced as in a block of four, so a row's score does not depend on where the run that holds
    // it starts (the ring's wrap point moves with the chunk size: streaming.md invariant 1).
    const __m512 zero = _mm512_setzero_ps();
    for (int h = 0; h < HN; ++h)
      scores[h * scores_stride + r] = _mm_cvtss_f32(_mm_mul_ss(sum_four(acc[h], zero, zero, zero), vscale));
  }
}

// A Kernels entry: the rows of one storage type (Rows over T) in the kernels' terms.
template <typename Rows, typename T>
static void score_rows(const T* key_rows, int64_t n_rows, int64_t row_stride, const float* q, int64_t group,
                       int64_t dim, float scale, float* scores, int64_t scores_stride) {
  const Rows keys{{key_rows, row_stride}};
  for_head_passes<kMaxHeads>(group, [&](int64_t h0, auto heads) {
    score_heads<Rows, decltype(heads)::value>(keys, n_rows, q + h0 * dim, dim, scale, scores + h0 * scores_stride,
                                              scores_stride);
  });
}

// out[h] += sum_r w[h, r] * v_r for HN heads over NB * 16 columns from i0: HN x NB accumulators
// stay in registers for all rows, and each value vector is converted once for the HN heads.
template <typename Rows, int HN, int NB>
static void accumulate_block(const Rows& values, int64_t r_begin, int64_t r_end, int64_t i0, const float* weights,
                             int64_t weights_stride, float* out, int64_t dim) {
  __m512 acc[HN][NB];
  for (int h = 0; h < HN; ++h)
    for (int b = 0; b < NB; ++b) acc[h][b] = _mm512_loadu_ps(out + h * dim + i0 + 16 * b);
  for (int64_t r = r_begin; r < r_end; ++r) {
    values.prefetch_ahead(r, i0, 16 * NB);
    __m512 vv[NB];
    for (int b = 0; b < NB; ++b) vv[b] = values.load16(r, i0 + 16 * b);
    for (int h = 0; h < HN; ++h) {
      const __m512 w = _mm512_set1_ps(weights[h * weights_stride + r]);
      for (int b = 0; b < NB; ++b) acc[h][b] = _mm512_fmadd_ps(w, vv[b], acc[h][b]);
    }
  }
  for (int h = 0; h < HN; ++h)
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(out + h * dim + i0 + 16 * b, acc[h][b]);
}

// Rows per block when a row is wider than one piece of columns: every piece of a block's rows is
// done before the next block, so the rows are read front to back once (a dense stream the hardware
// prefetchers follow) and each later piece finds them in L1 (16 rows of a 256-wide f16 head: 8 KB).
// One piece after the other over all rows read every row from memory once per piece, in a sparse
// pattern: Gemma 3's 256-wide heads with a cold cache ran at half the bytes/s. Each output element
// still sums its rows in order, so the bits are those of a single pass.
constexpr int64_t kAccumulateRowBlock = 16;

template <typename Rows, int HN>
static void accumulate_heads(const Rows& values, int64_t n_rows, const float* weights, int64_t weights_stride,
                             float* out, int64_t dim) {
  const int64_t row_block = dim <= 64 ? n_rows : kAccumulateRowBlock;
  for (int64_t r0 = 0; r0 < n_rows; r0 += row_block) {
    const int64_t r1 = r0 + row_block < n_rows ? r0 + row_block : n_rows;
    for (int64_t i0 = 0; i0 < dim; i0 += 64) {  // columns in pieces of up to 4 vectors
      switch ((dim - i0 < 64 ? dim - i0 : 64) / 16) {
        case 1: accumulate_block<Rows, HN, 1>(values, r0, r1, i0, weights, weights_stride, out, dim); break;
        case 2: accumulate_block<Rows, HN, 2>(values, r0, r1, i0, weights, weights_stride, out, dim); break;
        case 3: accumulate_block<Rows, HN, 3>(values, r0, r1, i0, weights, weights_stride, out, dim); break;
        default: accumulate_block<Rows, HN, 4>(values, r0, r1, i0, weights, weights_stride, out, dim); break;
      }
    }
  }
}

template <typename Rows, typename T>  // a Kernels entry, as score_rows
static void accumulate_rows(const T* value_rows, int64_t n_rows, int64_t row_stride, const float* weights,
                            int64_t weights_stride, int64_t group, int64_t dim, float* out) {
  const Rows values{{value_rows, row_stride}};
  for_head_passes<kMaxHeads>(group, [&](int64_t h0, auto heads) {
    accumulate_heads<Rows, decltype(heads)::value>(values, n_rows, weights + h0 * weights_stride, weights_stride,
                                                   out + h0 * dim, dim);
  });
}


}  // namespace

Kernels avx512_kernels() {
  const Kernels avx2 = avx2_kernels();
  return Kernels{score_rows<HalfRows>,      score_rows<FloatRows>, accumulate_rows<HalfRows>,
                 accumulate_rows<FloatRows>, avx2.softmax, avx2.round_to_half,
                 score_rows<Q8Rows>,   accumulate_rows<Q8Rows>, avx2.to_half_bits};
}

}  // namespace sinkstream::attention_kernels

#else  // not compiled for AVX-512 (another architecture): never called (see cpu_features.h)

namespace sinkstream::attention_kernels {
Kernels avx512_kernels() { return Kernels{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr}; }
}  // namespace sinkstream::attention_kernels

#endif
