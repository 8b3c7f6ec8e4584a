// AVX2 kernels for packed weights of every packed type (layout and summation order:
// packed_weights.h). Compiled with -mavx2 -mfma -mf16c; only called at Isa::Avx2.
//
// A 16-row group is two 256-bit halves (rows 0-7 and 8-15: each 64-byte chunk is the two halves
// one after the other). Without VPDPBUSD, 4 products per row come from VPMADDUBSW (unsigned weight
// byte times signed activation byte, pairs summed to int16) and VPMADDWD by ones (pairs of int16 to
// int32). The int16 step is exact: a nibble weight is at most 31 (Q5), so a pair is at most
// 2 * 31 * 127. Q8_0's stored bytes (value + 128) would overflow it, so its kernel multiplies the
// signed values instead (|q| times a with q's sign, at most 2 * 128 * 127 per pair) and adds back
// 128 * the block's activation sum, in integers. The integer sums are therefore the AVX-512
// kernels' exactly, and so are the float steps after them. IQ4_NL the same way, its nibbles looked
// up in the codebook. The K-quants (weights at most 63) follow the AVX-512 kernels step by step.
// Q5 fifth bits and Q3_K high bits come from the bit planes of AVX2 packing (packed_weights.h).
#include "ops/cpu/packed_weights.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/cpu/vec_dot.h"
#include "quant/quant_blocks.h"

namespace sinkstream {

namespace {

#include "ops/cpu/kernel32_x86.inc"  // load256
#include "ops/cpu/packed_x86.inc"

// Sum of the 32 activation quants of block b of a Q8A row (a 16-byte piece for elements 0-15 and
// one for 16-31): SAD of the bytes + 128 against zero, minus 32 * 128.
static inline int32_t block_sum(const uint8_t* a, int64_t b) {
  const __m256i bytes = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + q8a_quant_offset(b, 1))),
                                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + q8a_quant_offset(b, 0))));
  const __m256i sad = _mm256_sad_epu8(_mm256_xor_si256(bytes, _mm256_set1_epi8(-128)), _mm256_setzero_si256());
  __m128i sum = _mm_add_epi64(_mm256_castsi256_si128(sad), _mm256_extracti128_si256(sad, 1));
  sum = _mm_add_epi64(sum, _mm_unpackhi_epi64(sum, sum));
  return _mm_cvtsi128_si32(sum) - 32 * 128;
}

// VPMADDUBSW's int16 pairs, added up in int16 before they are widened to int32 (one VPMADDWD for
// several products instead of one each, the AVX2 kernels' costliest step): a pair of unsigned
// weights up to kMaxWeight times activation bytes (|a| <= 127 from the quantizer; 128 allowed
// here) is at most 2 * kMaxWeight * 128, so kProducts pairs still fit int16 exactly (15: 8,
// 31: 4, 63: 2, 7: 18). The sums are the same integers as widening each product: exact.
template <int kMaxWeight>
struct Pairs16 {
  static constexpr int kProducts = 32767 / (2 * kMaxWeight * 128);
  static_assert(kProducts >= 1, "a single pair must fit int16");
};
// Adjacent int16 pairs to int32 lanes (4 products per lane).
static inline __m256i widen_pairs(__m256i pairs) { return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)); }
// Four unsigned weight bytes per int32 lane times the same four activation bytes in every lane.
static inline __m256i dot4(__m256i w, __m256i a) { return widen_pairs(_mm256_maddubs_epi16(w, a)); }

// Signed weight bytes q (-128 .. 127) times four activation bytes per int32 lane, exactly: |q|
// times a with q's sign (a pair is at most 2 * 128 * 127, within VPMADDUBSW's int16).
static inline __m256i dot4_signed(__m256i q, __m256i a) { return dot4(_mm256_abs_epi8(q), _mm256_sign_epi8(a, q)); }

// One mask's bits from a half's bit plane (packed_weights.h; AVX2 packing): 1 << to in each byte
// whose plane bit `bit` is set. A 16-bit shift moves bit `bit` of each byte to bit `to`, and the
// mask keeps only that bit: what crosses from the other byte of the pair lands below `to` (a left
// shift by to - bit <= to) or above it (a right shift by s = bit - to: at 8 - s and up).
static inline __m256i plane_bits(__m256i plane, int bit, int to) {
  const __m256i moved = bit < to ? _mm256_slli_epi16(plane, to - bit) : _mm256_srli_epi16(plane, bit - to);
  return _mm256_and_si256(moved, _mm256_set1_epi8((char)(1 << to)));
}

