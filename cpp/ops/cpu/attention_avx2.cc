// AVX2 + FMA + F16C attention row kernels (compiled with those flags only in this file; called only
// after cpu_features.h reports the AVX2 level). The scalar twins in attention.cc are the specification.
#include "ops/cpu/attention_kernels.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <cmath>

namespace sinkstream::attention_kernels {

namespace {

// The cache's rows with this file's vector load (attention_kernels.h).
struct FloatRows : PlainRows<float> {
  __m256 load8(int64_t r, int64_t i) const { return _mm256_loadu_ps(at(r, i)); }
};

struct HalfRows : PlainRows<uint16_t> {
  __m256 load8(int64_t r, int64_t i) const {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at(r, i))));
  }
};

struct Q8Rows : Q8BlockRows {  // the int8 values widened to floats, times the block's scale d
  __m256 load8(int64_t r, int64_t i) const {
    const BlockQ8_0* b = block(r, i);
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b->qs + i % kQK));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_set1_ps(_cvtsh_ss(b->d)));
  }
};

static inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Up to four accumulators (rows r..r+3, lanes hold partial sums) -> their dot products, in one vector.
static inline __m128 sum_four(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// Blocks of R rows x HN heads, every accumulator in a register: R * HN accumulators + R key vectors
// + 1 query vector <= 16 (a 4 x 3 block needs 17, and the spilled accumulators put a store-to-load
// round trip into the FMA chains). Each key vector is converted once for HN heads and the R scores
// of a head come out of one reduction; leftover rows go one by one.
template <typename Rows, int HN, int R>
static void score_heads(const Rows& keys, int64_t n_rows, const float* q, int64_t dim, float scale, float* scores,
                        int64_t scores_stride) {
  static_assert(R * HN + R + 1 <= 16 && R <= 4, "block must fit the 16 vector registers");
  const __m128 vscale = _mm_set1_ps(scale);
  int64_t r = 0;
  for (; r + R <= n_rows; r += R) {
    for (int j = 0; j < R; ++j) keys.prefetch_ahead(r + j, 0, dim);
    __m256 acc[HN][4];
    for (int h = 0; h < HN; ++h)
      for (int j = 0; j < 4; ++j) acc[h][j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < dim; i += 8) {
      __m256 kv[R];
      for (int j = 0; j < R; ++j) kv[j] = keys.load8(r + j, i);
      for (int h = 0; h < HN; ++h) {
        const __m256 qv = _mm256_loadu_ps(q + h * dim + i);
        for (int j = 0; j < R; ++j) acc[h][j] = _mm256_fmadd_ps(qv, kv[j], acc[h][j]);
      }
    }
    for (int h = 0; h < HN; ++h) {
      const __m128 dots = _mm_mul_ps(sum_four(acc[h][0], acc[h][1], acc[h][2], acc[h][3]), vscale);
      if (R == 4) {
        _mm_storeu_ps(scores + h * scores_stride + r, dots);
      } else {
        alignas(16) float lanes[4];
        _mm_store_ps(lanes, dots);
        for (int j = 0; j < R; ++j) scores[h * scores_stride + r + j] = lanes[j];
      }
    }
  }
  for (; r < n_rows; ++r) {
    __m256 acc[HN];
    for (int h = 0; h < HN; ++h) acc[h] = _mm256_setzero_ps();
    for (int64_t i = 0; i < dim; i += 8) {
      const __m256 kv = keys.load8(r, i);
      for (int h = 0; h < HN; ++h) acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * dim + i), kv, acc[h]);
    }
    // Reduced as in a block of four, so a row's score does not depend on where the run that holds
    // it starts (the ring's wrap point moves with the chunk size: streaming.md invariant 1).
    const __m256 zero = _mm256_setzero_ps();
    for (int h = 0; h < HN; ++h)
      scores[h * scores_stride + r] = _mm_cvtss_f32(_mm_mul_ss(sum_four(acc[h], zero, zero, zero), vscale));
  }
}

// A Kernels entry: the rows of one storage type (Rows over T) in the kernels' terms.
template <typename Rows, typename T>
static void score_rows(const T* key_rows, int64_t n_rows, int64_t row_stride, const float* q, int64_t group,
                       int64_t dim, float scale, float* scores, int64_t scores_stride) {
  const Rows keys{{key_rows, row_stride}};
  // Passes of 3 heads (3 x 3 blocks) when the group divides by 3, else pairs (2 heads x 4 rows).
  const auto pass = [&](int64_t h0, auto heads) {
    constexpr int kHeads = decltype(heads)::value;
    score_heads<Rows, kHeads, kHeads == 3 ? 3 : 4>(keys, n_rows, q + h0 * dim, dim, scale, scores + h0 * scores_stride,
                                                   scores_stride);
  };
  if (group % 3 == 0) for_head_passes<3>(group, pass);
  else for_head_passes<2>(group, pass);
}

// out[h] += sum_r w[h, r] * v_r for HN <= 2 heads over NB * 8 columns from i0 (NB <= 4): the
// HN x NB accumulators, NB value vectors and the weight stay in registers for all rows, and each
// value vector is converted once for the HN heads.
template <typename Rows, int HN, int NB>
static void accumulate_block(const Rows& values, int64_t n_rows, int64_t i0, const float* weights,
                             int64_t weights_stride, float* out, int64_t dim) {
  __m256 acc[HN][NB];
  for (int h = 0; h < HN; ++h)
    for (int b = 0; b < NB; ++b) acc[h][b] = _mm256_loadu_ps(out + h * dim + i0 + 8 * b);
  for (int64_t r = 0; r < n_rows; ++r) {
    values.prefetch_ahead(r, i0, 8 * NB);
    __m256 vv[NB];
    for (int b = 0; b < NB; ++b) vv[b] = values.load8(r, i0 + 8 * b);
    for (int h = 0; h < HN; ++h) {
      const __m256 w = _mm256_set1_ps(weights[h * weights_stride + r]);
      for (int b = 0; b < NB; ++b) acc[h][b] = _mm256_fmadd_ps(w, vv[b], acc[h][b]);
    }
  }
  for (int h = 0; h < HN; ++h)
    for (int b = 0; b < NB; ++b) _mm256_storeu_ps(out + h * dim + i0 + 8 * b, acc[h][b]);
}

