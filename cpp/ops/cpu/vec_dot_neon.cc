// ARM NEON kernels (AArch64, where Advanced SIMD is mandatory: compiled with the baseline flags, no
// run-time check needed). With the dot-product extension enabled at compile time
// (__ARM_FEATURE_DOTPROD, e.g. -march=armv8.2-a+dotprod or Apple targets) the integer products use
// SDOT; otherwise widening multiplies (SMULL) and pairwise adds, same integers either way.
// K-quants fall back to the scalar kernels (matmul.cc: select_dot_tile).
#include "ops/cpu/vec_dot.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

#include <cstring>

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

struct IQ4_NLTraits {
  using Block = BlockIQ4_NL;
  static constexpr float kExtra = 0.0f;
  static Weights32 unpack(const Block& b) {
    const int8x16_t table = vld1q_s8(kIq4nlValues);
    const uint8x16_t q = vld1q_u8(b.qs);
    return {vqtbl1q_s8(table, vandq_u8(q, vdupq_n_u8(0x0f))), vqtbl1q_s8(table, vshrq_n_u8(q, 4)), fp16_to_f32(b.d),
            0.0f};
  }
};

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
    default: return nullptr;  // K-quants: the scalar kernels
  }
}

}  // namespace sinkstream

#else  // not AArch64: no kernels

namespace sinkstream {
DotTileFn neon_dot_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream

#endif
