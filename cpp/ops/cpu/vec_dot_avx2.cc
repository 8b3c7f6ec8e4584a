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

#include <cstring>
#include <type_traits>

namespace sinkstream {

namespace {

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 16 bytes of packed nibbles -> 32 bytes: elements 0..15 from the low nibbles, 16..31 from the high.
static inline __m256i unpack_nibbles(const uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// Q5 fifth bits: byte j = 0x10 where bit j of the little-endian uint32 qh is set.
static inline __m256i fifth_bits(const uint8_t qh[4]) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  const __m256i byte_of_bit = _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101,
                                                 0x0202020202020202, 0x0303030303030303);
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), byte_of_bit);
  const __m256i bit_in_byte = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit_in_byte), bit_in_byte);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

// sum over pairs of u8 * s8, as 8 int32 lanes.
static inline __m256i dot_u8_s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// Signed weights: |w| * (sign(w) * a).
static inline __m256i dot_s8_s8(__m256i w, __m256i a) {
  return dot_u8_s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
}

// int16 scale vector for 32 products spanning sub-blocks of 16: lanes 0..7 (elements 0..15) get s0,
// lanes 8..15 get s1.
static inline __m256i pair_scales(int s0, int s1) {
  return _mm256_set_m128i(_mm_set1_epi16((short)s1), _mm_set1_epi16((short)s0));
}

static inline const BlockQ8A* q8a_row(const uint8_t* x, int64_t stride, int t) {
  return reinterpret_cast<const BlockQ8A*>(x + t * stride);
}
static inline const BlockQ8_K* q8k_row(const uint8_t* x, int64_t stride, int t) {
  return reinterpret_cast<const BlockQ8_K*>(x + t * stride);
}

// A RowDotFn from a kernel struct with `template <int NT> static void run(...)`.
template <typename Kernel>
void row_dot(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, int nt, float* y, int64_t ys) {
  switch (nt) {
    case 1: Kernel::template run<1>(nb, w, x, xs, y, ys); break;
    case 2: Kernel::template run<2>(nb, w, x, xs, y, ys); break;
    case 3: Kernel::template run<3>(nb, w, x, xs, y, ys); break;
    default: Kernel::template run<4>(nb, w, x, xs, y, ys); break;
  }
}

// ---- 32-element formats ----------------------------------------------------------------------------
// Traits: unpack(block) -> Weights {q, d, m}; dot(weights, activation quants) -> 8 float partial sums;
// kExtra: the factor of the per-block term `extra_scale * a.ds` (0: none). The kernel computes
//   sum over blocks of d * a.d * dot + kExtra * extra_scale * a.ds.

struct Weights32 {
  __m256i q;
  float d;
  float extra_scale;
};

struct Q4_0Traits {
  using Block = BlockQ4_0;
  static constexpr float kExtra = -8.0f;  // sum (q - 8) a = sum q a - 8 sum a
  static Weights32 unpack(const Block& b) { const float d = h2f(b.d); return {unpack_nibbles(b.qs), d, d}; }
  static __m256 dot(const Weights32& w, __m256i a) { return _mm256_cvtepi32_ps(dot_u8_s8(w.q, a)); }
};

struct Q4_1Traits {
  using Block = BlockQ4_1;
  static constexpr float kExtra = 1.0f;  // + m * d_x * sum a
  static Weights32 unpack(const Block& b) { return {unpack_nibbles(b.qs), h2f(b.d), h2f(b.m)}; }
  static __m256 dot(const Weights32& w, __m256i a) { return _mm256_cvtepi32_ps(dot_u8_s8(w.q, a)); }
};

struct Q5_0Traits {
  using Block = BlockQ5_0;
  static constexpr float kExtra = -16.0f;
  static Weights32 unpack(const Block& b) {
    const float d = h2f(b.d);
    return {_mm256_or_si256(unpack_nibbles(b.qs), fifth_bits(b.qh)), d, d};
  }
  static __m256 dot(const Weights32& w, __m256i a) { return _mm256_cvtepi32_ps(dot_u8_s8(w.q, a)); }
};

struct Q5_1Traits {
  using Block = BlockQ5_1;
  static constexpr float kExtra = 1.0f;
  static Weights32 unpack(const Block& b) {
    return {_mm256_or_si256(unpack_nibbles(b.qs), fifth_bits(b.qh)), h2f(b.d), h2f(b.m)};
  }
  static __m256 dot(const Weights32& w, __m256i a) { return _mm256_cvtepi32_ps(dot_u8_s8(w.q, a)); }
};

struct Q8_0Traits {
  using Block = BlockQ8_0;
  static constexpr float kExtra = 0.0f;
  static Weights32 unpack(const Block& b) { return {load256(b.qs), h2f(b.d), 0.0f}; }
  static __m256 dot(const Weights32& w, __m256i a) { return _mm256_cvtepi32_ps(dot_s8_s8(w.q, a)); }
};