// y[t] (the first `rows` of a half's 8) = results[t], for nt tokens ys apart.
static inline void store_half(const __m256* results, int nt, float* y, int64_t ys, int rows) {
  for (int t = 0; t < nt; ++t) {
    const __m256 out = results[t];
    if (rows >= 8) {
      _mm256_storeu_ps(y + t * ys, out);
    } else {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, out);
      std::memcpy(y + t * ys, lanes, (size_t)rows * sizeof(float));
    }
  }
}

// A kernel's run(): its run_half on rows 0-7, then on rows 8-15 where the group has them.
template <typename Kernel>
struct Halves {
  static constexpr int kMaxTokens = 4;
  // sums: the tokens' block sums (nb per token: block_sums), for the kernels that use them.
  template <int NT>
  static void run(int64_t nb, const uint8_t* group, int64_t group_bytes, const uint8_t* x, int64_t xs, float* y,
                  int64_t ys, int64_t left, const int32_t* sums) {
    for (int half = 0; half < 2 && left > 8 * half; ++half)
      Kernel::template run_half<NT>(nb, group, group_bytes, half, x, xs, y + 8 * half, ys,
                                    (int)std::min<int64_t>(8, left - 8 * half), sums);
  }
};

// The second accumulator of each token (packed_weights.h: fma(e_w, ds_x) per block, in block
// order, where e_w is the min or -offset * d_w). For tiles of 3 or 4 tokens (prefill, batched
// steps; kApart) it is summed in a loop of its own after the integer work: AVX2 has 16 registers,
// and these NT sums beside acc, the int16 pairs and the unpacked weights made the compiler spill
// in the main loop (benchmarks/kernel_cycles.py, znver3: Q4_1's 4-token block loop 49 -> 41
// cycles). One-token decode, timed with the separate loop, was slower (it loads and converts the
// scales a second time), so for 1 or 2 tokens the terms stay in the block loop. Same operations
// in the same order either way, so the same bits.
template <int NT, bool kMins>
struct OffsetTerms {
  static constexpr bool kApart = NT >= 3;
  int64_t nb;
  const uint8_t *scales, *mins;  // the group's regions (mins: kMins only)
  int half;
  float offset;  // e_w = -offset * d_w without mins
  __m256 extra[NT];

  OffsetTerms(int64_t nb, const uint8_t* scales, const uint8_t* mins, int half, float offset)
      : nb(nb), scales(scales), mins(mins), half(half), offset(offset) {
    for (int t = 0; t < NT; ++t) extra[t] = _mm256_setzero_ps();
  }
  // Block b's scales d_w as floats.
  __m256 block_d(int64_t b) const {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + b * 32 + 16 * half)));
  }
  // Block b's term for each token; d: block_d(b) (used without mins).
  void add_block(const uint8_t* x, int64_t xs, int64_t b, __m256 d) {
    const __m256 e =
        kMins ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mins + b * 32 + 16 * half)))
              : _mm256_mul_ps(d, _mm256_set1_ps(-offset));
    for (int t = 0; t < NT; ++t) {
      const Q8AScale s = reinterpret_cast<const Q8AScale*>(x + t * xs + q8a_scales_offset(nb))[b];
      extra[t] = _mm256_fmadd_ps(e, _mm256_set1_ps(s.ds), extra[t]);
    }
  }
  // In the block loop, after block b's integer work (d: its block_d, loaded there already): its
  // terms unless kApart.
  void in_block_loop(const uint8_t* x, int64_t xs, int64_t b, __m256 d) {
    if (!kApart) add_block(x, xs, b, d);
  }
  // After the block loop: every block's terms if kApart, then acc += extra.
  void add_to(const uint8_t* x, int64_t xs, __m256* acc) {
    if (kApart)
      for (int64_t b = 0; b < nb; ++b) add_block(x, xs, b, kMins ? _mm256_setzero_ps() : block_d(b));
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_add_ps(acc[t], extra[t]);
  }
};

