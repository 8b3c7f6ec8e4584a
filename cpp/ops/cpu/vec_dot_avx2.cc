// AVX2 + FMA + F16C kernels. Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt) and only called
// when cpu_features() reports all three; every helper is static so no code built with these flags
// can leak into baseline code through a shared inline function.
//
// Integer products use _mm256_maddubs_epi16 (unsigned 8-bit x signed 8-bit, pairs summed to int16)
// then _mm256_madd_epi16 (pairs of int16 to int32, optionally times a sub-block scale). The int16
// step cannot saturate: the largest unsigned weight is 63 (Q6_K) and |activation| <= 127, so a
// pair is at most 2 * 63 * 127 = 16002. Signed weights (Q8_0, IQ4_NL) use |w| and sign(w) * a:
// 2 * 128 * 127 = 32512 < 32767. Offsets (Q4_0's -8, Q6_K's -32, ...) are applied through the
// activation block sums instead of per element.
#include "ops/cpu/vec_dot.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>

namespace sinkstream {

namespace {

#include "ops/cpu/kernel32_x86.inc"

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// int16 scale vector for 32 products spanning sub-blocks of 16: lanes 0..7 (elements 0..15) get s0,
// lanes 8..15 get s1.
static inline __m256i pair_scales(int s0, int s1) {
  return _mm256_set_m128i(_mm_set1_epi16((short)s1), _mm_set1_epi16((short)s0));
}

static inline const BlockQ8KA* q8k_row(const uint8_t* x, int64_t stride, int t) {
  return reinterpret_cast<const BlockQ8KA*>(x + t * stride);
}

// A DotTileFn from a one-row kernel, `template <int NT> static void run(nb, w, x, xs, y, ys)`.
template <typename Kernel>
void tile_dot_rows(int64_t nb, const uint8_t* w, int64_t ws, int nr, const uint8_t* x, int64_t xs, int nt, float* y,
                   int64_t ys) {
  for (int r = 0; r < nr; ++r) {
    const uint8_t* row = w + r * ws;
    if (nt == 1) prefetch_row_ahead(row, ws);
    switch (nt) {
      case 1: Kernel::template run<1>(nb, row, x, xs, y + r, ys); break;
      case 2: Kernel::template run<2>(nb, row, x, xs, y + r, ys); break;
      case 3: Kernel::template run<3>(nb, row, x, xs, y + r, ys); break;
      default: Kernel::template run<4>(nb, row, x, xs, y + r, ys); break;
    }
  }
}

// ---- 32-element formats: kernel32_x86.inc with VPMADDUBSW / VPMADDWD products -------------------

// Integer dot of a pair against 64 activation bytes: 8 int32 lanes (0..3 block i, 4..7 block i+1).
// Unsigned weights <= 31: the two int16 products add without overflow (2 * 2 * 31 * 127 < 32768).
struct MaddubsPairDot {
  template <bool kSigned>
  static inline __m256i dot(const PairWeights& w, const PairWeights& w_abs, __m256i a0, __m256i a1) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (kSigned) {
      const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs.w0, _mm256_sign_epi8(a0, w.w0)), ones);
      const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs.w1, _mm256_sign_epi8(a1, w.w1)), ones);
      return _mm256_add_epi32(p0, p1);
    }
    const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(w.w0, a0), _mm256_maddubs_epi16(w.w1, a1));
    return _mm256_madd_epi16(p16, ones);
  }
};
template <typename Traits>
using Kernel32 = Kernel32X86<Traits, MaddubsPairDot>;

// ---- K-quants (256-element super-blocks, BlockQ8KA activations) - ----------------------------------
// Within a super-block the integer sums of all sub-blocks, each times its sub-block scale, are
// accumulated in int32 (sumi); the float scales d * d_x (and dmin * d_x for the mins) are applied
// once per super-block.

// Scale unpacking with 32-bit word operations (all 16 at once instead of byte by byte). These are
// local, not the inline helpers of quant_blocks.h: an inline function compiled here with AVX2 flags
// could be the copy the linker keeps for baseline callers too.

