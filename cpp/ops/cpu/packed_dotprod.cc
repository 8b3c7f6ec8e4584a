// AArch64 SDOT kernels for packed weights (layout and summation order: packed_weights.h) of the
// 32-element types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) and of the K-quants (Q2_K .. Q6_K).
// CMakeLists.txt compiles this file with -march=armv8.2-a+dotprod; packed_tile_kernel hands them
// out only at Isa::Dotprod, whose packing holds the Q5 fifth bits and Q3_K's third bits as bit
// planes (as for AVX2): a register's bits are one byte shift of its plane and a mask.
//
// A 64-byte chunk of a group is four 128-bit registers of 4 rows x 4 bytes. SDOT by element
// (vdotq_laneq_s32) adds, into each row's int32 lane, the products of its 4 bytes with 4
// activation bytes picked from a register by a constant lane: the activations need no broadcast,
// and a block's row sums come out with no horizontal work, as with VPDPBUSD. SDOT multiplies
// signed bytes: nibbles (0..15, 0..31 with the fifth bit) are already valid int8; Q8_0's stored
// q + 128 goes back to q with an exclusive or, and IQ4_NL's codebook values are signed. The
// packed_weights.h sums are of the stored unsigned values (q + 128 for Q8_0 and IQ4_NL), so those
// two start each block's sum at 128 * the activation block's sum: the same integers, then the same
// float steps in the same order as the x86 packed kernels, so the same bits
// (tests/test_matmul.py::test_packed_kernels_give_the_same_bits_on_arm_and_x86).
//
// The K-quants as on x86 (packed_avx2.cc): per super-block and row, each sub-block's exact int32
// sum times its integer scale into one int32 total (and the mins' or Q6_K's offset term from the
// activation bsums), then one float step per super-block and token, so the same bits again.
//
// Run only under qemu (cortex-a76, max) when this was written: no AArch64 machine was at hand to
// time them against the per-row kernels (vec_dot_neon.inc).
#include "ops/cpu/packed_weights.h"

#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/cpu/vec_dot.h"
#include "quant/quant_blocks.h"

namespace sinkstream {

namespace {

// Per type: bytes of a block's quants in a group, nibbles (else Q8_0's bytes) with or without fifth
// bits or codebook, and the offset term (packed_weights.h: fma(e_w, ds_x) with e_w the min, or
// -kOffset d_w; kUsesBlockSums: the sums start at kOffset * the activation block's sum).
template <bool kFifth, bool kWithMins, int kOffsetValue>
struct NibbleTraits {  // Q4_0, Q4_1, Q5_0, Q5_1
  static constexpr int kQuantBytes = 256;
  static constexpr bool kNibbles = true, kFifthBits = kFifth, kMins = kWithMins, kCodebook = false;
  static constexpr bool kUsesBlockSums = false;
  static constexpr int kOffset = kOffsetValue;
};
struct Iq4NlTraits {  // nibbles index the codebook; sums of (value + 128)
  static constexpr int kQuantBytes = 256;
  static constexpr bool kNibbles = true, kFifthBits = false, kMins = false, kCodebook = true, kUsesBlockSums = true;
  static constexpr int kOffset = 128;
};
struct Q8_0Traits {  // stored q + 128; sums of (q + 128)
  static constexpr int kQuantBytes = 512;
  static constexpr bool kNibbles = false, kFifthBits = false, kMins = false;
  static constexpr bool kUsesBlockSums = true;
  static constexpr int kOffset = 128;
};

constexpr int kMaxTokens = 4;

// Sum of the 32 activation quants of block b of a Q8A row.
inline int32_t block_sum(const uint8_t* a, int64_t b) {
  const int8x16_t lo = vld1q_s8(reinterpret_cast<const int8_t*>(a + q8a_quant_offset(b, 0)));
  const int8x16_t hi = vld1q_s8(reinterpret_cast<const int8_t*>(a + q8a_quant_offset(b, 1)));
  return vaddlvq_s8(lo) + vaddlvq_s8(hi);
}

// Half precision scales of 4 rows as floats.
inline float32x4_t load_halves4(const uint8_t* p) {
  uint16_t bits[4];
  std::memcpy(bits, p, sizeof(bits));
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(bits)));
}