// kFifthBits: add 16 where the masks say (Q5_0, Q5_1); kMins: the extra term is m * ds_x, else
// -kOffset * d_w * ds_x (as the AVX-512 kernels' traits). kCodebook (IQ4_NL): a nibble stands for
// its codebook value q; the AVX-512 kernel multiplies q + 128, so the sums get 128 * the block's
// activation sum added (kOffset is 128).
template <bool kFifthBits, bool kMins, int kOffset, bool kCodebook = false>
struct PackedNibbles : Halves<PackedNibbles<kFifthBits, kMins, kOffset, kCodebook>> {
  static constexpr bool kUsesBlockSums = kCodebook;

  // One half (8 rows, `half` 0 or 1) of a group against NT tokens.
  template <int NT>
  static void run_half(int64_t nb, const uint8_t* group, int64_t group_bytes, int half, const uint8_t* x, int64_t xs,
                       float* y, int64_t ys, int rows, const int32_t* sums) {
    const auto [quants, fifth, scales, mins] = regions32(group, nb, 256, kFifthBits);
    const int64_t scales_offset = q8a_scales_offset(nb);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i codebook =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    OffsetTerms<NT, kMins> offset_terms(nb, scales, mins, half, (float)kOffset);
    const GroupPrefetch prefetch(group, group_bytes, nb);
    for (int64_t b = 0; b < nb; ++b) {
      if (half == 0) prefetch.block(b);
      __m256i isum[NT];
      for (int t = 0; t < NT; ++t)
        isum[t] = kCodebook ? _mm256_set1_epi32(kOffset * sums[t * nb + b]) : _mm256_setzero_si256();
      // Nibble weights: VPMADDUBSW pairs summed in int16 over kChunksPer16 chunks (Pairs16),
      // then widened once. The codebook's signed values fill the int16 pairs: widened per register.
      constexpr int kChunksPer16 = kCodebook ? 1 : Pairs16<kFifthBits ? 31 : 15>::kProducts / 2;
      __m256i pairs[NT];
      for (int t = 0; t < NT; ++t) pairs[t] = _mm256_setzero_si256();
      // The block's fifth bits for this half: masks c (chunk c's low nibbles) and 4 + c (its high).
      const __m256i plane = kFifthBits ? load256(fifth + b * 64 + 32 * half) : _mm256_setzero_si256();
      #pragma GCC unroll 8  // unrolled: plane_bits shifts by constants
      for (int c = 0; c < 4; ++c) {
        const __m256i packed = load256(quants + b * 256 + 64 * c + 32 * half);
        __m256i lo = _mm256_and_si256(packed, low4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
        if constexpr (kFifthBits) {
          lo = _mm256_or_si256(lo, plane_bits(plane, c, 4));
          hi = _mm256_or_si256(hi, plane_bits(plane, 4 + c, 4));
        }
        if constexpr (kCodebook) {
          lo = _mm256_shuffle_epi8(codebook, lo);
          hi = _mm256_shuffle_epi8(codebook, hi);
        }
        for (int t = 0; t < NT; ++t) {
          const uint8_t* a = x + t * xs;
          const __m256i a_lo = _mm256_set1_epi32(load_i32(a + q8a_element_offset(b, 4 * c)));
          const __m256i a_hi = _mm256_set1_epi32(load_i32(a + q8a_element_offset(b, 16 + 4 * c)));
          if constexpr (kCodebook) {
            isum[t] = _mm256_add_epi32(isum[t], dot4_signed(lo, a_lo));
            isum[t] = _mm256_add_epi32(isum[t], dot4_signed(hi, a_hi));
          } else {
            pairs[t] = _mm256_add_epi16(pairs[t], _mm256_add_epi16(_mm256_maddubs_epi16(lo, a_lo),
                                                                   _mm256_maddubs_epi16(hi, a_hi)));
            if ((c + 1) % kChunksPer16 == 0) {
              isum[t] = _mm256_add_epi32(isum[t], widen_pairs(pairs[t]));
              pairs[t] = _mm256_setzero_si256();
            }
          }
        }
      }
      const __m256 d = offset_terms.block_d(b);
      for (int t = 0; t < NT; ++t) {
        const Q8AScale s = reinterpret_cast<const Q8AScale*>(x + t * xs + scales_offset)[b];
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(s.d)), _mm256_cvtepi32_ps(isum[t]), acc[t]);
      }
      offset_terms.in_block_loop(x, xs, b, d);
    }
    offset_terms.add_to(x, xs, acc);
    store_half(acc, NT, y, ys, rows);
  }
};

