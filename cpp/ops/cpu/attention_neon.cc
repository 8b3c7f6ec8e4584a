// ARM NEON attention row kernels for f16, f32 and Q8_0 cache rows (AArch64, where Advanced SIMD
// and the f16 <-> f32 conversions are mandatory: baseline flags, no run-time check). Called at the
// NEON level when head_dim % 4 == 0.
// The scalar twins in attention.cc are the specification; the structure follows the x86 files:
// blocks of 4 rows x up to 4 query heads (16 accumulators + 4 key vectors + 1 query of the 32
// registers), each key or value vector converted once for all heads of the block.
#include "ops/cpu/attention_kernels.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

#include <cmath>
#include <cstring>

namespace sinkstream::attention_kernels {

namespace {

constexpr int kMaxHeads = 4;

// The cache's rows with this file's vector load (attention_kernels.h).
struct FloatRows : PlainRows<float> {
  float32x4_t load4(int64_t r, int64_t i) const { return vld1q_f32(at(r, i)); }
};

struct HalfRows : PlainRows<uint16_t> {
  float32x4_t load4(int64_t r, int64_t i) const { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(at(r, i)))); }
};

struct Q8Rows : Q8BlockRows {  // the int8 values widened to floats, times the block's scale d
  float32x4_t load4(int64_t r, int64_t i) const {
    const BlockQ8_0* b = block(r, i);
    int32_t four;  // 4 bytes: no alignment to assume
    std::memcpy(&four, b->qs + i % kQK, sizeof(four));
    const int16x8_t wide = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(four)));
    const float32x4_t values = vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)));
    return vmulq_n_f32(values, vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(b->d))), 0));
  }
};

template <typename Rows, int HN>
static void score_heads(const Rows& keys, int64_t n_rows, const float* q, int64_t dim, float scale, float* scores,
                        int64_t scores_stride) {
  int64_t r = 0;
  for (; r + 4 <= n_rows; r += 4) {
    for (int j = 0; j < 4; ++j) keys.prefetch_ahead(r + j, 0, dim);
    float32x4_t acc[HN][4];
    for (int h = 0; h < HN; ++h)
      for (int j = 0; j < 4; ++j) acc[h][j] = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < dim; i += 4) {
      float32x4_t kv[4];
      for (int j = 0; j < 4; ++j) kv[j] = keys.load4(r + j, i);
      for (int h = 0; h < HN; ++h) {
        const float32x4_t qv = vld1q_f32(q + h * dim + i);
        for (int j = 0; j < 4; ++j) acc[h][j] = vfmaq_f32(acc[h][j], qv, kv[j]);
      }
    }
    for (int h = 0; h < HN; ++h) {
      // Pairwise adds: [sum acc0, sum acc1, sum acc2, sum acc3].
      const float32x4_t sums =
          vpaddq_f32(vpaddq_f32(acc[h][0], acc[h][1]), vpaddq_f32(acc[h][2], acc[h][3]));
      vst1q_f32(scores + h * scores_stride + r, vmulq_n_f32(sums, scale));
    }
  }
  for (; r < n_rows; ++r) {
    float32x4_t acc[HN];
    for (int h = 0; h < HN; ++h) acc[h] = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < dim; i += 4) {
      const float32x4_t kv = keys.load4(r, i);
      for (int h = 0; h < HN; ++h) acc[h] = vfmaq_f32(acc[h], vld1q_f32(q + h * dim + i), kv);
    }
    // FADDP's pairs, (a0 + a1) + (a2 + a3): the order of a block of four (the score of a row does
    // not depend on where its run starts).
    for (int h = 0; h < HN; ++h) scores[h * scores_stride + r] = vaddvq_f32(acc[h]) * scale;
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

// out[h] += sum_r w[h, r] * v_r for HN heads over NB * 4 columns from i0, accumulators in registers.
template <typename Rows, int HN, int NB>
static void accumulate_block(const Rows& values, int64_t n_rows, int64_t i0, const float* weights,
                             int64_t weights_stride, float* out, int64_t dim) {
  float32x4_t acc[HN][NB];
  for (int h = 0; h < HN; ++h)
    for (int b = 0; b < NB; ++b) acc[h][b] = vld1q_f32(out + h * dim + i0 + 4 * b);
  for (int64_t r = 0; r < n_rows; ++r) {
    values.prefetch_ahead(r, i0, 4 * NB);
    float32x4_t vv[NB];
    for (int b = 0; b < NB; ++b) vv[b] = values.load4(r, i0 + 4 * b);
    for (int h = 0; h < HN; ++h) {
      const float w = weights[h * weights_stride + r];
      for (int b = 0; b < NB; ++b) acc[h][b] = vfmaq_n_f32(acc[h][b], vv[b], w);
    }
  }
  for (int h = 0; h < HN; ++h)
    for (int b = 0; b < NB; ++b) vst1q_f32(out + h * dim + i0 + 4 * b, acc[h][b]);
}