// Q4_K / Q5_K: the 8 6-bit scales and 8 6-bit mins (layout: quant_blocks.h, unpack_k4_scale_min).
static inline void k4_scales_mins(const uint8_t* packed, __m128i* scales8, __m128i* mins8) {
  uint32_t u[3];
  std::memcpy(u, packed, 12);
  const uint32_t low6 = 0x3f3f3f3fu, low4 = 0x0f0f0f0fu, low2 = 0x03030303u;
  const uint32_t sc_hi = (u[2] & low4) | ((u[0] >> 6) & low2) << 4;
  const uint32_t mn_hi = ((u[2] >> 4) & low4) | ((u[1] >> 6) & low2) << 4;
  *scales8 = _mm_set_epi32(0, 0, (int)sc_hi, (int)(u[0] & low6));
  *mins8 = _mm_set_epi32(0, 0, (int)mn_hi, (int)(u[1] & low6));
}

// Q3_K: the 16 6-bit scales minus 32, as int16 (layout: quant_blocks.h, q3k_scale).
static inline void q3k_scales(const uint8_t* packed, int16_t out[16]) {
  uint32_t u[3];
  std::memcpy(u, packed, 12);
  const uint32_t low4 = 0x0f0f0f0fu, low2 = 0x03030303u;
  const __m128i biased = _mm_setr_epi32((int)((u[0] & low4) | (u[2] & low2) << 4),
                                        (int)((u[1] & low4) | ((u[2] >> 2) & low2) << 4),
                                        (int)(((u[0] >> 4) & low4) | ((u[2] >> 4) & low2) << 4),
                                        (int)(((u[1] >> 4) & low4) | ((u[2] >> 6) & low2) << 4));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm256_cvtepi8_epi16(_mm_sub_epi8(biased, _mm_set1_epi8(32))));
}

struct Q2_KKernel {
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const BlockQ2_K* b = reinterpret_cast<const BlockQ2_K*>(w);
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i three = _mm256_set1_epi8(3);
    for (int64_t i = 0; i < nb; ++i) {
      __m256i sumi[NT];
      for (int t = 0; t < NT; ++t) sumi[t] = _mm256_setzero_si256();
      for (int h = 0; h < 2; ++h) {
        __m256i qs = load256(b[i].qs + 32 * h);
        for (int s = 0; s < 4; ++s, qs = _mm256_srli_epi16(qs, 2)) {
          const int j = 8 * h + 2 * s;  // sub-blocks j, j + 1 = elements 128h + 32s .. +32
          const __m256i q = _mm256_and_si256(qs, three);
          const __m256i sc = pair_scales(b[i].scales[j] & 0x0f, b[i].scales[j + 1] & 0x0f);
          for (int t = 0; t < NT; ++t) {
            const __m256i a = load256(q8k_row(x, xs, t)[i].qs + 16 * j);
            sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), sc));
          }
        }
      }
      // mins: sum_j mn_j * bsum_j
      const __m128i scales = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].scales));
      const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(scales, 4), _mm_set1_epi8(0x0f)));
      const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
      for (int t = 0; t < NT; ++t) {
        const BlockQ8KA& a = q8k_row(x, xs, t)[i];
        const __m256i summ = _mm256_madd_epi16(load256(a.bsums), mins);
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * a.d), _mm256_cvtepi32_ps(summ), acc[t]);
      }
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = hsum(acc[t]);
  }
};