// Q8_0 (stored q + 128, rows in lanes as the nibble types; the extra term is -128 * d_w * ds_x, as
// the AVX-512 kernel's Q8_0Packed).
struct PackedQ8_0 : Halves<PackedQ8_0> {
  static constexpr bool kUsesBlockSums = true;
  template <int NT>
  static void run_half(int64_t nb, const uint8_t* group, int64_t group_bytes, int half, const uint8_t* x, int64_t xs,
                       float* y, int64_t ys, int rows, const int32_t* sums) {
    const auto [quants, fifth, scales, mins] = regions32(group, nb, 512, false);  // no fifth bits, no mins
    const int64_t scales_offset = q8a_scales_offset(nb);
    const __m256i sign_bit = _mm256_set1_epi8(-128);
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    OffsetTerms<NT, false> offset_terms(nb, scales, nullptr, half, 128.0f);
    const GroupPrefetch prefetch(group, group_bytes, nb);
    for (int64_t b = 0; b < nb; ++b) {
      if (half == 0) prefetch.block(b);
      __m256i isum[NT];  // the AVX-512 kernel's sums of q + 128: 128 * the activation sum, then q's products
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_set1_epi32(128 * sums[t * nb + b]);
      for (int j = 0; j < 8; ++j) {
        const __m256i q = _mm256_xor_si256(load256(quants + b * 512 + 64 * j + 32 * half), sign_bit);  // signed
        for (int t = 0; t < NT; ++t) {
          const __m256i a = _mm256_set1_epi32(load_i32(x + t * xs + q8a_element_offset(b, 4 * j)));
          isum[t] = _mm256_add_epi32(isum[t], dot4_signed(q, a));
        }
      }
      const __m256 d = offset_terms.block_d(b);
      for (int t = 0; t < NT; ++t) {
        const Q8AScale s = reinterpret_cast<const Q8AScale*>(x + t * xs + scales_offset)[b];
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(s.d)), _mm256_cvtepi32_ps(isum[t]), acc[t]);
      }
      offset_terms.in_block_loop(x, xs, b, d);
    }
    offset_terms.add_to(x, xs, acc);
    store_half(acc, NT, y, ys, rows);
  }
};

// ---- K-quants (as the AVX-512 kernels: one exact int32 total per super-block, then one float step
// per super-block and token), 8 rows per 256-bit half ------------------------------------------------

