// AVX-512 VNNI kernels for packed weights (layout and summation order: packed_weights.h). Compiled
// with the AVX-512 flags of CMakeLists.txt; only called at Isa::Avx512 (cpu_features.h).
//
// Per block, each of the 8 (Q8_0) or 4 x 2 (nibble types) registers of 16 rows' weights meets each
// token's matching 4 activation bytes, broadcast by VPDPBUSD's embedded {1to16} load: unsigned weight
// bytes times signed activation bytes, four products summed into each row's int32 lane, exactly.
// Weights are unsigned here: nibbles (Q4_0's -8 and Q5_0's -16 offsets), Q8_0 + 128 and IQ4_NL's
// codebook + 128; every offset o comes back once per block as o * d_w * ds_x, with ds_x = d_x *
// sum(activation quants) from the Q8A row (vec_dot.h).
#include "ops/cpu/packed_weights.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512VNNI__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "ops/cpu/vec_dot.h"
#include "quant/quant_blocks.h"

namespace sinkstream {

namespace {

#include "ops/cpu/packed_x86.inc"

static inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
static inline __m512 load_halves(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}


// What each 32-element type's block looks like to the kernel:
//   kQuantBytes: packed quant bytes per block (256: nibbles, 512: Q8_0's bytes)
//   first_element(j): the first of the 4 elements of each row that unpacked register j holds
//   kFifthBits: add 16 where the block's fifth-bit masks say (Q5_0, Q5_1)
//   map(nibbles): the unsigned weight bytes of nibbles (IQ4_NL: its codebook + 128)
//   kMins: the block has a min m (the extra term is m * ds_x); else kOffset, the constant the stored
//          unsigned weight exceeds the true quant by (the extra term is -kOffset * d_w * ds_x)
struct NibbleLayout {
  static constexpr int kQuantBytes = 256;
  // Register j < 4: low nibbles of chunk j; j >= 4: high nibbles of chunk j - 4.
  static constexpr int first_element(int j) { return j < 4 ? 4 * j : 16 + 4 * (j - 4); }
  static __m512i map(__m512i nibbles) { return nibbles; }  // the nibble is the weight byte
};

struct Q4_0Packed : NibbleLayout {
  static constexpr bool kFifthBits = false, kMins = false;
  static constexpr float kOffset = 8.0f;
};
struct Q4_1Packed : NibbleLayout {
  static constexpr bool kFifthBits = false, kMins = true;
  static constexpr float kOffset = 0.0f;
};
struct Q5_0Packed : NibbleLayout {
  static constexpr bool kFifthBits = true, kMins = false;
  static constexpr float kOffset = 16.0f;
};
struct Q5_1Packed : NibbleLayout {
  static constexpr bool kFifthBits = true, kMins = true;
  static constexpr float kOffset = 0.0f;
};
struct IQ4_NLPacked : NibbleLayout {
  static constexpr bool kFifthBits = false, kMins = false;
  static constexpr float kOffset = 128.0f;
  // Hides the base's: the codebook + 128 (in 1 .. 241: flipping the sign bit of an int8 adds 128).
  static __m512i map(__m512i nibbles) {
    const __m128i codebook = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues));
    return _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_xor_si128(codebook, _mm_set1_epi8(-128))), nibbles);
  }
};