// isum[t][q] += the products of a chunk's weights (quarter q: 4 rows x 4 signed bytes in w[q]) with
// 4 activation bytes of each token: lane kLane of a[t].
template <int kLane, int NT>
inline void dot_lane(const int8x16_t w[2], const int8x16_t a[NT], int32x4_t isum[NT][2]) {
  for (int t = 0; t < NT; ++t)
    for (int q = 0; q < 2; ++q) isum[t][q] = vdotq_laneq_s32(isum[t][q], w[q], a[t], kLane);
}

// Bit kBit of each byte of a plane (packed_weights.h) moved to bit kTo, the others cleared: the Q5
// fifth bits (to 4) and Q3_K's third bits (to 2).
template <int kBit, int kTo>
inline uint8x16_t plane_bit(uint8x16_t plane) {
  const uint8x16_t bit = vdupq_n_u8(1 << kTo);
  if constexpr (kBit < kTo) return vandq_u8(vshlq_n_u8(plane, kTo - kBit), bit);
  else if constexpr (kBit == kTo) return vandq_u8(plane, bit);
  else return vandq_u8(vshrq_n_u8(plane, kBit - kTo), bit);
}

// One half (rows 8 half .. 8 half + 7: two quarters of 4 rows) of a group against NT tokens.
template <typename Traits, int NT>
void run_half32(int64_t nb, const uint8_t* group, int half, const uint8_t* x, int64_t xs, float* y, int64_t ys,
              int rows, const int32_t* sums) {
  const auto [quants, fifth, scales, mins] = regions32(group, nb, Traits::kQuantBytes, Traits::kFifthBits);
  const int64_t scales_offset = q8a_scales_offset(nb);
  const uint8x16_t low4 = vdupq_n_u8(0x0f), sign_bit = vdupq_n_u8(0x80);
  const int8x16_t codebook = vld1q_s8(kIq4nlValues);
  float32x4_t acc[NT][2], extra[NT][2];
  for (int t = 0; t < NT; ++t)
    for (int q = 0; q < 2; ++q) acc[t][q] = extra[t][q] = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < nb; ++b) {
    int8x16_t a_first[NT], a_second[NT];
    int32x4_t isum[NT][2];
    for (int t = 0; t < NT; ++t) {
      a_first[t] = vld1q_s8(reinterpret_cast<const int8_t*>(x + t * xs + q8a_quant_offset(b, 0)));
      a_second[t] = vld1q_s8(reinterpret_cast<const int8_t*>(x + t * xs + q8a_quant_offset(b, 1)));
      const int32_t start = Traits::kUsesBlockSums ? Traits::kOffset * sums[t * nb + b] : 0;
      isum[t][0] = isum[t][1] = vdupq_n_s32(start);
    }
    const uint8_t* block = quants + b * Traits::kQuantBytes + 32 * half;
    if constexpr (Traits::kNibbles) {
      // Chunk c: low nibbles are elements 4c .. 4c + 3 (first 16 activation bytes, lane c), high
      // nibbles 16 + 4c .. (second 16, lane c). Q5: the block's plane (its 8 masks, packed_weights.h)
      // holds their fifth bits as bits c (low) and 4 + c (high) of each byte.
      uint8x16_t plane[2];
      for (int q = 0; q < 2; ++q)
        plane[q] = Traits::kFifthBits ? vld1q_u8(fifth + b * 64 + 32 * half + 16 * q) : vdupq_n_u8(0);
      const auto nibble_chunk = [&](auto chunk) {
        constexpr int c = decltype(chunk)::value;
        int8x16_t lo[2], hi[2];
        for (int q = 0; q < 2; ++q) {
          const uint8x16_t packed = vld1q_u8(block + 64 * c + 16 * q);
          uint8x16_t lo_bytes = vandq_u8(packed, low4), hi_bytes = vshrq_n_u8(packed, 4);
          if constexpr (Traits::kFifthBits) {  // bit c, and bit 4 + c, to bit 4
            lo_bytes = vorrq_u8(lo_bytes, plane_bit<c, 4>(plane[q]));
            hi_bytes = vorrq_u8(hi_bytes, plane_bit<4 + c, 4>(plane[q]));
          }
          lo[q] = vreinterpretq_s8_u8(lo_bytes);
          hi[q] = vreinterpretq_s8_u8(hi_bytes);
          if constexpr (Traits::kCodebook) {
            lo[q] = vqtbl1q_s8(codebook, vreinterpretq_u8_s8(lo[q]));
            hi[q] = vqtbl1q_s8(codebook, vreinterpretq_u8_s8(hi[q]));
          }
        }
        dot_lane<c, NT>(lo, a_first, isum);
        dot_lane<c, NT>(hi, a_second, isum);
      };
      nibble_chunk(std::integral_constant<int, 0>{});
      nibble_chunk(std::integral_constant<int, 1>{});
      nibble_chunk(std::integral_constant<int, 2>{});
      nibble_chunk(std::integral_constant<int, 3>{});
    } else {
      // Q8_0: chunk j holds elements 4j .. 4j + 3.
      const auto byte_chunk = [&](auto chunk) {
        constexpr int j = decltype(chunk)::value;
        int8x16_t w[2];
        for (int q = 0; q < 2; ++q) w[q] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(block + 64 * j + 16 * q), sign_bit));
        dot_lane<j % 4, NT>(w, j < 4 ? a_first : a_second, isum);
      };
      byte_chunk(std::integral_constant<int, 0>{});
      byte_chunk(std::integral_constant<int, 1>{});
      byte_chunk(std::integral_constant<int, 2>{});
      byte_chunk(std::integral_constant<int, 3>{});
      byte_chunk(std::integral_constant<int, 4>{});
      byte_chunk(std::integral_constant<int, 5>{});
      byte_chunk(std::integral_constant<int, 6>{});
      byte_chunk(std::integral_constant<int, 7>{});
    }
    for (int q = 0; q < 2; ++q) {
      const float32x4_t d = load_halves4(scales + b * 32 + 16 * half + 8 * q);
      const float32x4_t e = Traits::kMins ? load_halves4(mins + b * 32 + 16 * half + 8 * q)
                                          : vmulq_n_f32(d, -(float)Traits::kOffset);
      for (int t = 0; t < NT; ++t) {
        const Q8AScale s = reinterpret_cast<const Q8AScale*>(x + t * xs + scales_offset)[b];
        acc[t][q] = vfmaq_f32(acc[t][q], vmulq_n_f32(d, s.d), vcvtq_f32_s32(isum[t][q]));
        extra[t][q] = vfmaq_f32(extra[t][q], e, vdupq_n_f32(s.ds));
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    alignas(16) float lanes[8];
    vst1q_f32(lanes, vaddq_f32(acc[t][0], extra[t][0]));
    vst1q_f32(lanes + 4, vaddq_f32(acc[t][1], extra[t][1]));
    std::memcpy(y + t * ys, lanes, (size_t)rows * sizeof(float));
  }
}