static inline const BlockQ8KA* q8k_block(const uint8_t* x, int64_t xs, int t, int64_t b) {
  return reinterpret_cast<const BlockQ8KA*>(x + t * xs) + b;
}
// 4 activation bytes (or 2 int16 bsums) as 8 copies.
static inline __m256i broadcast4(const void* p) { return _mm256_set1_epi32(load_i32(static_cast<const uint8_t*>(p))); }
// 8 bytes (one per row) as int32 lanes.
static inline __m256i widen8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
static inline __m256 load_halves8(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Q4_K / Q5_K: y = d d_x sum_j sc_j isum_j - dmin d_x sum_j m_j (bsum_2j + bsum_2j+1); weights at
// most 31, so VPMADDUBSW pairs are exact.
template <bool kFifthBits>
struct PackedQ45K : Halves<PackedQ45K<kFifthBits>> {
  static constexpr bool kUsesBlockSums = false;

  template <int NT>
  static void run_half(int64_t nb, const uint8_t* group, int64_t group_bytes, int half, const uint8_t* x, int64_t xs,
                       float* y, int64_t ys, int rows, const int32_t* /*sums: unused*/) {
    const auto [quants, fifth, scales, mins, d_half, dmin_half] = regions_q45k(group, nb, kFifthBits);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256 acc[NT], extra[NT];
    for (int t = 0; t < NT; ++t) acc[t] = extra[t] = _mm256_setzero_ps();
    const GroupPrefetch prefetch(group, group_bytes, nb);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* q = quants + b * 2048;
      __m256i total[NT];
      for (int t = 0; t < NT; ++t) total[t] = _mm256_setzero_si256();
      for (int c = 0; c < 4; ++c) {  // sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles)
        if (half == 0) prefetch.block_part(b, c, 4);
        // Each sub-block's products summed in int16, kPerWiden at a time (Q4_K: all 8, Q5_K: 4), then
        // widened and scaled into the total: fewer registers per token than int32 sums per sub-block.
        constexpr int kPerWiden = Pairs16<kFifthBits ? 31 : 15>::kProducts;
        const __m256i sc_lo = widen8(scales + b * 128 + 16 * (2 * c) + 8 * half);
        const __m256i sc_hi = widen8(scales + b * 128 + 16 * (2 * c + 1) + 8 * half);
        __m256i pairs_lo[NT], pairs_hi[NT];
        for (int t = 0; t < NT; ++t) pairs_lo[t] = pairs_hi[t] = _mm256_setzero_si256();
        // This half's fifth bits of chunks 8c .. 8c + 7: masks 8c + i (low nibbles, plane c) and
        // 32 + 8c + i (high nibbles, plane 4 + c).
        __m256i planes[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        if constexpr (kFifthBits)
          for (int p = 0; p < 2; ++p) planes[p] = load256(fifth + b * 512 + 64 * (c + 4 * p) + 32 * half);
        #pragma GCC unroll 8  // unrolled: plane_bits shifts by constants
        for (int i = 0; i < 8; ++i) {
          const int n = 8 * c + i;
          const __m256i packed = load256(q + 64 * n + 32 * half);
          __m256i lo = _mm256_and_si256(packed, low4);
          __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
          if constexpr (kFifthBits) {
            lo = _mm256_or_si256(lo, plane_bits(planes[0], i, 4));
            hi = _mm256_or_si256(hi, plane_bits(planes[1], i, 4));
          }
          for (int t = 0; t < NT; ++t) {
            const int8_t* a = q8k_block(x, xs, t, b)->qs + 64 * c + 4 * i;
            pairs_lo[t] = _mm256_add_epi16(pairs_lo[t], _mm256_maddubs_epi16(lo, broadcast4(a)));
            pairs_hi[t] = _mm256_add_epi16(pairs_hi[t], _mm256_maddubs_epi16(hi, broadcast4(a + 32)));
            if ((i + 1) % kPerWiden == 0) {
              const __m256i scaled_lo = _mm256_mullo_epi32(widen_pairs(pairs_lo[t]), sc_lo);
              const __m256i scaled_hi = _mm256_mullo_epi32(widen_pairs(pairs_hi[t]), sc_hi);
              total[t] = _mm256_add_epi32(total[t], _mm256_add_epi32(scaled_lo, scaled_hi));
              pairs_lo[t] = pairs_hi[t] = _mm256_setzero_si256();
            }
          }
        }
      }
      // Mins: the 16-element bsums in pairs against [m_j, m_j] in each row's lane.
      __m256i min_total[NT];
      for (int t = 0; t < NT; ++t) min_total[t] = _mm256_setzero_si256();
      for (int j = 0; j < 8; ++j) {
        const __m256i m = widen8(mins + b * 128 + 16 * j + 8 * half);
        const __m256i m_twice = _mm256_or_si256(m, _mm256_slli_epi32(m, 16));
        for (int t = 0; t < NT; ++t)
          min_total[t] = _mm256_add_epi32(
              min_total[t], _mm256_madd_epi16(m_twice, broadcast4(q8k_block(x, xs, t, b)->bsums + 2 * j)));
      }
      const __m256 d = load_halves8(d_half + b * 32 + 16 * half), dmin = load_halves8(dmin_half + b * 32 + 16 * half);
      for (int t = 0; t < NT; ++t) {
        const __m256 dx = _mm256_set1_ps(q8k_block(x, xs, t, b)->d);
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(total[t]), acc[t]);
        extra[t] = _mm256_fmadd_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(min_total[t]), extra[t]);
      }
    }
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_sub_ps(acc[t], extra[t]);
    store_half(acc, NT, y, ys, rows);
  }
};

