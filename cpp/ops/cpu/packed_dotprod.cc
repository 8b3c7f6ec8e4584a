// AArch64 SDOT kernels for packed weights (layout and summation order: packed_weights.h) of the
// 32-element types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL. CMakeLists.txt compiles this file
// with -march=armv8.2-a+dotprod; packed_tile_kernel hands them out only at Isa::Dotprod, whose
// packing holds the Q5 fifth bits as bit planes (as for AVX2): a register's bits are one byte
// shift of its plane and a mask.
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

// One half (rows 8 half .. 8 half + 7: two quarters of 4 rows) of a group against NT tokens.
template <typename Traits, int NT>
void run_half(int64_t nb, const uint8_t* group, int half, const uint8_t* x, int64_t xs, float* y, int64_t ys,
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
          if constexpr (Traits::kFifthBits) {  // bit c, and bit 4 + c, to bit 4 (16)
            const uint8x16_t sixteen = vdupq_n_u8(16);
            uint8x16_t high_bits = plane[q];
            if constexpr (c > 0) high_bits = vshrq_n_u8(plane[q], c);  // (a shift by 0 is not encodable)
            lo_bytes = vorrq_u8(lo_bytes, vandq_u8(vshlq_n_u8(plane[q], 4 - c), sixteen));
            hi_bytes = vorrq_u8(hi_bytes, vandq_u8(high_bits, sixteen));
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

template <typename Traits, int NT>
void run_group(int64_t nb, const uint8_t* group, const uint8_t* x, int64_t xs, float* y, int64_t ys, int64_t left,
               const int32_t* sums) {
  for (int half = 0; half < 2 && left > 8 * half; ++half)
    run_half<Traits, NT>(nb, group, half, x, xs, y + 8 * half, ys, (int)std::min<int64_t>(8, left - 8 * half), sums);
}

template <typename Traits>
void packed_tile(int64_t nb, const uint8_t* w, int64_t group_bytes, int n_groups, int64_t rows_left,
                 const uint8_t* x, int64_t xs, int nt, float* y, int64_t ys) {
  thread_local std::vector<int32_t> sums;  // the tokens' activation block sums, once per call
  if constexpr (Traits::kUsesBlockSums) {
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
      const int32_t* st = Traits::kUsesBlockSums ? sums.data() + t * nb : nullptr;
      switch (std::min(nt - t, kMaxTokens)) {
        case 1: run_group<Traits, 1>(nb, group, xt, xs, out, ys, left, st); break;
        case 2: run_group<Traits, 2>(nb, group, xt, xs, out, ys, left, st); break;
        case 3: run_group<Traits, 3>(nb, group, xt, xs, out, ys, left, st); break;
        default: run_group<Traits, 4>(nb, group, xt, xs, out, ys, left, st); break;
      }
    }
  }
}

}  // namespace

PackedTileFn dotprod_packed_tile(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0: return packed_tile<NibbleTraits<false, false, 8>>;
    case GgmlType::Q4_1: return packed_tile<NibbleTraits<false, true, 0>>;
    case GgmlType::Q5_0: return packed_tile<NibbleTraits<true, false, 16>>;
    case GgmlType::Q5_1: return packed_tile<NibbleTraits<true, true, 0>>;
    case GgmlType::Q8_0: return packed_tile<Q8_0Traits>;
    case GgmlType::IQ4_NL: return packed_tile<Iq4NlTraits>;
    default: return nullptr;
  }
}

}  // namespace sinkstream

#else  // not an AArch64 build with the dot product: no kernels

namespace sinkstream {
PackedTileFn dotprod_packed_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream

#endif