// The 32-element types' half kernel, as a Kernel of packed_tile.
template <typename Traits>
struct Packed32 {
  static constexpr bool kUsesBlockSums = Traits::kUsesBlockSums;
  template <int NT>
  static void run_half(int64_t nb, const uint8_t* group, int half, const uint8_t* x, int64_t xs, float* y,
                       int64_t ys, int rows, const int32_t* sums) {
    run_half32<Traits, NT>(nb, group, half, x, xs, y, ys, rows, sums);
  }
};

// ---- K-quants ----------------------------------------------------------------------------------------

inline const BlockQ8KA* q8k_block(const uint8_t* x, int64_t xs, int t, int64_t b) {
  return reinterpret_cast<const BlockQ8KA*>(x + t * xs) + b;
}

// 4 unsigned bytes (one per row of a quarter) as int32 lanes.
inline int32x4_t widen4_u8(const uint8_t* p) {
  uint32_t bytes;
  std::memcpy(&bytes, p, sizeof(bytes));
  return vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(bytes))))));
}

// The rows' results of a half: acc minus extra (as on x86), `rows` of them into y of each token.
template <int NT>
inline void store_half(const float32x4_t acc[NT][2], const float32x4_t extra[NT][2], float* y, int64_t ys, int rows) {
  for (int t = 0; t < NT; ++t) {
    alignas(16) float lanes[8];
    vst1q_f32(lanes, vsubq_f32(acc[t][0], extra[t][0]));
    vst1q_f32(lanes + 4, vsubq_f32(acc[t][1], extra[t][1]));
    std::memcpy(y + t * ys, lanes, (size_t)rows * sizeof(float));
  }
}

