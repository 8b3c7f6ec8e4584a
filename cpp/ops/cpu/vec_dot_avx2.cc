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

// Q5 fifth bits: byte j = 0x10 where bit j of `bits` is set.
static inline __m256i fifth_bits(uint32_t bits) {
  const __m256i byte_of_bit = _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101,
                                                 0x0202020202020202, 0x0303030303030303);
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), byte_of_bit);
  const __m256i bit_in_byte = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit_in_byte), bit_in_byte);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

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
    switch (nt) {
      case 1: Kernel::template run<1>(nb, row, x, xs, y + r, ys); break;
      case 2: Kernel::template run<2>(nb, row, x, xs, y + r, ys); break;
      case 3: Kernel::template run<3>(nb, row, x, xs, y + r, ys); break;
      default: Kernel::template run<4>(nb, row, x, xs, y + r, ys); break;
    }
  }
}

// ---- 32-element formats ----------------------------------------------------------------------------
// Blocks are processed in pairs (i, i + 1) to match the Q8A activation layout (vec_dot.h):
//   w0 = [block i elements 0..15 | block i+1 elements 0..15]  against activation bytes 0..31 of the pair
//   w1 = [block i elements 16..31 | block i+1 elements 16..31] against bytes 32..63
// so the int32 lanes 0..3 of the products belong to block i and lanes 4..7 to block i + 1.
// Per pair, one multiply gives all four scale products at once:
//   header(i) = [d_i, e_i, d_i+1, e_i+1] (weight halves) times [dx_i, ds_i, dx_i+1, ds_i+1]
// where the lanes 0, 2 scale the integer dot and the lanes 1, 3 are the per-block extra terms
// kExtra * e * ds (Q4_1/Q5_1: the min, e = m, kExtra = 1; Q4_0: the -8 offset, e = d, kExtra = -8).

struct PairWeights {
  __m256i w0, w1;
};

static inline uint32_t load_u32(const void* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
static inline uint32_t twice(uint16_t h) { return (uint32_t)h * 0x10001u; }  // [h, h] as two halves

// Two 16-byte pieces into one register: lo at bits 0..127, hi at 128..255.
static inline __m256i load_two(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(hi), reinterpret_cast<const __m128i*>(lo));
}
static inline __m256i load_one(const uint8_t* lo) {
  return _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo)));
}

static inline PairWeights split_nibbles(__m256i packed) {
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  return {_mm256_and_si256(packed, low4), _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4)};
}

// Fifth bits of a pair: w0 takes bits 0..15 of qh_i then of qh_i+1, w1 bits 16..31 of each.
static inline void add_fifth_bits(PairWeights* p, uint32_t qh_i, uint32_t qh_next) {
  p->w0 = _mm256_or_si256(p->w0, fifth_bits((qh_i & 0xffffu) | (qh_next << 16)));
  p->w1 = _mm256_or_si256(p->w1, fifth_bits((qh_i >> 16) | (qh_next & 0xffff0000u)));
}

// `next` is nullptr for an unpaired last block: its partner's lanes are zero.
struct Q4_0Traits {
  using Block = BlockQ4_0;
  static constexpr bool kSigned = false;
  static constexpr float kExtra = -8.0f;
  static PairWeights unpack(const Block* b, const Block* next) {
    return split_nibbles(next ? load_two(b->qs, next->qs) : load_one(b->qs));
  }
  static __m128i header(const Block* b, const Block* next) {
    return _mm_set_epi32(0, 0, next ? (int)twice(next->d) : 0, (int)twice(b->d));
  }
};

struct Q4_1Traits {
  using Block = BlockQ4_1;
  static constexpr bool kSigned = false;
  static constexpr float kExtra = 1.0f;
  static PairWeights unpack(const Block* b, const Block* next) {
    return split_nibbles(next ? load_two(b->qs, next->qs) : load_one(b->qs));
  }
  static __m128i header(const Block* b, const Block* next) {  // d and m are adjacent: one 32-bit load
    return _mm_set_epi32(0, 0, next ? (int)load_u32(next) : 0, (int)load_u32(b));
  }
};

struct Q5_0Traits {
  using Block = BlockQ5_0;
  static constexpr bool kSigned = false;
  static constexpr float kExtra = -16.0f;
  static PairWeights unpack(const Block* b, const Block* next) {
    PairWeights p = split_nibbles(next ? load_two(b->qs, next->qs) : load_one(b->qs));
    add_fifth_bits(&p, load_u32(b->qh), next ? load_u32(next->qh) : 0);
    return p;
  }
  static __m128i header(const Block* b, const Block* next) {
    return _mm_set_epi32(0, 0, next ? (int)twice(next->d) : 0, (int)twice(b->d));
  }
};

struct Q5_1Traits {
  using Block = BlockQ5_1;
  static constexpr bool kSigned = false;
  static constexpr float kExtra = 1.0f;
  static PairWeights unpack(const Block* b, const Block* next) {
    PairWeights p = split_nibbles(next ? load_two(b->qs, next->qs) : load_one(b->qs));
    add_fifth_bits(&p, load_u32(b->qh), next ? load_u32(next->qh) : 0);
    return p;
  }
  static __m128i header(const Block* b, const Block* next) {
    return _mm_set_epi32(0, 0, next ? (int)load_u32(next) : 0, (int)load_u32(b));
  }
};