// The int32 sums of one block, 16 rows x NT tokens, into isum[t].
template <typename Traits, int NT>
static inline void block_sums(const uint8_t* quants, const uint8_t* fifth, const uint8_t* const* act, int64_t b,
                              __m512i* isum) {
  const __m512i low4 = _mm512_set1_epi8(0x0f), sixteen = _mm512_set1_epi8(0x10);
  for (int c = 0; c < 4; ++c) {
    const __m512i packed = load512(quants + 64 * c);
    __m512i lo = _mm512_and_si512(packed, low4);
    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
    if constexpr (Traits::kFifthBits) {
      uint64_t mask_lo, mask_hi;
      std::memcpy(&mask_lo, fifth + 8 * c, 8);
      std::memcpy(&mask_hi, fifth + 8 * (c + 4), 8);
      lo = _mm512_mask_add_epi8(lo, _cvtu64_mask64(mask_lo), lo, sixteen);
      hi = _mm512_mask_add_epi8(hi, _cvtu64_mask64(mask_hi), hi, sixteen);
    }
    lo = Traits::map(lo);
    hi = Traits::map(hi);
    const int e_lo = Traits::first_element(c), e_hi = Traits::first_element(c + 4);
    for (int t = 0; t < NT; ++t) {
      isum[t] = _mm512_dpbusd_epi32(isum[t], lo, _mm512_set1_epi32(load_i32(act[t] + q8a_element_offset(b, e_lo))));
      isum[t] = _mm512_dpbusd_epi32(isum[t], hi, _mm512_set1_epi32(load_i32(act[t] + q8a_element_offset(b, e_hi))));
    }
  }
}

struct Q8_0Packed {
  static constexpr int kQuantBytes = 512;
  static constexpr bool kFifthBits = false, kMins = false;
  static constexpr float kOffset = 128.0f;
};

template <int NT>
static inline void block_sums_q8_0(const uint8_t* quants, const uint8_t* const* act, int64_t b, __m512i* isum) {
  for (int j = 0; j < 8; ++j) {
    const __m512i w = load512(quants + 64 * j);
    for (int t = 0; t < NT; ++t)
      isum[t] = _mm512_dpbusd_epi32(isum[t], w, _mm512_set1_epi32(load_i32(act[t] + q8a_element_offset(b, 4 * j))));
  }
}


// The 32-element types (Traits above): per block, 16 rows x NT tokens of exact int32 sums, then
// one scale step and one offset / min step per token.
template <typename Traits>
struct Packed32 {
  static constexpr int kMaxTokens = 8;
  template <int NT>
  static void run(int64_t nb, const uint8_t* group, int64_t group_bytes, const uint8_t* x, int64_t xs, float* y,
                  int64_t ys, __mmask16 store) {
    const auto [quants, fifth, scales, mins] = regions32(group, nb, Traits::kQuantBytes, Traits::kFifthBits);
    const int64_t scales_offset = q8a_scales_offset(nb);
    const uint8_t* act[NT];
    const Q8AScale* act_scales[NT];
    __m512 acc[NT], extra[NT];
    for (int t = 0; t < NT; ++t) {
      act[t] = x + t * xs;
      act_scales[t] = reinterpret_cast<const Q8AScale*>(act[t] + scales_offset);
      acc[t] = _mm512_setzero_ps();
      extra[t] = _mm512_setzero_ps();
    }
    const GroupPrefetch prefetch(group, group_bytes, nb);
    for (int64_t b = 0; b < nb; ++b) {
      prefetch.block(b);
      __m512i isum[NT];
      for (int t = 0; t < NT; ++t) isum[t] = _mm512_setzero_si512();
      if constexpr (Traits::kQuantBytes == 512)
        block_sums_q8_0<NT>(quants + b * 512, act, b, isum);
      else
        block_sums<Traits, NT>(quants + b * 256, fifth + b * 64, act, b, isum);
      const __m512 d = load_halves(scales + b * 32);
      // The offset or min term's weight factor: min m, or -offset * d.
      const __m512 e = Traits::kMins ? load_halves(mins + b * 32) : _mm512_mul_ps(d, _mm512_set1_ps(-Traits::kOffset));
      for (int t = 0; t < NT; ++t) {
        const Q8AScale s = act_scales[t][b];
        acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(s.d)), _mm512_cvtepi32_ps(isum[t]), acc[t]);
        extra[t] = _mm512_fmadd_ps(e, _mm512_set1_ps(s.ds), extra[t]);
      }
    }
    for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ys, store, _mm512_add_ps(acc[t], extra[t]));
  }
};