// A quarter's 4 int8 scales of sub-block 2p + odd, from the pairs (Q6_K, Q3_K): byte 2 r + odd of
// the quarter's 8 bytes at `pairs` is row r's.
inline int32x4_t pair_scales(const uint8_t* pairs, int odd) {
  const int8_t* p = reinterpret_cast<const int8_t*>(pairs);
  const int32_t lanes[4] = {p[odd], p[2 + odd], p[4 + odd], p[6 + odd]};
  return vld1q_s32(lanes);
}

// isum[t] = the exact sums of 16-element sub-block j of super-block b (v[i]: elements 4i .. 4i + 3
// of each row) against token t's activations qs[16 j .. 16 j + 15] (Q6_K, Q2_K, Q3_K).
template <int NT>
inline void sub_block16_sums(const int8x16_t v[4][2], const uint8_t* x, int64_t xs, int64_t b, int j,
                             int32x4_t isum[NT][2]) {
  int8x16_t a[NT];
  for (int t = 0; t < NT; ++t) {
    a[t] = vld1q_s8(q8k_block(x, xs, t, b)->qs + 16 * j);
    isum[t][0] = isum[t][1] = vdupq_n_s32(0);
  }
  dot_lane<0, NT>(v[0], a, isum);
  dot_lane<1, NT>(v[1], a, isum);
  dot_lane<2, NT>(v[2], a, isum);
  dot_lane<3, NT>(v[3], a, isum);
}

