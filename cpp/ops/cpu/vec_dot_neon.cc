// ARM NEON kernels (AArch64, where Advanced SIMD is mandatory: compiled with the baseline flags, no
// run-time check needed). With the dot-product extension enabled at compile time
// (__ARM_FEATURE_DOTPROD, e.g. -march=armv8.2-a+dotprod or Apple targets) the integer products use
// SDOT; otherwise widening multiplies (SMULL) and pairwise adds, same integers either way.
#include "ops/cpu/vec_dot.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

#include <cstring>
#include <type_traits>

#include "core/fp16.h"

namespace sinkstream {

namespace {

// sum over 16 lanes of a[i] * b[i] added to acc (4 int32 lanes; which lane holds what is irrelevant).
static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
  return vdotq_s32(acc, a, b);
#else
  const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
  const int16x8_t hi = vmull_high_s8(a, b);
  return vpadalq_s16(vpadalq_s16(acc, lo), hi);
#endif
}

// The 16 fifth bits starting at bit `first` of qh, as bytes 0x10 (set) or 0.
static inline uint8x16_t fifth_bits(uint32_t qh, int first) {
  const uint32_t bits = qh >> first;
  const uint8x16_t bytes = vcombine_u8(vdup_n_u8((uint8_t)(bits & 0xff)), vdup_n_u8((uint8_t)((bits >> 8) & 0xff)));
  static const uint8_t kBit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  return vandq_u8(vtstq_u8(bytes, vld1q_u8(kBit)), vdupq_n_u8(0x10));
}

static inline uint32_t load_u32(const void* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }

// Weights of one block as signed bytes: elements 0..15 and 16..31, plus d and the extra-term factor.
struct Weights32 {
  int8x16_t lo, hi;
  float d, e;
};

struct Q4_0Traits {
  using Block = BlockQ4_0;
  static constexpr float kExtra = 0.0f;
  static Weights32 unpack(const Block& b) {
    const uint8x16_t q = vld1q_u8(b.qs);
    const int8x16_t eight = vdupq_n_s8(8);
    return {vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))), eight),
            vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), eight), fp16_to_f32(b.d), 0.0f};
  }
};

struct Q4_1Traits {
  using Block = BlockQ4_1;
  static constexpr float kExtra = 1.0f;  // + m * d_x * sum a
  static Weights32 unpack(const Block& b) {
    const uint8x16_t q = vld1q_u8(b.qs);
    return {vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))), vreinterpretq_s8_u8(vshrq_n_u8(q, 4)),
            fp16_to_f32(b.d), fp16_to_f32(b.m)};
  }
};

struct Q5_0Traits {
  using Block = BlockQ5_0;
  static constexpr float kExtra = 0.0f;
  static Weights32 unpack(const Block& b) {
    const uint8x16_t q = vld1q_u8(b.qs);
    const uint32_t qh = load_u32(b.qh);
    const uint8x16_t lo = vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0f)), fifth_bits(qh, 0));
    const uint8x16_t hi = vorrq_u8(vshrq_n_u8(q, 4), fifth_bits(qh, 16));
    const int8x16_t sixteen = vdupq_n_s8(16);
    return {vsubq_s8(vreinterpretq_s8_u8(lo), sixteen), vsubq_s8(vreinterpretq_s8_u8(hi), sixteen), fp16_to_f32(b.d),
            0.0f};
  }
};

struct Q5_1Traits {
  using Block = BlockQ5_1;
  static constexpr float kExtra = 1.0f;
  static Weights32 unpack(const Block& b) {
    const uint8x16_t q = vld1q_u8(b.qs);
    const uint32_t qh = load_u32(b.qh);
    const uint8x16_t lo = vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0f)), fifth_bits(qh, 0));
    const uint8x16_t hi = vorrq_u8(vshrq_n_u8(q, 4), fifth_bits(qh, 16));
    return {vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), fp16_to_f32(b.d), fp16_to_f32(b.m)};
  }
};