// ---- K-quants: one int32 total per super-block (each sub-block's exact sum times its integer
// scale), one float step per super-block and token ----------------------------------------------

static inline const BlockQ8KA* q8k_block(const uint8_t* x, int64_t xs, int t, int64_t b) {
  return reinterpret_cast<const BlockQ8KA*>(x + t * xs) + b;
}
// 4 activation bytes as 16 copies (for VPDPBUSD) or 2 int16 bsums as 16 copies (for VPDPWSSD).
static inline __m512i broadcast4(const void* p) { return _mm512_set1_epi32(load_i32(static_cast<const uint8_t*>(p))); }
// 16 bytes (one per row) as int32 lanes.
static inline __m512i widen16(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Q4_K / Q5_K: y = d d_x sum_j sc_j isum_j - dmin d_x sum_j m_j (bsum_2j + bsum_2j+1).
template <bool kFifthBits>
struct PackedQ45K {
  static constexpr int kMaxTokens = 4;
  template <int NT>
  static void run(int64_t nb, const uint8_t* group, int64_t group_bytes, const uint8_t* x, int64_t xs, float* y,
                  int64_t ys, __mmask16 store) {
    const auto [quants, fifth, scales, mins, d_half, dmin_half] = regions_q45k(group, nb, kFifthBits);
    const __m512i low4 = _mm512_set1_epi8(0x0f), sixteen = _mm512_set1_epi8(0x10);
    __m512 acc[NT], extra[NT];
    for (int t = 0; t < NT; ++t) acc[t] = extra[t] = _mm512_setzero_ps();
    const GroupPrefetch prefetch(group, group_bytes, nb);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* q = quants + b * 2048;
      __m512i total[NT];
      for (int t = 0; t < NT; ++t) total[t] = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) {  // sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles)
        prefetch.block_part(b, c, 4);
        __m512i sum_lo[NT], sum_hi[NT];
        for (int t = 0; t < NT; ++t) sum_lo[t] = sum_hi[t] = _mm512_setzero_si512();
        for (int i = 0; i < 8; ++i) {
          const int n = 8 * c + i;
          const __m512i packed = load512(q + 64 * n);
          __m512i lo = _mm512_and_si512(packed, low4);
          __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
          if constexpr (kFifthBits) {
            uint64_t mask_lo, mask_hi;
            std::memcpy(&mask_lo, fifth + b * 512 + 8 * n, 8);
            std::memcpy(&mask_hi, fifth + b * 512 + 8 * (32 + n), 8);
            lo = _mm512_mask_add_epi8(lo, _cvtu64_mask64(mask_lo), lo, sixteen);
            hi = _mm512_mask_add_epi8(hi, _cvtu64_mask64(mask_hi), hi, sixteen);
          }
          for (int t = 0; t < NT; ++t) {
            const int8_t* a = q8k_block(x, xs, t, b)->qs + 64 * c + 4 * i;
            sum_lo[t] = _mm512_dpbusd_epi32(sum_lo[t], lo, broadcast4(a));
            sum_hi[t] = _mm512_dpbusd_epi32(sum_hi[t], hi, broadcast4(a + 32));
          }
        }
        const __m512i sc_lo = widen16(scales + b * 128 + 16 * (2 * c));
        const __m512i sc_hi = widen16(scales + b * 128 + 16 * (2 * c + 1));
        for (int t = 0; t < NT; ++t)
          total[t] = _mm512_add_epi32(total[t], _mm512_add_epi32(_mm512_mullo_epi32(sum_lo[t], sc_lo),
                                                                 _mm512_mullo_epi32(sum_hi[t], sc_hi)));
      }
      // Mins: the 16-element bsums in pairs against [m_j, m_j] in each row's lane.
      __m512i min_total[NT];
      for (int t = 0; t < NT; ++t) min_total[t] = _mm512_setzero_si512();
      for (int j = 0; j < 8; ++j) {
        const __m512i m = widen16(mins + b * 128 + 16 * j);
        const __m512i m_twice = _mm512_or_si512(m, _mm512_slli_epi32(m, 16));
        for (int t = 0; t < NT; ++t)
          min_total[t] = _mm512_dpwssd_epi32(min_total[t], m_twice, broadcast4(q8k_block(x, xs, t, b)->bsums + 2 * j));
      }
      const __m512 d = load_halves(d_half + b * 32), dmin = load_halves(dmin_half + b * 32);
      for (int t = 0; t < NT; ++t) {
        const __m512 dx = _mm512_set1_ps(q8k_block(x, xs, t, b)->d);
        acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(total[t]), acc[t]);
        extra[t] = _mm512_fmadd_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(min_total[t]), extra[t]);
      }
    }
    for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ys, store, _mm512_sub_ps(acc[t], extra[t]));
  }
};