// Q4_K / Q5_K: y = d d_x sum_j sc_j isum_j - dmin d_x sum_j m_j (bsum_2j + bsum_2j+1).
template <bool kFifthBits>
struct PackedQ45K {
  static constexpr bool kUsesBlockSums = false;
  template <int NT>
  static void run_half(int64_t nb, const uint8_t* group, int half, const uint8_t* x, int64_t xs, float* y,
                       int64_t ys, int rows, const int32_t* /*sums: unused*/) {
    const auto [quants, fifth, scales, mins, d_half, dmin_half] = regions_q45k(group, nb, kFifthBits);
    const uint8x16_t low4 = vdupq_n_u8(0x0f);
    float32x4_t acc[NT][2], extra[NT][2];
    for (int t = 0; t < NT; ++t)
      for (int q = 0; q < 2; ++q) acc[t][q] = extra[t][q] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
      int32x4_t total[NT][2], min_total[NT][2];
      for (int t = 0; t < NT; ++t)
        for (int q = 0; q < 2; ++q) total[t][q] = min_total[t][q] = vdupq_n_s32(0);
      for (int c = 0; c < 4; ++c) {  // sub-blocks 2c (low nibbles of chunks 8c ..) and 2c + 1 (high)
        // Sub-block 2c's activations are qs[64c .. 64c + 31], 2c + 1's the next 32: elements 4i .. 4i + 3
        // of a sub-block are lane i % 4 of its register i / 4.
        int8x16_t a_lo[2][NT], a_hi[2][NT];
        for (int t = 0; t < NT; ++t) {
          const int8_t* a = q8k_block(x, xs, t, b)->qs + 64 * c;
          for (int r = 0; r < 2; ++r) {
            a_lo[r][t] = vld1q_s8(a + 16 * r);
            a_hi[r][t] = vld1q_s8(a + 32 + 16 * r);
          }
        }
        int32x4_t isum_lo[NT][2], isum_hi[NT][2];
        for (int t = 0; t < NT; ++t)
          for (int q = 0; q < 2; ++q) isum_lo[t][q] = isum_hi[t][q] = vdupq_n_s32(0);
        // This half's fifth bits of chunks 8c + i: bit i of planes c (low nibbles) and 4 + c (high).
        uint8x16_t plane_lo[2], plane_hi[2];
        for (int q = 0; q < 2; ++q) {
          plane_lo[q] = kFifthBits ? vld1q_u8(fifth + b * 512 + 64 * c + 32 * half + 16 * q) : vdupq_n_u8(0);
          plane_hi[q] = kFifthBits ? vld1q_u8(fifth + b * 512 + 64 * (4 + c) + 32 * half + 16 * q) : vdupq_n_u8(0);
        }
        const uint8_t* chunks = quants + b * 2048 + 64 * (8 * c) + 32 * half;
        const auto chunk = [&](auto index) {
          constexpr int i = decltype(index)::value;
          int8x16_t lo[2], hi[2];
          for (int q = 0; q < 2; ++q) {
            const uint8x16_t packed = vld1q_u8(chunks + 64 * i + 16 * q);
            uint8x16_t lo_bytes = vandq_u8(packed, low4), hi_bytes = vshrq_n_u8(packed, 4);
            if constexpr (kFifthBits) {
              lo_bytes = vorrq_u8(lo_bytes, plane_bit<i, 4>(plane_lo[q]));
              hi_bytes = vorrq_u8(hi_bytes, plane_bit<i, 4>(plane_hi[q]));
            }
            lo[q] = vreinterpretq_s8_u8(lo_bytes);
            hi[q] = vreinterpretq_s8_u8(hi_bytes);
          }
          dot_lane<i % 4, NT>(lo, a_lo[i / 4], isum_lo);
          dot_lane<i % 4, NT>(hi, a_hi[i / 4], isum_hi);
        };
        chunk(std::integral_constant<int, 0>{});
        chunk(std::integral_constant<int, 1>{});
        chunk(std::integral_constant<int, 2>{});
        chunk(std::integral_constant<int, 3>{});
        chunk(std::integral_constant<int, 4>{});
        chunk(std::integral_constant<int, 5>{});
        chunk(std::integral_constant<int, 6>{});
        chunk(std::integral_constant<int, 7>{});
        for (int q = 0; q < 2; ++q) {  // each sub-block's exact sum times its 6-bit scale
          const int32x4_t sc_lo = widen4_u8(scales + b * 128 + 16 * (2 * c) + 8 * half + 4 * q);
          const int32x4_t sc_hi = widen4_u8(scales + b * 128 + 16 * (2 * c + 1) + 8 * half + 4 * q);
          for (int t = 0; t < NT; ++t)
            total[t][q] = vmlaq_s32(vmlaq_s32(total[t][q], isum_lo[t][q], sc_lo), isum_hi[t][q], sc_hi);
        }
      }
      for (int j = 0; j < 8; ++j)  // mins against each sub-block's two 16-element bsums
        for (int q = 0; q < 2; ++q) {
          const int32x4_t m = widen4_u8(mins + b * 128 + 16 * j + 8 * half + 4 * q);
          for (int t = 0; t < NT; ++t) {
            const int16_t* bsums = q8k_block(x, xs, t, b)->bsums;
            min_total[t][q] = vmlaq_n_s32(min_total[t][q], m, (int32_t)bsums[2 * j] + bsums[2 * j + 1]);
          }
        }
      for (int q = 0; q < 2; ++q) {
        const float32x4_t d = load_halves4(d_half + b * 32 + 16 * half + 8 * q);
        const float32x4_t dmin = load_halves4(dmin_half + b * 32 + 16 * half + 8 * q);
        for (int t = 0; t < NT; ++t) {
          const float dx = q8k_block(x, xs, t, b)->d;
          acc[t][q] = vfmaq_f32(acc[t][q], vmulq_n_f32(d, dx), vcvtq_f32_s32(total[t][q]));
          extra[t][q] = vfmaq_f32(extra[t][q], vmulq_n_f32(dmin, dx), vcvtq_f32_s32(min_total[t][q]));
        }
      }
    }
    store_half<NT>(acc, extra, y, ys, rows);
  }
};