struct Q8_0Traits {
  using Block = BlockQ8_0;
  static constexpr float kExtra = 0.0f;
  static Weights32 unpack(const Block& b) { return {vld1q_s8(b.qs), vld1q_s8(b.qs + 16), fp16_to_f32(b.d), 0.0f}; }
};

// The 4-bit codebook formats: nibbles through the value table (IQ4_NL's grid, MXFP4's doubled
// E2M1 values), one float scale per block (quant_blocks.h codebook_scale).
template <typename B, const int8_t* kValues>
struct CodebookTraits {
  using Block = B;
  static constexpr float kExtra = 0.0f;
  static Weights32 unpack(const Block& b) {
    const int8x16_t table = vld1q_s8(kValues);
    const uint8x16_t q = vld1q_u8(b.qs);
    return {vqtbl1q_s8(table, vandq_u8(q, vdupq_n_u8(0x0f))), vqtbl1q_s8(table, vshrq_n_u8(q, 4)),
            codebook_scale(b), 0.0f};
  }
};
using IQ4_NLTraits = CodebookTraits<BlockIQ4_NL, kIq4nlValues>;
using MXFP4Traits = CodebookTraits<BlockMXFP4, kMxfp4Values>;

// One weight row against NT activation rows (Q8A layout, vec_dot.h): per block
//   y += d_w * d_x * sum(q_w * q_x) + kExtra * e * ds.
template <typename Traits>
struct Kernel32 {
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const typename Traits::Block* b = reinterpret_cast<const typename Traits::Block*>(w);
    const int64_t scales_offset = q8a_scales_offset(nb);
    float32x4_t acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = vdupq_n_f32(0.0f);
    float extra[NT] = {};
    for (int64_t i = 0; i < nb; ++i) {
      const Weights32 wq = Traits::unpack(b[i]);
      for (int t = 0; t < NT; ++t) {
        const uint8_t* row = x + t * xs;
        const Q8AScale& sc = reinterpret_cast<const Q8AScale*>(row + scales_offset)[i];
        const int8_t* a = reinterpret_cast<const int8_t*>(row);
        int32x4_t isum = dot16(vdupq_n_s32(0), wq.lo, vld1q_s8(a + q8a_quant_offset(i, 0)));
        isum = dot16(isum, wq.hi, vld1q_s8(a + q8a_quant_offset(i, 1)));
        acc[t] = vmlaq_n_f32(acc[t], vcvtq_f32_s32(isum), wq.d * sc.d);
        if (Traits::kExtra != 0.0f) extra[t] += wq.e * sc.ds;
      }
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = vaddvq_f32(acc[t]) + Traits::kExtra * extra[t];
  }
};

// ---- K-quants (BlockQ8KA activations): integer dot per sub-block, times its integer scale ---------

static inline int dot32(int8x16_t w0, int8x16_t w1, const int8_t* a) {
  return vaddvq_s32(dot16(dot16(vdupq_n_s32(0), w0, vld1q_s8(a)), w1, vld1q_s8(a + 16)));
}
static inline int dot16s(int8x16_t w, const int8_t* a) { return vaddvq_s32(dot16(vdupq_n_s32(0), w, vld1q_s8(a))); }
static inline int8x16_t s8(uint8x16_t v) { return vreinterpretq_s8_u8(v); }

static inline const BlockQ8KA* q8k_row(const uint8_t* x, int64_t stride, int t) {
  return reinterpret_cast<const BlockQ8KA*>(x + t * stride);
}