// Q6_K: y = d d_x sum_j sc_j (isum_j - 32 bsum_j), the 6-bit values stored unsigned (q + 32, at
// most 63: VPMADDUBSW pairs are exact).
struct PackedQ6K : Halves<PackedQ6K> {
  static constexpr bool kUsesBlockSums = false;
  template <int NT>
  static void run_half(int64_t nb, const uint8_t* group, int64_t group_bytes, int half, const uint8_t* x, int64_t xs,
                       float* y, int64_t ys, int rows, const int32_t* /*sums: unused*/) {
    const auto [quants, scales, d_half] = regions_q6k(group, nb);
    const __m256i low4 = _mm256_set1_epi8(0x0f), top2 = _mm256_set1_epi8(0x30);
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const GroupPrefetch prefetch(group, group_bytes, nb);
    for (int64_t b = 0; b < nb; ++b) {
      __m256i total[NT], offset[NT];
      for (int t = 0; t < NT; ++t) total[t] = offset[t] = _mm256_setzero_si256();
      for (int p = 0; p < 8; ++p) {  // sub-blocks 2p, 2p + 1
        if (half == 0) prefetch.block_part(b, p, 8);
        // The pair's scales as int16 pairs [sc_2p, sc_2p+1] per row: the bsums term in one VPMADDWD.
        const __m256i sc_pair = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + b * 256 + 32 * p + 16 * half)));
        for (int t = 0; t < NT; ++t)
          offset[t] = _mm256_add_epi32(offset[t],
                                       _mm256_madd_epi16(sc_pair, broadcast4(q8k_block(x, xs, t, b)->bsums + 2 * p)));
        for (int sub = 0; sub < 2; ++sub) {
          const int j = 2 * p + sub;
          const uint8_t* chunks = quants + b * 3072 + j * 192 + 32 * half;
          const __m256i l0 = load256(chunks), l1 = load256(chunks + 64), h = load256(chunks + 128);
          // Value = low nibble | top two bits << 4 (bits 4, 5; the masks drop what the 16-bit shifts carry over).
          const auto value = [&](__m256i low, __m256i top) {
            return _mm256_or_si256(_mm256_and_si256(low, low4), _mm256_and_si256(top, top2));
          };
          const __m256i v[4] = {value(l0, _mm256_slli_epi16(h, 4)),
                                value(_mm256_srli_epi16(l0, 4), _mm256_slli_epi16(h, 2)), value(l1, h),
                                value(_mm256_srli_epi16(l1, 4), _mm256_srli_epi16(h, 2))};
          // Sub-block j's int32 scale: the low (even j) or high (odd j) int16 of each lane, sign-extended.
          const __m256i sc =
              sub == 0 ? _mm256_srai_epi32(_mm256_slli_epi32(sc_pair, 16), 16) : _mm256_srai_epi32(sc_pair, 16);
          for (int t = 0; t < NT; ++t) {
            const int8_t* a = q8k_block(x, xs, t, b)->qs + 16 * j;
            static_assert(Pairs16<63>::kProducts == 2, "two products per widening");
            const __m256i sum = _mm256_add_epi32(
                widen_pairs(_mm256_add_epi16(_mm256_maddubs_epi16(v[0], broadcast4(a)),
                                             _mm256_maddubs_epi16(v[1], broadcast4(a + 4)))),
                widen_pairs(_mm256_add_epi16(_mm256_maddubs_epi16(v[2], broadcast4(a + 8)),
                                             _mm256_maddubs_epi16(v[3], broadcast4(a + 12)))));
            total[t] = _mm256_add_epi32(total[t], _mm256_mullo_epi32(sum, sc));
          }
        }
      }
      const __m256 d = load_halves8(d_half + b * 32 + 16 * half);
      for (int t = 0; t < NT; ++t) {
        // - 32 sum_j sc_j bsum_j
        const __m256i centered = _mm256_sub_epi32(total[t], _mm256_slli_epi32(offset[t], 5));
        const __m256 dx = _mm256_set1_ps(q8k_block(x, xs, t, b)->d);
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(centered), acc[t]);
      }
    }
    store_half(acc, NT, y, ys, rows);
  }
};

