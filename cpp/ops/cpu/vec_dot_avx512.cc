// AVX-512 kernels (F, BW, VL, DQ, VNNI). Compiled with the AVX-512 flags of CMakeLists.txt and only
// called when cpu_features() reports all of them with ZMM state enabled; every helper is static.
// Types without a kernel here fall back to the AVX2 file (matmul.cc: select_dot_tile).
//
// 32-element formats: one 512-bit register holds a pair of blocks in exactly the order of the Q8A
// activation pair (vec_dot.h): [i: 0..15][i+1: 0..15][i: 16..31][i+1: 16..31]. VPDPBUSD multiplies
// unsigned weight bytes by signed activation bytes and sums groups of four into int32 without
// intermediate saturation; signed weights (Q8_0, IQ4_NL) use |w| and sign(w) * a, exact as well.
// Int32 lanes 0..3 and 8..11 then belong to block i, lanes 4..7 and 12..15 to block i + 1.
#include "ops/cpu/vec_dot.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512VNNI__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>

#include <cstring>

namespace sinkstream {

namespace {

static inline uint32_t load_u32(const void* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
static inline uint32_t twice(uint16_t h) { return (uint32_t)h * 0x10001u; }  // [h, h] as two halves

// Two 16-byte pieces into one 256-bit register: lo at bits 0..127, hi at 128..255.
static inline __m256i load_two(const void* lo, const void* hi) {
  return _mm256_loadu2_m128i(static_cast<const __m128i*>(hi), static_cast<const __m128i*>(lo));
}
static inline __m256i load_one(const void* lo) {
  return _mm256_zextsi128_si256(_mm_loadu_si128(static_cast<const __m128i*>(lo)));
}

// Packed nibbles of a pair [qs_i | qs_i+1] -> [lo_i, lo_i+1, hi_i, hi_i+1] as bytes 0..15.
static inline __m512i split_nibbles(__m256i packed) {
  const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(packed), _mm256_srli_epi16(packed, 4), 1);
  return _mm512_and_si512(both, _mm512_set1_epi8(0x0f));
}

// Q5 fifth bits of a pair, in register order: bit k of the mask is byte k of the register.
static inline __m512i add_fifth_bits(__m512i w, uint32_t qh_i, uint32_t qh_next) {
  const uint64_t lo = (qh_i & 0xffffu) | (uint64_t)(qh_next & 0xffffu) << 16;
  const uint64_t hi = (qh_i >> 16) | (uint64_t)(qh_next >> 16) << 16;
  return _mm512_mask_add_epi8(w, _cvtu64_mask64(lo | hi << 32), w, _mm512_set1_epi8(0x10));
}

static inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

struct Q4_0Traits {
  using Block = BlockQ4_0;
  static constexpr bool kSigned = false;
  static constexpr float kExtra = -8.0f;  // sum (q - 8) a = sum q a - 8 sum a
  static __m512i unpack(const Block* b, const Block* next) {
    return split_nibbles(next ? load_two(b->qs, next->qs) : load_one(b->qs));
  }
  static __m128i header(const Block* b, const Block* next) {
    return _mm_set_epi32(0, 0, next ? (int)twice(next->d) : 0, (int)twice(b->d));
  }
};

struct Q4_1Traits {
  using Block = BlockQ4_1;
  static constexpr bool kSigned = false;
  static constexpr float kExtra = 1.0f;  // + m * d_x * sum a
  static __m512i unpack(const Block* b, const Block* next) {
    return split_nibbles(next ? load_two(b->qs, next->qs) : load_one(b->qs));
  }
  static __m128i header(const Block* b, const Block* next) {  // d and m are adjacent
    return _mm_set_epi32(0, 0, next ? (int)load_u32(next) : 0, (int)load_u32(b));
  }
};

struct Q5_0Traits {
  using Block = BlockQ5_0;
  static constexpr bool kSigned = false;
  static constexpr float kExtra = -16.0f;
  static __m512i unpack(const Block* b, const Block* next) {
    const __m512i w = split_nibbles(next ? load_two(b->qs, next->qs) : load_one(b->qs));
    return add_fifth_bits(w, load_u32(b->qh), next ? load_u32(next->qh) : 0);
  }
  static __m128i header(const Block* b, const Block* next) {
    return _mm_set_epi32(0, 0, next ? (int)twice(next->d) : 0, (int)twice(b->d));
  }
};

struct Q5_1Traits {
  using Block = BlockQ5_1;
  static constexpr bool kSigned = false;
  static constexpr float kExtra = 1.0f;
  static __m512i unpack(const Block* b, const Block* next) {
    const __m512i w = split_nibbles(next ? load_two(b->qs, next->qs) : load_one(b->qs));
    return add_fifth_bits(w, load_u32(b->qh), next ? load_u32(next->qh) : 0);
  }
  static __m128i header(const Block* b, const Block* next) {
    return _mm_set_epi32(0, 0, next ? (int)load_u32(next) : 0, (int)load_u32(b));
  }
};

struct Q8_0Traits {
  using Block = BlockQ8_0;
  static constexpr bool kSigned = true;
  static constexpr float kExtra = 0.0f;
  static __m512i unpack(const Block* b, const Block* next) {
    const __m256i first = next ? load_two(b->qs, next->qs) : load_one(b->qs);
    const __m256i second = next ? load_two(b->qs + 16, next->qs + 16) : load_one(b->qs + 16);
    return _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1);
  }
  static __m128i header(const Block* b, const Block* next) {
    return _mm_set_epi32(0, 0, next ? (int)twice(next->d) : 0, (int)twice(b->d));
  }
};

struct IQ4_NLTraits {
  using Block = BlockIQ4_NL;
  static constexpr bool kSigned = true;
  static constexpr float kExtra = 0.0f;
  static __m512i unpack(const Block* b, const Block* next) {
    const __m512i table =
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
    return _mm512_shuffle_epi8(table, split_nibbles(next ? load_two(b->qs, next->qs) : load_one(b->qs)));
  }
  static __m128i header(const Block* b, const Block* next) {
    return _mm_set_epi32(0, 0, next ? (int)twice(next->d) : 0, (int)twice(b->d));
  }
};

// Same structure as the AVX2 Kernel32 (see there): header(i) = [d_i, e_i, d_i+1, e_i+1] times the
// activation scales [dx_i, ds_i, dx_i+1, ds_i+1]; lanes 0, 2 scale the integer dots, lanes 1, 3 are
// the extra terms. One accumulator per (row, token), pairs in order: results do not depend on tiles.
template <typename Traits>
struct Kernel32 {
  using Block = typename Traits::Block;

  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const int64_t scales_offset = q8a_scales_offset(nb);
    const __m512i lane_of_scale = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2);
    __m512 acc[NT];
    __m128 extra[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps(), extra[t] = _mm_setzero_ps();

    auto pair = [&](int64_t i, bool has_next) {
      const Block* b = reinterpret_cast<const Block*>(w) + i;
      const Block* next = has_next ? b + 1 : nullptr;
      __m512i wq = Traits::unpack(b, next);
      __mmask64 negative = 0;
      if (Traits::kSigned) {
        negative = _mm512_movepi8_mask(wq);
        wq = _mm512_abs_epi8(wq);
      }
      const __m128 header = _mm_cvtph_ps(Traits::header(b, next));
      for (int t = 0; t < NT; ++t) {
        const uint8_t* row = x + t * xs;
        const float* sc = reinterpret_cast<const float*>(row + scales_offset) + 2 * i;
        const __m128 act =
            has_next ? _mm_loadu_ps(sc) : _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(sc)));
        const __m128 prod = _mm_mul_ps(header, act);  // [s_i, e_i ds_i, s_i+1, e_i+1 ds_i+1]
        const __m512 scale = _mm512_permutexvar_ps(lane_of_scale, _mm512_castps128_ps512(prod));
        __m512i a = _mm512_loadu_si512(row + 64 * (i / 2));
        if (Traits::kSigned) a = _mm512_mask_sub_epi8(a, negative, _mm512_setzero_si512(), a);
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, a);
        acc[t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[t]);
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

// ---- float weights: 16 per step, masked loads for the tail -----------------------------------------

struct LoadF32 {
  static __m512 load16(const uint8_t* w, int64_t i, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(w) + i);
  }
};
struct LoadF16 {
  static __m512 load16(const uint8_t* w, int64_t i, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + 2 * i));
  }
};
struct LoadBF16 {
  static __m512 load16(const uint8_t* w, int64_t i, __mmask16 m) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w + 2 * i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
};

template <typename Load>
struct FloatKernel {
  template <int NT>
  static void run(int64_t n, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
      const __m512 wv = Load::load16(w, i, m);
      for (int t = 0; t < NT; ++t)
        acc[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(x + t * xs) + i), acc[t]);
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = hsum(acc[t]);
  }
};

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

}  // namespace

DotTileFn avx512_dot_tile(GgmlType type) {
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
    default: return nullptr;  // K-quants: the AVX2 kernels
  }
}

}  // namespace sinkstream

#else  // not an x86-64 build with the AVX-512 flags: no kernels

namespace sinkstream {
DotTileFn avx512_dot_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream

#endif