struct Q2_KKernel {
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const BlockQ2_K* b = reinterpret_cast<const BlockQ2_K*>(w);
    float sum[NT] = {};
    const uint8x16_t three = vdupq_n_u8(3);
    for (int64_t i = 0; i < nb; ++i) {
      int sumq[NT] = {}, summ[NT] = {};
      for (int h = 0; h < 2; ++h) {
        const uint8x16_t q0 = vld1q_u8(b[i].qs + 32 * h), q1 = vld1q_u8(b[i].qs + 32 * h + 16);
        for (int s = 0; s < 4; ++s) {  // elements 128h + 32s .. +32: sub-blocks j, j + 1
          const int j = 8 * h + 2 * s;
          const int8x16_t w0 = s8(vandq_u8(vshlq_u8(q0, vdupq_n_s8((int8_t)(-2 * s))), three));
          const int8x16_t w1 = s8(vandq_u8(vshlq_u8(q1, vdupq_n_s8((int8_t)(-2 * s))), three));
          for (int t = 0; t < NT; ++t) {
            const int8_t* a = q8k_row(x, xs, t)[i].qs + 16 * j;
            sumq[t] += (b[i].scales[j] & 0x0f) * dot16s(w0, a) + (b[i].scales[j + 1] & 0x0f) * dot16s(w1, a + 16);
          }
        }
      }
      for (int t = 0; t < NT; ++t)
        for (int j = 0; j < 16; ++j) summ[t] += (b[i].scales[j] >> 4) * q8k_row(x, xs, t)[i].bsums[j];
      const float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
      for (int t = 0; t < NT; ++t) {
        const float dx = q8k_row(x, xs, t)[i].d;
        sum[t] += d * dx * (float)sumq[t] - dmin * dx * (float)summ[t];
      }
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = sum[t];
  }
};

struct Q3_KKernel {
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const BlockQ3_K* b = reinterpret_cast<const BlockQ3_K*>(w);
    float sum[NT] = {};
    const uint8x16_t three = vdupq_n_u8(3), four = vdupq_n_u8(4);
    for (int64_t i = 0; i < nb; ++i) {
      int sumq[NT] = {};
      const uint8x16_t hm0 = vld1q_u8(b[i].hmask), hm1 = vld1q_u8(b[i].hmask + 16);
      for (int h = 0; h < 2; ++h) {
        const uint8x16_t q0 = vld1q_u8(b[i].qs + 32 * h), q1 = vld1q_u8(b[i].qs + 32 * h + 16);
        for (int s = 0; s < 4; ++s) {
          const int j = 8 * h + 2 * s;
          const uint8x16_t bit = vdupq_n_u8((uint8_t)(1u << (4 * h + s)));
          // q = low - 4 where the high bit is clear: (low + 4 * hbit) - 4
          const int8x16_t w0 = vsubq_s8(s8(vorrq_u8(vandq_u8(vshlq_u8(q0, vdupq_n_s8((int8_t)(-2 * s))), three),
                                                    vandq_u8(vtstq_u8(hm0, bit), four))),
                                        vdupq_n_s8(4));
          const int8x16_t w1 = vsubq_s8(s8(vorrq_u8(vandq_u8(vshlq_u8(q1, vdupq_n_s8((int8_t)(-2 * s))), three),
                                                    vandq_u8(vtstq_u8(hm1, bit), four))),
                                        vdupq_n_s8(4));
          const int sc0 = q3k_scale(b[i].scales, j), sc1 = q3k_scale(b[i].scales, j + 1);
          for (int t = 0; t < NT; ++t) {
            const int8_t* a = q8k_row(x, xs, t)[i].qs + 16 * j;
            sumq[t] += sc0 * dot16s(w0, a) + sc1 * dot16s(w1, a + 16);
          }
        }
      }
      const float d = fp16_to_f32(b[i].d);
      for (int t = 0; t < NT; ++t) sum[t] += d * q8k_row(x, xs, t)[i].d * (float)sumq[t];
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = sum[t];
  }
};