// Q6_K: y = d d_x sum_j sc_j (isum_j - 32 bsum_j), the 6-bit values stored unsigned (q + 32: valid
// int8 for SDOT).
struct PackedQ6K {
  static constexpr bool kUsesBlockSums = false;
  template <int NT>
  static void run_half(int64_t nb, const uint8_t* group, int half, const uint8_t* x, int64_t xs, float* y,
                       int64_t ys, int rows, const int32_t* /*sums: unused*/) {
    const auto [quants, scales, d_half] = regions_q6k(group, nb);
    const uint8x16_t low4 = vdupq_n_u8(0x0f), top2 = vdupq_n_u8(0x30);
    float32x4_t acc[NT][2], zero[NT][2];
    for (int t = 0; t < NT; ++t)
      for (int q = 0; q < 2; ++q) acc[t][q] = zero[t][q] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
      int32x4_t total[NT][2], offset[NT][2];
      for (int t = 0; t < NT; ++t)
        for (int q = 0; q < 2; ++q) total[t][q] = offset[t][q] = vdupq_n_s32(0);
      for (int j = 0; j < 16; ++j) {
        // Scales in pairs: byte 32 (j / 2) + 2 lane + j % 2 is sub-block j's for row `lane`.
        int32x4_t sc[2];
        for (int q = 0; q < 2; ++q) sc[q] = pair_scales(scales + b * 256 + 32 * (j / 2) + 16 * half + 8 * q, j % 2);
        // Value = low nibble | its top two bits << 4: elements k, 4 + k, 8 + k, 12 + k of the
        // sub-block, whose activations are lanes 0 .. 3 of qs[16 j .. 16 j + 15].
        const uint8_t* chunks = quants + b * 3072 + j * 192 + 32 * half;
        int8x16_t v[4][2];
        for (int q = 0; q < 2; ++q) {
          const uint8x16_t l0 = vld1q_u8(chunks + 16 * q), l1 = vld1q_u8(chunks + 64 + 16 * q);
          const uint8x16_t h = vld1q_u8(chunks + 128 + 16 * q);
          v[0][q] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l0, low4), vandq_u8(vshlq_n_u8(h, 4), top2)));
          v[1][q] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(vshlq_n_u8(h, 2), top2)));
          v[2][q] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(l1, low4), vandq_u8(h, top2)));
          v[3][q] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(h, 2), top2)));
        }
        int32x4_t isum[NT][2];
        sub_block16_sums<NT>(v, x, xs, b, j, isum);
        for (int t = 0; t < NT; ++t) {
          const int32_t bsum = q8k_block(x, xs, t, b)->bsums[j];
          for (int q = 0; q < 2; ++q) {
            total[t][q] = vmlaq_s32(total[t][q], isum[t][q], sc[q]);
            offset[t][q] = vmlaq_n_s32(offset[t][q], sc[q], bsum);
          }
        }
      }
      for (int q = 0; q < 2; ++q) {
        const float32x4_t d = load_halves4(d_half + b * 32 + 16 * half + 8 * q);
        for (int t = 0; t < NT; ++t) {
          const int32x4_t centered = vsubq_s32(total[t][q], vshlq_n_s32(offset[t][q], 5));  // - 32 sum sc_j bsum_j
          acc[t][q] = vfmaq_f32(acc[t][q], vmulq_n_f32(d, q8k_block(x, xs, t, b)->d), vcvtq_f32_s32(centered));
        }
      }
    }
    store_half<NT>(acc, zero, y, ys, rows);
  }
};