template <typename Rows, int HN>
static void accumulate_heads(const Rows& values, int64_t n_rows, const float* weights, int64_t weights_stride,
                             float* out, int64_t dim) {
  int64_t i0 = 0;
  for (; i0 + 16 <= dim; i0 += 16)
    accumulate_block<Rows, HN, 4>(values, n_rows, i0, weights, weights_stride, out, dim);
  for (; i0 < dim; i0 += 4) accumulate_block<Rows, HN, 1>(values, n_rows, i0, weights, weights_stride, out, dim);
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


// exp(x) for x <= 0, the AVX2 file's method (relative error ~2e-7): x = n ln2 + r, |r| <= ln2 / 2,
// e^r by its degree-6 Taylor polynomial, times 2^n built in the exponent field; x >= -87 keeps 2^n normal.
static inline float32x4_t exp_nonpositive(float32x4_t x) {
  x = vmaxq_f32(x, vdupq_n_f32(-87.0f));
  const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693145751953125f));  // ln2 high part (exact product)
  r = vfmsq_f32(r, n, vdupq_n_f32(1.428606765330187045e-06f));       // ln2 low part
  float32x4_t p = vdupq_n_f32(1.0f / 720.0f);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 120.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 24.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 6.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  const int32x4_t pow2n = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(pow2n));
}

// Round to the nearest half-precision value (ties to even: the default FPCR rounding of FCVTN).
static inline float32x4_t round_to_half4(float32x4_t v) { return vcvt_f32_f16(vcvt_f16_f32(v)); }

static void softmax(float* s, int64_t n, float sink, bool round_half) {
  const int64_t n4 = n / 4 * 4;
  float32x4_t vmax = vdupq_n_f32(-INFINITY);
  for (int64_t r = 0; r < n4; r += 4) vmax = vmaxq_f32(vmax, vld1q_f32(s + r));
  float max_score = vmaxvq_f32(vmax);
  for (int64_t r = n4; r < n; ++r) max_score = s[r] > max_score ? s[r] : max_score;
  max_score = sink > max_score ? sink : max_score;  // a learned sink (-inf: none)
  const float32x4_t vmax_score = vdupq_n_f32(max_score);

  float32x4_t vsum = vdupq_n_f32(0.0f);
  for (int64_t r = 0; r < n4; r += 4) {
    const float32x4_t e = exp_nonpositive(vsubq_f32(vld1q_f32(s + r), vmax_score));
    vst1q_f32(s + r, e);
    vsum = vaddq_f32(vsum, e);
  }
  float sum = vaddvq_f32(vsum);
  for (int64_t r = n4; r < n; ++r) {  // the tail through the same polynomial, one lane used
    s[r] = vgetq_lane_f32(exp_nonpositive(vdupq_n_f32(s[r] - max_score)), 0);
    sum += s[r];
  }
  if (sink != -INFINITY) sum += vgetq_lane_f32(exp_nonpositive(vdupq_n_f32(sink - max_score)), 0);
  const float inv = 1.0f / sum;
  for (int64_t r = 0; r < n4; r += 4) {
    const float32x4_t w = vmulq_n_f32(vld1q_f32(s + r), inv);
    vst1q_f32(s + r, round_half ? round_to_half4(w) : w);
  }
  for (int64_t r = n4; r < n; ++r) {
    const float w = s[r] * inv;
    s[r] = round_half ? vgetq_lane_f32(round_to_half4(vdupq_n_f32(w)), 0) : w;
  }
}

static void round_to_half(const float* in, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(out + i, round_to_half4(vld1q_f32(in + i)));
  for (; i < n; ++i) out[i] = vgetq_lane_f32(round_to_half4(vdupq_n_f32(in[i])), 0);
}

}  // namespace

Kernels neon_kernels() {
  return Kernels{score_rows<HalfRows>,      score_rows<FloatRows>, accumulate_rows<HalfRows>,
                 accumulate_rows<FloatRows>, softmax,              round_to_half,
                 score_rows<Q8Rows>,   accumulate_rows<Q8Rows>};
}

}  // namespace sinkstream::attention_kernels

#else  // not an AArch64 build: never called (see cpu_features.h)

namespace sinkstream::attention_kernels {
Kernels neon_kernels() { return Kernels{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr}; }
}  // namespace sinkstream::attention_kernels

#endif