template <bool kFifthBit>
struct Q45_KKernel {
  using Block = typename std::conditional<kFifthBit, BlockQ5_K, BlockQ4_K>::type;
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const Block* b = reinterpret_cast<const Block*>(w);
    float sum[NT] = {};
    const uint8x16_t low4 = vdupq_n_u8(0x0f), bit4 = vdupq_n_u8(0x10);
    for (int64_t i = 0; i < nb; ++i) {
      uint8_t sc[8], mn[8];
      for (int j = 0; j < 8; ++j) unpack_k4_scale_min(b[i].scales, j, &sc[j], &mn[j]);
      int sumq[NT] = {}, summ[NT] = {};
      uint8x16_t qh0 = vdupq_n_u8(0), qh1 = vdupq_n_u8(0);
      if constexpr (kFifthBit) qh0 = vld1q_u8(b[i].qh), qh1 = vld1q_u8(b[i].qh + 16);
      for (int c = 0; c < 4; ++c) {  // sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles)
        const uint8x16_t r0 = vld1q_u8(b[i].qs + 32 * c), r1 = vld1q_u8(b[i].qs + 32 * c + 16);
        uint8x16_t lo0 = vandq_u8(r0, low4), lo1 = vandq_u8(r1, low4), hi0 = vshrq_n_u8(r0, 4), hi1 = vshrq_n_u8(r1, 4);
        if constexpr (kFifthBit) {
          const uint8x16_t bit_lo = vdupq_n_u8((uint8_t)(1u << (2 * c))), bit_hi = vdupq_n_u8((uint8_t)(2u << (2 * c)));
          lo0 = vorrq_u8(lo0, vandq_u8(vtstq_u8(qh0, bit_lo), bit4));
          lo1 = vorrq_u8(lo1, vandq_u8(vtstq_u8(qh1, bit_lo), bit4));
          hi0 = vorrq_u8(hi0, vandq_u8(vtstq_u8(qh0, bit_hi), bit4));
          hi1 = vorrq_u8(hi1, vandq_u8(vtstq_u8(qh1, bit_hi), bit4));
        }
        for (int t = 0; t < NT; ++t) {
          const int8_t* a = q8k_row(x, xs, t)[i].qs + 64 * c;
          sumq[t] += sc[2 * c] * dot32(s8(lo0), s8(lo1), a) + sc[2 * c + 1] * dot32(s8(hi0), s8(hi1), a + 32);
        }
      }
      for (int t = 0; t < NT; ++t) {
        const BlockQ8KA& a = q8k_row(x, xs, t)[i];
        for (int j = 0; j < 8; ++j) summ[t] += mn[j] * (a.bsums[2 * j] + a.bsums[2 * j + 1]);
      }
      const float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
      for (int t = 0; t < NT; ++t) {
        const float dx = q8k_row(x, xs, t)[i].d;
        sum[t] += d * dx * (float)sumq[t] - dmin * dx * (float)summ[t];
      }
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = sum[t];
  }
};

struct Q6_KKernel {
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(w);
    float sum[NT] = {};
    const uint8x16_t low4 = vdupq_n_u8(0x0f), three = vdupq_n_u8(3);
    const int8x16_t offset = vdupq_n_s8(32);
    for (int64_t i = 0; i < nb; ++i) {
      int sumq[NT] = {};
      for (int h = 0; h < 2; ++h) {
        const uint8_t* ql = b[i].ql + 64 * h;
        const uint8_t* qh = b[i].qh + 32 * h;
        for (int s = 0; s < 4; ++s) {  // elements 128h + 32s + l, l < 32: sub-blocks j, j + 1
          const int j = 8 * h + 2 * s;
          for (int half = 0; half < 2; ++half) {
            const uint8x16_t l = vld1q_u8(ql + 32 * (s % 2) + 16 * half);
            const uint8x16_t low = s < 2 ? vandq_u8(l, low4) : vshrq_n_u8(l, 4);
            const uint8x16_t high =
                vshlq_n_u8(vandq_u8(vshlq_u8(vld1q_u8(qh + 16 * half), vdupq_n_s8((int8_t)(-2 * s))), three), 4);
            const int8x16_t q = vsubq_s8(s8(vorrq_u8(low, high)), offset);
            for (int t = 0; t < NT; ++t)
              sumq[t] += b[i].scales[j + half] * dot16s(q, q8k_row(x, xs, t)[i].qs + 16 * (j + half));
          }
        }
      }
      const float d = fp16_to_f32(b[i].d);
      for (int t = 0; t < NT; ++t) sum[t] += d * q8k_row(x, xs, t)[i].d * (float)sumq[t];
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = sum[t];
  }
};

// ---- float weights ---------------------------------------------------------------------------------