// Q6_K: y = d d_x sum_j sc_j (isum_j - 32 bsum_j), the 6-bit values stored unsigned (q + 32).
struct PackedQ6K {
  static constexpr int kMaxTokens = 4;
  template <int NT>
  static void run(int64_t nb, const uint8_t* group, int64_t group_bytes, const uint8_t* x, int64_t xs, float* y,
                  int64_t ys, __mmask16 store) {
    const auto [quants, scales, d_half] = regions_q6k(group, nb);
    const __m512i low4 = _mm512_set1_epi8(0x0f), top2 = _mm512_set1_epi8(0x30);
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
    const GroupPrefetch prefetch(group, group_bytes, nb);
    for (int64_t b = 0; b < nb; ++b) {
      __m512i total[NT], offset[NT];
      for (int t = 0; t < NT; ++t) total[t] = offset[t] = _mm512_setzero_si512();
      for (int p = 0; p < 8; ++p) {  // sub-blocks 2p, 2p + 1
        prefetch.block_part(b, p, 8);
        // The pair's scales as int16 pairs [sc_2p, sc_2p+1] per row: the bsums term in one VPDPWSSD.
        const __m512i sc_pair = _mm512_cvtepi8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + b * 256 + 32 * p)));
        for (int t = 0; t < NT; ++t)
          offset[t] = _mm512_dpwssd_epi32(offset[t], sc_pair, broadcast4(q8k_block(x, xs, t, b)->bsums + 2 * p));
        for (int half = 0; half < 2; ++half) {
          const int j = 2 * p + half;
          const uint8_t* chunks = quants + b * 3072 + j * 192;
          const __m512i l0 = load512(chunks), l1 = load512(chunks + 64), h = load512(chunks + 128);
          // Value = low nibble | top two bits << 4 (bits 4, 5; the masks drop what the 16-bit shifts carry over).
          const auto value = [&](__m512i low, __m512i top) {
            return _mm512_or_si512(_mm512_and_si512(low, low4), _mm512_and_si512(top, top2));
          };
          const __m512i v[4] = {value(l0, _mm512_slli_epi16(h, 4)),
                                value(_mm512_srli_epi16(l0, 4), _mm512_slli_epi16(h, 2)), value(l1, h),
                                value(_mm512_srli_epi16(l1, 4), _mm512_srli_epi16(h, 2))};
          // Sub-block j's int32 scale: the low (even j) or high (odd j) int16 of each lane, sign-extended.
          const __m512i sc =
              half == 0 ? _mm512_srai_epi32(_mm512_slli_epi32(sc_pair, 16), 16) : _mm512_srai_epi32(sc_pair, 16);
          for (int t = 0; t < NT; ++t) {
            const int8_t* a = q8k_block(x, xs, t, b)->qs + 16 * j;
            __m512i sum = _mm512_setzero_si512();
            for (int k = 0; k < 4; ++k) sum = _mm512_dpbusd_epi32(sum, v[k], broadcast4(a + 4 * k));
            total[t] = _mm512_add_epi32(total[t], _mm512_mullo_epi32(sum, sc));
          }
        }
      }
      const __m512 d = load_halves(d_half + b * 32);
      for (int t = 0; t < NT; ++t) {
        // - 32 sum_j sc_j bsum_j
        const __m512i centered = _mm512_sub_epi32(total[t], _mm512_slli_epi32(offset[t], 5));
        const __m512 dx = _mm512_set1_ps(q8k_block(x, xs, t, b)->d);
        acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(centered), acc[t]);
      }
    }
    for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ys, store, acc[t]);
  }
};