struct Q3_KKernel {
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const BlockQ3_K* b = reinterpret_cast<const BlockQ3_K*>(w);
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    for (int64_t i = 0; i < nb; ++i) {
      int16_t sc[16];
      q3k_scales(b[i].scales, sc);
      __m256i sumi[NT];
      for (int t = 0; t < NT; ++t) sumi[t] = _mm256_setzero_si256();
      __m256i hmask = load256(b[i].hmask);  // bit 4h + s of hmask[l] is the high bit of element 128h + 32s + l
      for (int h = 0; h < 2; ++h) {
        __m256i qs = load256(b[i].qs + 32 * h);
        for (int s = 0; s < 4; ++s, qs = _mm256_srli_epi16(qs, 2), hmask = _mm256_srli_epi16(hmask, 1)) {
          const int j = 8 * h + 2 * s;
          // q + 4 = low | high << 2, in 0..7; the -4 is applied below through the block sums.
          const __m256i high = _mm256_slli_epi16(_mm256_and_si256(hmask, one), 2);
          const __m256i q = _mm256_or_si256(_mm256_and_si256(qs, three), high);
          const __m256i scv = pair_scales(sc[j], sc[j + 1]);
          for (int t = 0; t < NT; ++t) {
            const __m256i a = load256(q8k_row(x, xs, t)[i].qs + 16 * j);
            sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scv));
          }
        }
      }
      const __m256i scales16 = load256(sc);
      const float d = h2f(b[i].d);
      for (int t = 0; t < NT; ++t) {
        const BlockQ8KA& a = q8k_row(x, xs, t)[i];
        const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(load256(a.bsums), scales16), 2);
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[t], offset)),
                                 acc[t]);
      }
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = hsum(acc[t]);
  }
};

// Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
template <bool kFifthBit>
struct Q45_KKernel {
  using Block = typename std::conditional<kFifthBit, BlockQ5_K, BlockQ4_K>::type;
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const Block* b = reinterpret_cast<const Block*>(w);
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    for (int64_t i = 0; i < nb; ++i) {
      __m128i scales8, mins8;
      k4_scales_mins(b[i].scales, &scales8, &mins8);
      // The 8 scales as int16 in both 128-bit lanes; a byte shuffle broadcasts one of them.
      const __m256i scales16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scales8));
      __m256i sumi[NT];
      for (int t = 0; t < NT; ++t) sumi[t] = _mm256_setzero_si256();
      __m256i qh = _mm256_setzero_si256();
      if constexpr (kFifthBit) qh = load256(b[i].qh);
      for (int c = 0; c < 4; ++c) {  // sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles)
        const __m256i raw = load256(b[i].qs + 32 * c);
        __m256i lo = _mm256_and_si256(raw, low4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
        if constexpr (kFifthBit) {
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4));
          qh = _mm256_srli_epi16(qh, 2);
        }
        const __m256i sc_lo = _mm256_shuffle_epi8(scales16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * c))));
        const __m256i sc_hi = _mm256_shuffle_epi8(scales16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * c + 1))));
        for (int t = 0; t < NT; ++t) {
          const int8_t* a = q8k_row(x, xs, t)[i].qs + 64 * c;
          const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(a)), sc_lo);
          const __m256i p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(a + 32)), sc_hi);
          sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p_lo, p_hi));
        }
      }
      // mins: sum_j mn_j * (bsum_2j + bsum_2j+1); each min repeated for its two groups of 16.
      const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins8, mins8));
      const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
      for (int t = 0; t < NT; ++t) {
        const BlockQ8KA& a = q8k_row(x, xs, t)[i];
        const __m256i summ = _mm256_madd_epi16(load256(a.bsums), mins);
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * a.d), _mm256_cvtepi32_ps(summ), acc[t]);
      }
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = hsum(acc[t]);
  }
};