// Q2_K: y = d d_x sum_j sc_j isum_j - dmin d_x sum_j m_j bsum_j (sub-blocks of 16, 4-bit sc and m).
// Q3_K: y = d d_x sum_j sc_j (isum_j - 4 bsum_j), the stored values q + 4 in 0 .. 7, sc signed.
// Weights at most 7, so VPMADDUBSW pairs are exact.
template <bool kQ3>
struct PackedQ23K : Halves<PackedQ23K<kQ3>> {
  static constexpr bool kUsesBlockSums = false;
  template <int NT>
  static void run_half(int64_t nb, const uint8_t* group, int64_t group_bytes, int half, const uint8_t* x, int64_t xs,
                       float* y, int64_t ys, int rows, const int32_t* /*sums: unused*/) {
    const auto [quants, masks, scales, d_half, dmin_half] = regions_q23k(group, nb, kQ3);
    const __m256i three = _mm256_set1_epi8(3), low4 = _mm256_set1_epi32(0x0f);
    __m256 acc[NT], extra[NT];
    for (int t = 0; t < NT; ++t) acc[t] = extra[t] = _mm256_setzero_ps();
    const GroupPrefetch prefetch(group, group_bytes, nb);
    for (int64_t b = 0; b < nb; ++b) {
      if (half == 0) prefetch.block(b);
      __m256i total[NT], offset[NT];
      for (int t = 0; t < NT; ++t) total[t] = offset[t] = _mm256_setzero_si256();
      for (int jp = 0; jp < 8; ++jp) {  // sub-blocks 2 jp and 2 jp + 1
        // Q3_K: this half's high bits of the two sub-blocks, masks 8 jp + 4 odd + i: plane jp, bits
        // 4 odd + i.
        const __m256i plane = kQ3 ? load256(masks + b * 512 + 64 * jp + 32 * half) : _mm256_setzero_si256();
        #pragma GCC unroll 2  // unrolled: plane_bits shifts by constants
        for (int odd = 0; odd < 2; ++odd) {
          const int j = 2 * jp + odd;
          const __m256i chunk = load256(quants + b * 1024 + 64 * j + 32 * half);
          __m256i v[4];
          #pragma GCC unroll 8  // unrolled: plane_bits shifts by constants
          for (int i = 0; i < 4; ++i) {
            v[i] = _mm256_and_si256(_mm256_srli_epi16(chunk, 2 * i), three);
            if constexpr (kQ3) v[i] = _mm256_or_si256(v[i], plane_bits(plane, 4 * odd + i, 2));  // + 4 where set
          }
          __m256i sc;
          if constexpr (kQ3) {
            const __m256i pair = _mm256_cvtepi8_epi16(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + b * 256 + 32 * jp + 16 * half)));
            sc = odd == 0 ? _mm256_srai_epi32(_mm256_slli_epi32(pair, 16), 16) : _mm256_srai_epi32(pair, 16);
          } else {
            sc = _mm256_and_si256(widen8(scales + b * 256 + 16 * j + 8 * half), low4);
          }
          for (int t = 0; t < NT; ++t) {
            const int8_t* a = q8k_block(x, xs, t, b)->qs + 16 * j;
            static_assert(Pairs16<7>::kProducts >= 4, "a sub-block's four products per widening");
            __m256i pairs = _mm256_setzero_si256();
            for (int i = 0; i < 4; ++i)
              pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(v[i], broadcast4(a + 4 * i)));
            total[t] = _mm256_add_epi32(total[t], _mm256_mullo_epi32(widen_pairs(pairs), sc));
          }
        }
      }
      // Per pair of sub-blocks, [x_2p, x_2p+1] int16 in each row's lane against the bsums pair: Q2_K's
      // mins (the high nibbles), Q3_K's scales (for the -4 offset).
      for (int p = 0; p < 8; ++p) {
        __m256i pair;
        if constexpr (kQ3) {
          pair = _mm256_cvtepi8_epi16(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + b * 256 + 32 * p + 16 * half)));
        } else {
          const __m256i even = _mm256_srli_epi32(widen8(scales + b * 256 + 16 * (2 * p) + 8 * half), 4);
          const __m256i odd = _mm256_srli_epi32(widen8(scales + b * 256 + 16 * (2 * p + 1) + 8 * half), 4);
          pair = _mm256_or_si256(even, _mm256_slli_epi32(odd, 16));
        }
        for (int t = 0; t < NT; ++t) {
          const __m256i bsums = broadcast4(q8k_block(x, xs, t, b)->bsums + 2 * p);
          offset[t] = _mm256_add_epi32(offset[t], _mm256_madd_epi16(pair, bsums));
        }
      }
      const __m256 d = load_halves8(d_half + b * 32 + 16 * half);
      for (int t = 0; t < NT; ++t) {
        const __m256 dx = _mm256_set1_ps(q8k_block(x, xs, t, b)->d);
        if constexpr (kQ3) {
          // - 4 sum_j sc_j bsum_j
          const __m256i centered = _mm256_sub_epi32(total[t], _mm256_slli_epi32(offset[t], 2));
          acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(centered), acc[t]);
        } else {
          acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(total[t]), acc[t]);
          extra[t] = _mm256_fmadd_ps(_mm256_mul_ps(load_halves8(dmin_half + b * 32 + 16 * half), dx),
                                     _mm256_cvtepi32_ps(offset[t]), extra[t]);
        }
      }
    }
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_sub_ps(acc[t], extra[t]);
    store_half(acc, NT, y, ys, rows);
  }
};