// Q2_K: y = d d_x sum_j sc_j isum_j - dmin d_x sum_j m_j bsum_j (sub-blocks of 16, 4-bit sc and m).
// Q3_K: y = d d_x sum_j sc_j (isum_j - 4 bsum_j), the stored values q + 4 in 0 .. 7, sc signed.
template <bool kQ3>
struct PackedQ23K {
  static constexpr int kMaxTokens = 4;
  template <int NT>
  static void run(int64_t nb, const uint8_t* group, int64_t group_bytes, const uint8_t* x, int64_t xs, float* y,
                  int64_t ys, __mmask16 store) {
    const auto [quants, masks, scales, d_half, dmin_half] = regions_q23k(group, nb, kQ3);
    const __m512i three = _mm512_set1_epi8(3), four = _mm512_set1_epi8(4), low4 = _mm512_set1_epi32(0x0f);
    __m512 acc[NT], extra[NT];
    for (int t = 0; t < NT; ++t) acc[t] = extra[t] = _mm512_setzero_ps();
    const GroupPrefetch prefetch(group, group_bytes, nb);
    for (int64_t b = 0; b < nb; ++b) {
      prefetch.block(b);
      __m512i total[NT], offset[NT];
      for (int t = 0; t < NT; ++t) total[t] = offset[t] = _mm512_setzero_si512();
      for (int j = 0; j < 16; ++j) {
        const __m512i chunk = load512(quants + b * 1024 + 64 * j);
        __m512i v[4];
        for (int i = 0; i < 4; ++i) {
          v[i] = _mm512_and_si512(_mm512_srli_epi16(chunk, 2 * i), three);
          if constexpr (kQ3) {
            uint64_t mask;
            std::memcpy(&mask, masks + b * 512 + 8 * (4 * j + i), 8);
            v[i] = _mm512_mask_add_epi8(v[i], _cvtu64_mask64(mask), v[i], four);
          }
        }
        __m512i sc;
        if constexpr (kQ3) {
          const __m512i pair = _mm512_cvtepi8_epi16(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + b * 256 + 32 * (j / 2))));
          sc = j % 2 == 0 ? _mm512_srai_epi32(_mm512_slli_epi32(pair, 16), 16) : _mm512_srai_epi32(pair, 16);
        } else {
          sc = _mm512_and_si512(widen16(scales + b * 256 + 16 * j), low4);
        }
        for (int t = 0; t < NT; ++t) {
          const int8_t* a = q8k_block(x, xs, t, b)->qs + 16 * j;
          __m512i sum = _mm512_setzero_si512();
          for (int i = 0; i < 4; ++i) sum = _mm512_dpbusd_epi32(sum, v[i], broadcast4(a + 4 * i));
          total[t] = _mm512_add_epi32(total[t], _mm512_mullo_epi32(sum, sc));
        }
      }
      // Per pair of sub-blocks, [x_2p, x_2p+1] int16 in each row's lane against the bsums pair: Q2_K's
      // mins (the high nibbles), Q3_K's scales (for the -4 offset).
      for (int p = 0; p < 8; ++p) {
        __m512i pair;
        if constexpr (kQ3) {
          pair = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + b * 256 + 32 * p)));
        } else {
          const __m512i even = _mm512_srli_epi32(widen16(scales + b * 256 + 16 * (2 * p)), 4);
          const __m512i odd = _mm512_srli_epi32(widen16(scales + b * 256 + 16 * (2 * p + 1)), 4);
          pair = _mm512_or_si512(even, _mm512_slli_epi32(odd, 16));
        }
        for (int t = 0; t < NT; ++t)
          offset[t] = _mm512_dpwssd_epi32(offset[t], pair, broadcast4(q8k_block(x, xs, t, b)->bsums + 2 * p));
      }
      const __m512 d = load_halves(d_half + b * 32);
      for (int t = 0; t < NT; ++t) {
        const __m512 dx = _mm512_set1_ps(q8k_block(x, xs, t, b)->d);
        if constexpr (kQ3) {
          // - 4 sum_j sc_j bsum_j
          const __m512i centered = _mm512_sub_epi32(total[t], _mm512_slli_epi32(offset[t], 2));
          acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(centered), acc[t]);
        } else {
          acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(total[t]), acc[t]);
          extra[t] = _mm512_fmadd_ps(_mm512_mul_ps(load_halves(dmin_half + b * 32), dx), _mm512_cvtepi32_ps(offset[t]),
                                     extra[t]);
        }
      }
    }
    for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ys, store, _mm512_sub_ps(acc[t], extra[t]));
  }
};