struct Q6_KKernel {
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(w);
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0f), bits45 = _mm256_set1_epi8(0x30);
    for (int64_t i = 0; i < nb; ++i) {
      __m256i sumi[NT];
      for (int t = 0; t < NT; ++t) sumi[t] = _mm256_setzero_si256();
      for (int h = 0; h < 2; ++h) {
        const __m256i ql_a = load256(b[i].ql + 64 * h), ql_b = load256(b[i].ql + 64 * h + 32);
        const __m256i qh = load256(b[i].qh + 32 * h);
        // Quarter s of this half: elements 128h + 32s + l. Low nibble: s = 0, 1 from the low
        // nibbles of ql_a, ql_b; s = 2, 3 from their high nibbles. High bits 2s, 2s+1 of qh -> bits 4, 5.
        const __m256i low[4] = {_mm256_and_si256(ql_a, low4), _mm256_and_si256(ql_b, low4),
                                _mm256_and_si256(_mm256_srli_epi16(ql_a, 4), low4),
                                _mm256_and_si256(_mm256_srli_epi16(ql_b, 4), low4)};
        const __m256i high[4] = {_mm256_and_si256(_mm256_slli_epi16(qh, 4), bits45),
                                 _mm256_and_si256(_mm256_slli_epi16(qh, 2), bits45), _mm256_and_si256(qh, bits45),
                                 _mm256_and_si256(_mm256_srli_epi16(qh, 2), bits45)};
        for (int s = 0; s < 4; ++s) {
          const int j = 8 * h + 2 * s;
          const __m256i q = _mm256_or_si256(low[s], high[s]);  // q + 32, in 0..63
          const __m256i scv = pair_scales(b[i].scales[j], b[i].scales[j + 1]);
          for (int t = 0; t < NT; ++t) {
            const __m256i a = load256(q8k_row(x, xs, t)[i].qs + 16 * j);
            sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scv));
          }
        }
      }
      const __m256i scales16 =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].scales)));
      const float d = h2f(b[i].d);
      for (int t = 0; t < NT; ++t) {
        const BlockQ8KA& a = q8k_row(x, xs, t)[i];
        const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(load256(a.bsums), scales16), 5);  // 32 * ...
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[t], offset)),
                                 acc[t]);
      }
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = hsum(acc[t]);
  }
};

// ---- float weights -------------------------------------------------------------------------------

struct LoadF32 {
  static __m256 load8(const uint8_t* w, int64_t i) { return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + i); }
  static float load1(const uint8_t* w, int64_t i) { return reinterpret_cast<const float*>(w)[i]; }
};
struct LoadF16 {
  static __m256 load8(const uint8_t* w, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * i)));
  }
  static float load1(const uint8_t* w, int64_t i) { uint16_t h; std::memcpy(&h, w + 2 * i, 2); return h2f(h); }
};
struct LoadBF16 {
  static __m256 load8(const uint8_t* w, int64_t i) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static float load1(const uint8_t* w, int64_t i) {
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};

template <typename Load>
struct FloatKernel {
  template <int NT>
  static void run(int64_t n, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    __m256 acc[2][NT];
    for (int t = 0; t < NT; ++t) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    auto xrow = [&](int t) { return reinterpret_cast<const float*>(x + t * xs); };
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m256 w0 = Load::load8(w, i), w1 = Load::load8(w, i + 8);
      for (int t = 0; t < NT; ++t) {
        acc[0][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xrow(t) + i), acc[0][t]);
        acc[1][t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xrow(t) + i + 8), acc[1][t]);
      }
    }
    for (; i + 8 <= n; i += 8) {
      const __m256 w0 = Load::load8(w, i);
      for (int t = 0; t < NT; ++t) acc[0][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xrow(t) + i), acc[0][t]);
    }
    for (int t = 0; t < NT; ++t) {
      float sum = hsum(_mm256_add_ps(acc[0][t], acc[1][t]));
      for (int64_t k = i; k < n; ++k) sum += Load::load1(w, k) * xrow(t)[k];
      y[t * ys] = sum;
    }
  }
};

// ---- activation quantization: bit-identical to quantize_activations (vec_dot_scalar.cc) -----------

static inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

static inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

// max |x| over count (a multiple of 32) floats, and whether all of them are finite.
static inline float abs_max(const float* x, int count, bool* finite) {
  const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(INFINITY);
  __m256 m = _mm256_setzero_ps(), all_finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (int i = 0; i < count; i += 8) {
    const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i));
    m = _mm256_max_ps(m, a);
    all_finite = _mm256_and_ps(all_finite, _mm256_cmp_ps(a, inf, _CMP_LT_OQ));  // false for inf and NaN
  }
  *finite = _mm256_movemask_ps(all_finite) == 0xff;
  return hmax(m);
}

// The scalar quantizer's rule for blocks without int8 codes (vec_dot_scalar.cc, quantize_block):
// a NaN or inf in the block, or a block so small that 127 / max overflows, gives zeros, sum 0 and
// the scale NaN (non-finite input) or 0 (tiny block). Returns true when it applied.
static inline bool unquantizable(bool finite, float id, float* d) {
  if (finite && std::isfinite(id)) return false;
  *d = finite ? 0.0f : NAN;
  return true;
}