template <typename Kernel>
void packed_tile(int64_t nb, const uint8_t* w, int64_t group_bytes, int n_groups, int64_t rows_left,
                 const uint8_t* x, int64_t xs, int nt, float* y, int64_t ys) {
  // Q8_0 and IQ4_NL add 128 * each activation block's sum (block_sum): once per call for all its
  // groups and both halves rather than in every group's half (kernel_cycles.py, znver3: Q8_0's
  // 4-token block loop 67 -> 56 cycles).
  thread_local std::vector<int32_t> sums;
  if constexpr (Kernel::kUsesBlockSums) {
    sums.resize((size_t)(nt * nb));
    for (int t = 0; t < nt; ++t)
      for (int64_t b = 0; b < nb; ++b) sums[(size_t)(t * nb + b)] = block_sum(x + t * xs, b);
  }
  for (int g = 0; g < n_groups; ++g) {
    const int64_t left = rows_left - (int64_t)g * kPackRows;
    const uint8_t* group = w + g * group_bytes;
    for (int t = 0; t < nt; t += Kernel::kMaxTokens) {
      const uint8_t* xt = x + t * xs;
      float* out = y + g * kPackRows + t * ys;
      const int32_t* st = Kernel::kUsesBlockSums ? sums.data() + t * nb : nullptr;
      switch (std::min(nt - t, Kernel::kMaxTokens)) {
        case 1: Kernel::template run<1>(nb, group, group_bytes, xt, xs, out, ys, left, st); break;
        case 2: Kernel::template run<2>(nb, group, group_bytes, xt, xs, out, ys, left, st); break;
        case 3: Kernel::template run<3>(nb, group, group_bytes, xt, xs, out, ys, left, st); break;
        default: Kernel::template run<4>(nb, group, group_bytes, xt, xs, out, ys, left, st); break;
      }
    }
  }
}

}  // namespace

PackedTileFn avx2_packed_tile(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0: return packed_tile<PackedNibbles<false, false, 8>>;
    case GgmlType::Q4_1: return packed_tile<PackedNibbles<false, true, 0>>;
    case GgmlType::Q5_0: return packed_tile<PackedNibbles<true, false, 16>>;
    case GgmlType::Q5_1: return packed_tile<PackedNibbles<true, true, 0>>;
    case GgmlType::Q8_0: return packed_tile<PackedQ8_0>;
    case GgmlType::IQ4_NL: return packed_tile<PackedNibbles<false, false, 128, true>>;
    case GgmlType::Q4_K: return packed_tile<PackedQ45K<false>>;
    case GgmlType::Q5_K: return packed_tile<PackedQ45K<true>>;
    case GgmlType::Q6_K: return packed_tile<PackedQ6K>;
    case GgmlType::Q2_K: return packed_tile<PackedQ23K<false>>;
    case GgmlType::Q3_K: return packed_tile<PackedQ23K<true>>;
    default: return nullptr;
  }
}

}  // namespace sinkstream

#else  // not an x86-64 build with the AVX2 flags: no kernels

namespace sinkstream {
PackedTileFn avx2_packed_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream

#endif