// Q2_K: y = d d_x sum_j sc_j isum_j - dmin d_x sum_j m_j bsum_j (sub-blocks of 16, 4-bit sc and m).
// Q3_K: y = d d_x sum_j sc_j (isum_j - 4 bsum_j), the stored values q + 4 in 0 .. 7, sc signed.
template <bool kQ3>
struct PackedQ23K {
  static constexpr bool kUsesBlockSums = false;
  template <int NT>
  static void run_half(int64_t nb, const uint8_t* group, int half, const uint8_t* x, int64_t xs, float* y,
                       int64_t ys, int rows, const int32_t* /*sums: unused*/) {
    const auto [quants, masks, scales, d_half, dmin_half] = regions_q23k(group, nb, kQ3);
    const uint8x16_t three = vdupq_n_u8(3);
    const int32x4_t low4 = vdupq_n_s32(0x0f);
    float32x4_t acc[NT][2], extra[NT][2];
    for (int t = 0; t < NT; ++t)
      for (int q = 0; q < 2; ++q) acc[t][q] = extra[t][q] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; ++b) {
      int32x4_t total[NT][2], offset[NT][2];
      for (int t = 0; t < NT; ++t)
        for (int q = 0; q < 2; ++q) total[t][q] = offset[t][q] = vdupq_n_s32(0);
      for (int jp = 0; jp < 8; ++jp) {  // sub-blocks 2 jp and 2 jp + 1
        // Q3_K: this half's third bits of the two sub-blocks, masks 8 jp + 4 odd + i: plane jp, bit 4 odd + i.
        uint8x16_t plane[2];
        for (int q = 0; q < 2; ++q)
          plane[q] = kQ3 ? vld1q_u8(masks + b * 512 + 64 * jp + 32 * half + 16 * q) : vdupq_n_u8(0);
        const auto sub_block = [&](auto parity) {
          constexpr int odd = decltype(parity)::value;
          const int j = 2 * jp + odd;
          // Bits 2i, 2i + 1 of byte k: element 4i + k, whose activation is lane i of qs[16 j ..].
          int8x16_t v[4][2];
          for (int q = 0; q < 2; ++q) {
            const uint8x16_t chunk = vld1q_u8(quants + b * 1024 + 64 * j + 32 * half + 16 * q);
            uint8x16_t bits[4] = {vandq_u8(chunk, three), vandq_u8(vshrq_n_u8(chunk, 2), three),
                                  vandq_u8(vshrq_n_u8(chunk, 4), three), vshrq_n_u8(chunk, 6)};
            if constexpr (kQ3) {  // + 4 where the third bit is set
              bits[0] = vorrq_u8(bits[0], plane_bit<4 * odd + 0, 2>(plane[q]));
              bits[1] = vorrq_u8(bits[1], plane_bit<4 * odd + 1, 2>(plane[q]));
              bits[2] = vorrq_u8(bits[2], plane_bit<4 * odd + 2, 2>(plane[q]));
              bits[3] = vorrq_u8(bits[3], plane_bit<4 * odd + 3, 2>(plane[q]));
            }
            for (int i = 0; i < 4; ++i) v[i][q] = vreinterpretq_s8_u8(bits[i]);
          }
          int32x4_t sc[2];
          for (int q = 0; q < 2; ++q) {
            if constexpr (kQ3) {  // signed, in pairs as Q6_K's
              sc[q] = pair_scales(scales + b * 256 + 32 * jp + 16 * half + 8 * q, odd);
            } else {  // the low nibble of byte 16 j + lane
              sc[q] = vandq_s32(widen4_u8(scales + b * 256 + 16 * j + 8 * half + 4 * q), low4);
            }
          }
          int32x4_t isum[NT][2];
          sub_block16_sums<NT>(v, x, xs, b, j, isum);
          for (int q = 0; q < 2; ++q) {
            // The offset term's factor: Q3_K's scale (for the -4), Q2_K's min (the high nibble).
            const int32x4_t factor =
                kQ3 ? sc[q] : vshrq_n_s32(widen4_u8(scales + b * 256 + 16 * j + 8 * half + 4 * q), 4);
            for (int t = 0; t < NT; ++t) {
              total[t][q] = vmlaq_s32(total[t][q], isum[t][q], sc[q]);
              offset[t][q] = vmlaq_n_s32(offset[t][q], factor, q8k_block(x, xs, t, b)->bsums[j]);
            }
          }
        };
        sub_block(std::integral_constant<int, 0>{});
        sub_block(std::integral_constant<int, 1>{});
      }
      for (int q = 0; q < 2; ++q) {
        const float32x4_t d = load_halves4(d_half + b * 32 + 16 * half + 8 * q);
        for (int t = 0; t < NT; ++t) {
          const float dx = q8k_block(x, xs, t, b)->d;
          if constexpr (kQ3) {
            const int32x4_t centered = vsubq_s32(total[t][q], vshlq_n_s32(offset[t][q], 2));  // - 4 sum sc_j bsum_j
            acc[t][q] = vfmaq_f32(acc[t][q], vmulq_n_f32(d, dx), vcvtq_f32_s32(centered));
          } else {
            const float32x4_t dmin = load_halves4(dmin_half + b * 32 + 16 * half + 8 * q);
            acc[t][q] = vfmaq_f32(acc[t][q], vmulq_n_f32(d, dx), vcvtq_f32_s32(total[t][q]));
            extra[t][q] = vfmaq_f32(extra[t][q], vmulq_n_f32(dmin, dx), vcvtq_f32_s32(offset[t][q]));
          }
        }
      }
    }
    store_half<NT>(acc, extra, y, ys, rows);
  }
};