// Rounds 32 values x * id half to even into int8 (elements in order at q), returns the int32 sums of
// elements 0..15 and 16..31. The same float multiply and rounding as the scalar code.
static inline void quantize32(const float* x, float id, int8_t* q_lo, int8_t* q_hi, int* sum_lo, int* sum_hi) {
  const __m256 scale = _mm256_set1_ps(id);
  __m256i v[4];
  for (int k = 0; k < 4; ++k)
    v[k] = _mm256_cvttps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), scale),
                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  *sum_lo = hsum_i32(_mm256_add_epi32(v[0], v[1]));
  *sum_hi = hsum_i32(_mm256_add_epi32(v[2], v[3]));
  // |v| <= 127: the saturating packs are exact; they interleave 128-bit lanes, the permute undoes it.
  const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
  const __m256i ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q_lo), _mm256_castsi256_si128(ordered));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q_hi), _mm256_extracti128_si256(ordered, 1));
}

void quantize_activations_avx2(ActFormat format, const float* x, int64_t cols, uint8_t* out) {
  switch (format) {
    case ActFormat::F32: std::memcpy(out, x, (size_t)cols * sizeof(float)); return;
    case ActFormat::Q8A: {
      const int64_t nb = cols / kQK;
      Q8AScale* scales = reinterpret_cast<Q8AScale*>(out + q8a_scales_offset(nb));
      if (nb % 2 == 1) std::memset(out + q8a_quant_offset(nb - 1, 0), 0, 64);  // the missing partner's zeros
      for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + b * kQK;
        bool finite;
        const float amax = abs_max(xb, kQK, &finite);
        float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int8_t* q_lo = reinterpret_cast<int8_t*>(out + q8a_quant_offset(b, 0));
        int8_t* q_hi = reinterpret_cast<int8_t*>(out + q8a_quant_offset(b, 1));
        int sum_lo = 0, sum_hi = 0;
        if (unquantizable(finite, id, &d)) {
          std::memset(q_lo, 0, 16);
          std::memset(q_hi, 0, 16);
        } else {
          quantize32(xb, id, q_lo, q_hi, &sum_lo, &sum_hi);
        }
        // The scale at half precision (round to nearest even), as the scalar quantizer keeps it.
        d = _cvtsh_ss(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        scales[b].d = d;
        scales[b].ds = d * (float)(sum_lo + sum_hi);
      }
      return;
    }
    case ActFormat::Q8K: {
      BlockQ8KA* blocks = reinterpret_cast<BlockQ8KA*>(out);
      for (int64_t b = 0; b < cols / kQKK; ++b) {
        const float* xb = x + b * kQKK;
        bool finite;
        const float amax = abs_max(xb, kQKK, &finite);
        float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        if (unquantizable(finite, id, &d)) {
          std::memset(blocks[b].qs, 0, sizeof(blocks[b].qs));
          std::memset(blocks[b].bsums, 0, sizeof(blocks[b].bsums));
        } else {
          for (int k = 0; k < kQKK / 32; ++k) {
            int sum_lo, sum_hi;
            quantize32(xb + 32 * k, id, blocks[b].qs + 32 * k, blocks[b].qs + 32 * k + 16, &sum_lo, &sum_hi);
            blocks[b].bsums[2 * k] = (int16_t)sum_lo;
            blocks[b].bsums[2 * k + 1] = (int16_t)sum_hi;
          }
        }
        blocks[b].d = d;
        std::memset(blocks[b].padding, 0, sizeof(blocks[b].padding));
      }
      return;
    }
  }
}

}  // namespace

QuantizeFn avx2_quantize_activations() { return quantize_activations_avx2; }

DotTileFn avx2_dot_tile(GgmlType type) {
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

#else  // not an x86-64 build with the AVX2 flags: no kernels

namespace sinkstream {
DotTileFn avx2_dot_tile(GgmlType) { return nullptr; }
QuantizeFn avx2_quantize_activations() { return nullptr; }
}  // namespace sinkstream

#endif