// Tokens [t0, t0 + nt) of one group, at most Kernel::kMaxTokens at a time (its registers' limit).
template <typename Kernel, int NT>
static void run_tokens(int64_t nb, const uint8_t* group, int64_t group_bytes, const uint8_t* x, int64_t xs, int nt,
                       float* out, int64_t ys, __mmask16 store) {
  if constexpr (NT > 1) {
    if (nt < NT) return run_tokens<Kernel, NT - 1>(nb, group, group_bytes, x, xs, nt, out, ys, store);
  }
  Kernel::template run<NT>(nb, group, group_bytes, x, xs, out, ys, store);
}

template <typename Kernel>
void packed_tile(int64_t nb, const uint8_t* w, int64_t group_bytes, int n_groups, int64_t rows_left,
                 const uint8_t* x, int64_t xs, int nt, float* y, int64_t ys) {
  for (int g = 0; g < n_groups; ++g) {
    const int64_t left = rows_left - (int64_t)g * kPackRows;
    const __mmask16 store = left >= kPackRows ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
    const uint8_t* group = w + g * group_bytes;
    for (int t = 0; t < nt; t += Kernel::kMaxTokens)  // the group's weights stay in L1 for the next tokens
      run_tokens<Kernel, Kernel::kMaxTokens>(nb, group, group_bytes, x + t * xs, xs,
                                             std::min(nt - t, Kernel::kMaxTokens), y + g * kPackRows + t * ys, ys,
                                             store);
  }
}

}  // namespace

PackedTileFn avx512_packed_tile(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0: return packed_tile<Packed32<Q4_0Packed>>;
    case GgmlType::Q4_1: return packed_tile<Packed32<Q4_1Packed>>;
    case GgmlType::Q5_0: return packed_tile<Packed32<Q5_0Packed>>;
    case GgmlType::Q5_1: return packed_tile<Packed32<Q5_1Packed>>;
    case GgmlType::Q8_0: return packed_tile<Packed32<Q8_0Packed>>;
    case GgmlType::IQ4_NL: return packed_tile<Packed32<IQ4_NLPacked>>;
    case GgmlType::Q2_K: return packed_tile<PackedQ23K<false>>;
    case GgmlType::Q3_K: return packed_tile<PackedQ23K<true>>;
    case GgmlType::Q4_K: return packed_tile<PackedQ45K<false>>;
    case GgmlType::Q5_K: return packed_tile<PackedQ45K<true>>;
    case GgmlType::Q6_K: return packed_tile<PackedQ6K>;
    default: return nullptr;
  }
}

}  // namespace sinkstream

#else  // not an x86-64 build with the AVX-512 flags: no kernels

namespace sinkstream {
PackedTileFn avx512_packed_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream

#endif