struct LoadF32 {
  static float32x4_t load4(const uint8_t* w, int64_t i) { return vld1q_f32(reinterpret_cast<const float*>(w) + i); }
  static float load1(const uint8_t* w, int64_t i) { float v; std::memcpy(&v, w + 4 * i, 4); return v; }
};
struct LoadF16 {
  static float32x4_t load4(const uint8_t* w, int64_t i) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(w) + i)));
  }
  static float load1(const uint8_t* w, int64_t i) { uint16_t h; std::memcpy(&h, w + 2 * i, 2); return fp16_to_f32(h); }
};
struct LoadBF16 {
  static float32x4_t load4(const uint8_t* w, int64_t i) {
    const uint32x4_t wide = vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(w) + i), 16);
    return vreinterpretq_f32_u32(wide);
  }
  static float load1(const uint8_t* w, int64_t i) { uint16_t h; std::memcpy(&h, w + 2 * i, 2); return bf16_to_f32(h); }
};

template <typename Load>
struct FloatKernel {
  template <int NT>
  static void run(int64_t n, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    float32x4_t acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      const float32x4_t wv = Load::load4(w, i);
      for (int t = 0; t < NT; ++t)
        acc[t] = vfmaq_f32(acc[t], wv, vld1q_f32(reinterpret_cast<const float*>(x + t * xs) + i));
    }
    for (int t = 0; t < NT; ++t) {
      float sum = vaddvq_f32(acc[t]);
      for (int64_t k = i; k < n; ++k) sum += Load::load1(w, k) * reinterpret_cast<const float*>(x + t * xs)[k];
      y[t * ys] = sum;
    }
  }
};

template <typename Kernel>
void tile_dot_rows(int64_t nb, const uint8_t* w, int64_t ws, int nr, const uint8_t* x, int64_t xs, int nt, float* y,
                   int64_t ys) {
  for (int r = 0; r < nr; ++r) {
    const uint8_t* row = w + r * ws;
    switch (nt) {
      case 1: Kernel::template run<1>(nb, row, x, xs, y + r, ys); break;
      case 2: Kernel::template run<2>(nb, row, x, xs, y + r, ys); break;
      case 3: Kernel::template run<3>(nb, row, x, xs, y + r, ys); break;
      default: Kernel::template run<4>(nb, row, x, xs, y + r, ys); break;
    }
  }
}

}  // namespace

DotTileFn neon_dot_tile(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return tile_dot_rows<FloatKernel<LoadF32>>;
    case GgmlType::F16: return tile_dot_rows<FloatKernel<LoadF16>>;
    case GgmlType::BF16: return tile_dot_rows<FloatKernel<LoadBF16>>;
    case GgmlType::Q4_0: return tile_dot_rows<Kernel32<Q4_0Traits>>;
    case GgmlType::Q4_1: return tile_dot_rows<Kernel32<Q4_1Traits>>;
    case GgmlType::Q5_0: return tile_dot_rows<Kernel32<Q5_0Traits>>;
    case GgmlType::Q5_1: return tile_dot_rows<Kernel32<Q5_1Traits>>;
    case GgmlType::Q8_0: return tile_dot_rows<Kernel32<Q8_0Traits>>;
    case GgmlType::IQ4_NL: return tile_dot_rows<Kernel32<IQ4_NLTraits>>;
    case GgmlType::MXFP4: return tile_dot_rows<Kernel32<MXFP4Traits>>;
    case GgmlType::Q2_K: return tile_dot_rows<Q2_KKernel>;
    case GgmlType::Q3_K: return tile_dot_rows<Q3_KKernel>;
    case GgmlType::Q4_K: return tile_dot_rows<Q45_KKernel<false>>;
    case GgmlType::Q5_K: return tile_dot_rows<Q45_KKernel<true>>;
    case GgmlType::Q6_K: return tile_dot_rows<Q6_KKernel>;
    default: return nullptr;
  }
}

}  // namespace sinkstream

#else  // not AArch64: no kernels

namespace sinkstream {
DotTileFn neon_dot_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream

#endif