struct Q8_0Traits {
  using Block = BlockQ8_0;
  static constexpr bool kSigned = true;
  static constexpr float kExtra = 0.0f;
  static PairWeights unpack(const Block* b, const Block* next) {
    const uint8_t* q = reinterpret_cast<const uint8_t*>(b->qs);
    if (next == nullptr) return {load_one(q), load_one(q + 16)};
    const uint8_t* qn = reinterpret_cast<const uint8_t*>(next->qs);
    return {load_two(q, qn), load_two(q + 16, qn + 16)};
  }
  static __m128i header(const Block* b, const Block* next) {
    return _mm_set_epi32(0, 0, next ? (int)twice(next->d) : 0, (int)twice(b->d));
  }
};

struct IQ4_NLTraits {
  using Block = BlockIQ4_NL;
  static constexpr bool kSigned = true;
  static constexpr float kExtra = 0.0f;
  static PairWeights unpack(const Block* b, const Block* next) {
    const __m256i table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
    const PairWeights idx = split_nibbles(next ? load_two(b->qs, next->qs) : load_one(b->qs));
    return {_mm256_shuffle_epi8(table, idx.w0), _mm256_shuffle_epi8(table, idx.w1)};
  }
  static __m128i header(const Block* b, const Block* next) {
    return _mm_set_epi32(0, 0, next ? (int)twice(next->d) : 0, (int)twice(b->d));
  }
};

template <typename Traits>
struct Kernel32 {
  using Block = typename Traits::Block;

  // Integer dot of a pair against 64 activation bytes: 8 int32 lanes (0..3 block i, 4..7 block i+1).
  // Unsigned weights <= 31: the two int16 products add without overflow (2 * 2 * 31 * 127 < 32768).
  static inline __m256i pair_dot(const PairWeights& w, const PairWeights& w_abs, const int8_t* a) {
    const __m256i a0 = load256(a), a1 = load256(a + 32);
    const __m256i ones = _mm256_set1_epi16(1);
    if (Traits::kSigned) {
      const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs.w0, _mm256_sign_epi8(a0, w.w0)), ones);
      const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs.w1, _mm256_sign_epi8(a1, w.w1)), ones);
      return _mm256_add_epi32(p0, p1);
    }
    const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(w.w0, a0), _mm256_maddubs_epi16(w.w1, a1));
    return _mm256_madd_epi16(p16, ones);
  }

  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const int64_t scales_offset = q8a_scales_offset(nb);
    const __m256i lane_of_scale = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
    // One accumulator per token and pairs always in order, so a row's result has the same summation
    // order whatever tile it is in: outputs do not depend on the thread split or on which tokens are
    // evaluated together. (A second accumulator set to hide the FMA latency gained nothing: a
    // pair's integer work takes longer than that latency.)
    __m256 acc[NT];
    __m128 extra[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps(), extra[t] = _mm_setzero_ps();

    auto pair = [&](int64_t i, bool has_next) {
      const Block* b = reinterpret_cast<const Block*>(w) + i;
      const Block* next = has_next ? b + 1 : nullptr;
      const PairWeights wq = Traits::unpack(b, next);
      PairWeights w_abs = wq;
      if (Traits::kSigned) w_abs = {_mm256_sign_epi8(wq.w0, wq.w0), _mm256_sign_epi8(wq.w1, wq.w1)};
      const __m128 header = _mm_cvtph_ps(Traits::header(b, next));
      for (int t = 0; t < NT; ++t) {
        const uint8_t* row = x + t * xs;
        const float* sc = reinterpret_cast<const float*>(row + scales_offset) + 2 * i;
        const __m128 act =
            has_next ? _mm_loadu_ps(sc) : _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(sc)));
        const __m128 prod = _mm_mul_ps(header, act);  // [s_i, e_i ds_i, s_i+1, e_i+1 ds_i+1]
        const __m256 scale = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(prod), lane_of_scale);
        const __m256i dot = pair_dot(wq, w_abs, reinterpret_cast<const int8_t*>(row) + 64 * (i / 2));
        acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc[t]);
        if (Traits::kExtra != 0.0f) extra[t] = _mm_add_ps(extra[t], prod);
      }
    };
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) pair(i, true);
    if (i < nb) pair(i, false);
    for (int t = 0; t < NT; ++t) {
      float sum = hsum(acc[t]);
      if (Traits::kExtra != 0.0f) {
        alignas(16) float e[4];
        _mm_store_ps(e, extra[t]);
        sum += Traits::kExtra * (e[1] + e[3]);
      }
      y[t * ys] = sum;
    }
  }
};

// ---- K-quants (256-element super-blocks, BlockQ8KA activations) - ----------------------------------
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

}  // namespace

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
}  // namespace sinkstream

#endif