// ---- the group and token-tile loops, for every type's half kernel ------------------------------------

template <typename Kernel, int NT>
void run_group(int64_t nb, const uint8_t* group, const uint8_t* x, int64_t xs, float* y, int64_t ys, int64_t left,
               const int32_t* sums) {
  for (int half = 0; half < 2 && left > 8 * half; ++half)
    Kernel::template run_half<NT>(nb, group, half, x, xs, y + 8 * half, ys, (int)std::min<int64_t>(8, left - 8 * half),
                                  sums);
}

template <typename Kernel>
void packed_tile(int64_t nb, const uint8_t* w, int64_t group_bytes, int n_groups, int64_t rows_left,
                 const uint8_t* x, int64_t xs, int nt, float* y, int64_t ys) {
  thread_local std::vector<int32_t> sums;  // the tokens' activation block sums, once per call
  if constexpr (Kernel::kUsesBlockSums) {
    sums.resize((size_t)(nt * nb));
    for (int t = 0; t < nt; ++t)
      for (int64_t b = 0; b < nb; ++b) sums[(size_t)(t * nb + b)] = block_sum(x + t * xs, b);
  }
  for (int g = 0; g < n_groups; ++g) {
    const int64_t left = rows_left - (int64_t)g * kPackRows;
    const uint8_t* group = w + g * group_bytes;
    // The group after next, while this one is multiplied: decode streams the groups from DRAM.
    __builtin_prefetch(group + 2 * group_bytes);
    for (int t = 0; t < nt; t += kMaxTokens) {
      const uint8_t* xt = x + t * xs;
      float* out = y + g * kPackRows + t * ys;
      const int32_t* st = Kernel::kUsesBlockSums ? sums.data() + t * nb : nullptr;
      switch (std::min(nt - t, kMaxTokens)) {
        case 1: run_group<Kernel, 1>(nb, group, xt, xs, out, ys, left, st); break;
        case 2: run_group<Kernel, 2>(nb, group, xt, xs, out, ys, left, st); break;
        case 3: run_group<Kernel, 3>(nb, group, xt, xs, out, ys, left, st); break;
        default: run_group<Kernel, 4>(nb, group, xt, xs, out, ys, left, st); break;
      }
    }
  }
}

}  // namespace

PackedTileFn dotprod_packed_tile(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0: return packed_tile<Packed32<NibbleTraits<false, false, 8>>>;
    case GgmlType::Q4_1: return packed_tile<Packed32<NibbleTraits<false, true, 0>>>;
    case GgmlType::Q5_0: return packed_tile<Packed32<NibbleTraits<true, false, 16>>>;
    case GgmlType::Q5_1: return packed_tile<Packed32<NibbleTraits<true, true, 0>>>;
    case GgmlType::Q8_0: return packed_tile<Packed32<Q8_0Traits>>;
    case GgmlType::IQ4_NL: return packed_tile<Packed32<Iq4NlTraits>>;
    case GgmlType::Q4_K: return packed_tile<PackedQ45K<false>>;
    case GgmlType::Q5_K: return packed_tile<PackedQ45K<true>>;
    case GgmlType::Q6_K: return packed_tile<PackedQ6K>;
    case GgmlType::Q2_K: return packed_tile<PackedQ23K<false>>;
    case GgmlType::Q3_K: return packed_tile<PackedQ23K<true>>;
    default: return nullptr;
  }
}

}  // namespace sinkstream

#else  // not an AArch64 build with the dot product: no kernels

namespace sinkstream {
PackedTileFn dotprod_packed_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream

#endif