template <typename Rows, int HN>
static void accumulate_heads(const Rows& values, int64_t n_rows, const float* weights, int64_t weights_stride,
                             float* out, int64_t dim) {
  int64_t i0 = 0;
  for (; i0 + 32 <= dim; i0 += 32)
    accumulate_block<Rows, HN, 4>(values, n_rows, i0, weights, weights_stride, out, dim);
  for (; i0 < dim; i0 += 8) accumulate_block<Rows, HN, 1>(values, n_rows, i0, weights, weights_stride, out, dim);
}

template <typename Rows, typename T>  // a Kernels entry, as score_rows
static void accumulate_rows(const T* value_rows, int64_t n_rows, int64_t row_stride, const float* weights,
                            int64_t weights_stride, int64_t group, int64_t dim, float* out) {
  const Rows values{{value_rows, row_stride}};
  for_head_passes<2>(group, [&](int64_t h0, auto heads) {
    accumulate_heads<Rows, decltype(heads)::value>(values, n_rows, weights + h0 * weights_stride, weights_stride,
                                                   out + h0 * dim, dim);
  });
}


// exp(x) for x <= 0 (softmax inputs after the max shift), relative error ~2e-7: x = n ln2 + r with
// |r| <= ln2/2 (ln2 split in two parts so n ln2 is exact), e^r by its degree-6 Taylor polynomial
// (the first omitted term is below 1.3e-7 there), times 2^n built in the exponent field. Inputs
// below -87 (where 2^n would be subnormal) give about 1e-38: nothing next to the max term, e^0 = 1.
static inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);  // ln2 high part (exact product)
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);  // ln2 low part
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n));
}

// Lanes i < count set (the tail of a row shorter than 8).
static inline __m256i tail_mask(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __m256 round_to_half8(__m256 v) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

static void softmax(float* s, int64_t n, float sink, bool round_half) {
  const int64_t n8 = n / 8 * 8;
  const __m256i tail = tail_mask(n - n8);
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  for (int64_t r = 0; r < n8; r += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + r));
  if (n8 < n)
    vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(s + n8, tail),
                                                _mm256_castsi256_ps(tail)));
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  m = _mm_max_ss(m, _mm_set_ss(sink));  // a learned sink takes part in the max (-inf: none)
  const __m256 max_score = _mm256_set1_ps(_mm_cvtss_f32(m));

  __m256 vsum = _mm256_setzero_ps();
  for (int64_t r = 0; r < n8; r += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + r), max_score));
    _mm256_storeu_ps(s + r, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (n8 < n) {
    const __m256 e = _mm256_and_ps(exp_nonpositive(_mm256_sub_ps(_mm256_maskload_ps(s + n8, tail), max_score)),
                                   _mm256_castsi256_ps(tail));
    _mm256_maskstore_ps(s + n8, tail, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = horizontal_sum(vsum);
  if (sink != -INFINITY)  // the sink's column: in the denominator, with no value
    sum += _mm256_cvtss_f32(exp_nonpositive(_mm256_sub_ps(_mm256_set1_ps(sink), max_score)));
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (int64_t r = 0; r < n8; r += 8) {
    const __m256 w = _mm256_mul_ps(_mm256_loadu_ps(s + r), inv);
    _mm256_storeu_ps(s + r, round_half ? round_to_half8(w) : w);
  }
  if (n8 < n) {
    const __m256 w = _mm256_mul_ps(_mm256_maskload_ps(s + n8, tail), inv);
    _mm256_maskstore_ps(s + n8, tail, round_half ? round_to_half8(w) : w);
  }
}

static void round_to_half(const float* in, int64_t n, float* out) {
  const int64_t n8 = n / 8 * 8;
  for (int64_t i = 0; i < n8; i += 8) _mm256_storeu_ps(out + i, round_to_half8(_mm256_loadu_ps(in + i)));
  if (n8 < n) {
    const __m256i tail = tail_mask(n - n8);
    _mm256_maskstore_ps(out + n8, tail, round_to_half8(_mm256_maskload_ps(in + n8, tail)));
  }
}

// F16C's conversion rounds to nearest, ties to even, as fp16.h's f32_to_fp16 (the cache's rows).
static void to_half_bits(const float* in, int64_t n, uint16_t* out) {
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(in + i), kRound));
  for (; i < n; ++i) out[i] = _cvtss_sh(in[i], kRound);
}

}  // namespace

Kernels avx2_kernels() {
  return Kernels{score_rows<HalfRows>,      score_rows<FloatRows>, accumulate_rows<HalfRows>,
                 accumulate_rows<FloatRows>, softmax,              round_to_half,
                 score_rows<Q8Rows>,   accumulate_rows<Q8Rows>, to_half_bits};
}

}  // namespace sinkstream::attention_kernels

#else  // not compiled for AVX2 (another architecture): never called (see cpu_features.h)

namespace sinkstream::attention_kernels {
Kernels avx2_kernels() { return Kernels{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr}; }
}  // namespace sinkstream::attention_kernels

#endif