struct IQ4_NLTraits {
  using Block = BlockIQ4_NL;
  static constexpr float kExtra = 0.0f;
  static Weights32 unpack(const Block& b) {
    const __m128i table128 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues));
    const __m256i table = _mm256_broadcastsi128_si256(table128);
    return {_mm256_shuffle_epi8(table, unpack_nibbles(b.qs)), h2f(b.d), 0.0f};
  }
  static __m256 dot(const Weights32& w, __m256i a) { return _mm256_cvtepi32_ps(dot_s8_s8(w.q, a)); }
};

template <typename Traits>
struct Kernel32 {
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const typename Traits::Block* b = reinterpret_cast<const typename Traits::Block*>(w);
    // Two accumulator sets (even / odd blocks) hide the FMA latency when NT is 1.
    __m256 acc[2][NT];
    float extra[NT];
    for (int t = 0; t < NT; ++t) acc[0][t] = acc[1][t] = _mm256_setzero_ps(), extra[t] = 0.0f;
    auto block = [&](int64_t i, __m256* into) {
      const Weights32 wq = Traits::unpack(b[i]);
      for (int t = 0; t < NT; ++t) {
        const BlockQ8A& a = q8a_row(x, xs, t)[i];
        into[t] = _mm256_fmadd_ps(_mm256_set1_ps(wq.d * a.d), Traits::dot(wq, load256(a.qs)), into[t]);
        if (Traits::kExtra != 0.0f) extra[t] += wq.extra_scale * a.ds;
      }
    };
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
      block(i, acc[0]);
      block(i + 1, acc[1]);
    }
    if (i < nb) block(i, acc[0]);
    for (int t = 0; t < NT; ++t) y[t * ys] = hsum(_mm256_add_ps(acc[0][t], acc[1][t])) + Traits::kExtra * extra[t];
  }
};

// ---- K-quants (256-element super-blocks, BlockQ8_K activations) ----------------------------------
// Within a super-block the integer sums of all sub-blocks, each times its sub-block scale, are
// accumulated in int32 (sumi); the float scales d * d_x (and dmin * d_x for the mins) are applied
// once per super-block.

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
        const BlockQ8_K& a = q8k_row(x, xs, t)[i];
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
      for (int j = 0; j < 16; ++j) sc[j] = (int16_t)q3k_scale(b[i].scales, j);
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
        const BlockQ8_K& a = q8k_row(x, xs, t)[i];
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
      uint8_t sc[8], mn[8];
      for (int j = 0; j < 8; ++j) unpack_k4_scale_min(b[i].scales, j, &sc[j], &mn[j]);
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
        const __m256i sc_lo = _mm256_set1_epi16(sc[2 * c]), sc_hi = _mm256_set1_epi16(sc[2 * c + 1]);
        for (int t = 0; t < NT; ++t) {
          const int8_t* a = q8k_row(x, xs, t)[i].qs + 64 * c;
          const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(a)), sc_lo);
          const __m256i p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(a + 32)), sc_hi);
          sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p_lo, p_hi));
        }
      }
      // mins: sum_j mn_j * (bsum_2j + bsum_2j+1); each min repeated for its two groups of 16.
      uint64_t mn_bytes;
      std::memcpy(&mn_bytes, mn, 8);
      const __m128i mn8 = _mm_cvtsi64_si128((long long)mn_bytes);
      const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));
      const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
      for (int t = 0; t < NT; ++t) {
        const BlockQ8_K& a = q8k_row(x, xs, t)[i];
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
        const BlockQ8_K& a = q8k_row(x, xs, t)[i];
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

}  // namespace

RowDotFn avx2_row_dot(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return row_dot<FloatKernel<LoadF32>>;
    case GgmlType::F16: return row_dot<FloatKernel<LoadF16>>;
    case GgmlType::BF16: return row_dot<FloatKernel<LoadBF16>>;
    case GgmlType::Q4_0: return row_dot<Kernel32<Q4_0Traits>>;
    case GgmlType::Q4_1: return row_dot<Kernel32<Q4_1Traits>>;
    case GgmlType::Q5_0: return row_dot<Kernel32<Q5_0Traits>>;
    case GgmlType::Q5_1: return row_dot<Kernel32<Q5_1Traits>>;
    case GgmlType::Q8_0: return row_dot<Kernel32<Q8_0Traits>>;
    case GgmlType::IQ4_NL: return row_dot<Kernel32<IQ4_NLTraits>>;
    case GgmlType::Q2_K: return row_dot<Q2_KKernel>;
    case GgmlType::Q3_K: return row_dot<Q3_KKernel>;
    case GgmlType::Q4_K: return row_dot<Q45_KKernel<false>>;
    case GgmlType::Q5_K: return row_dot<Q45_KKernel<true>>;
    case GgmlType::Q6_K: return row_dot<Q6_KKernel>;
    default: return nullptr;
  }
}

}  // namespace sinkstream

#else  // not an x86-64 build with the AVX2 flags: no kernels

namespace sinkstream {
RowDotFn avx2_row_dot(GgmlType) { return nullptr; }
}  // namespace sinkstream

#endif
