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

#include <cstring>

#include "ops/cpu/vec_dot.h"
#include "quant/quant_blocks.h"

namespace sinkstream {

namespace {

static inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
static inline __m512 load_halves(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
static inline int32_t load_i32(const uint8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }

// Byte offset in a Q8A activation row of element e of block b (vec_dot.h: blocks in pairs, 16-byte
// halves interleaved).
static inline int64_t q8a_offset(int64_t b, int e) { return 64 * (b / 2) + 32 * (e / 16) + 16 * (b % 2) + e % 16; }

// How each type's 16-row registers of one block come out of the packed quants (and fifth-bit masks).
//   kRegisters: registers of 4 weights per row per block (8: all 32 elements)
//   weights(q, masks, j): register j, elements first_element(j) .. + 3 of each row, as unsigned bytes
//   kOffset: the constant the stored unsigned weight exceeds the true quant by (0: a min instead)
struct NibbleLayout {
  static constexpr int kQuantBytes = 256;
  // Register j < 4: low nibbles of chunk j; j >= 4: high nibbles of chunk j - 4.
  static constexpr int first_element(int j) { return j < 4 ? 4 * j : 16 + 4 * (j - 4); }
};

struct Q4_0Packed : NibbleLayout {
  static constexpr bool kFifthBits = false, kMins = false;
  static constexpr float kOffset = 8.0f;
  static __m512i map(__m512i nibbles) { return nibbles; }
};
struct Q4_1Packed : NibbleLayout {
  static constexpr bool kFifthBits = false, kMins = true;
  static constexpr float kOffset = 0.0f;
  static __m512i map(__m512i nibbles) { return nibbles; }
};
struct Q5_0Packed : NibbleLayout {
  static constexpr bool kFifthBits = true, kMins = false;
  static constexpr float kOffset = 16.0f;
  static __m512i map(__m512i nibbles) { return nibbles; }
};
struct Q5_1Packed : NibbleLayout {
  static constexpr bool kFifthBits = true, kMins = true;
  static constexpr float kOffset = 0.0f;
  static __m512i map(__m512i nibbles) { return nibbles; }
};
struct IQ4_NLPacked : NibbleLayout {
  static constexpr bool kFifthBits = false, kMins = false;
  static constexpr float kOffset = 128.0f;
  // The codebook + 128 (in 1 .. 241: flipping the sign bit of an int8 adds 128), looked up by nibble.
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
      isum[t] = _mm512_dpbusd_epi32(isum[t], lo, _mm512_set1_epi32(load_i32(act[t] + q8a_offset(b, e_lo))));
      isum[t] = _mm512_dpbusd_epi32(isum[t], hi, _mm512_set1_epi32(load_i32(act[t] + q8a_offset(b, e_hi))));
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
      isum[t] = _mm512_dpbusd_epi32(isum[t], w, _mm512_set1_epi32(load_i32(act[t] + q8a_offset(b, 4 * j))));
  }
}

// Decode streams each group from DRAM once. Asking for the group kPrefetchGroups ahead, a block's
// share at a time while this block is multiplied, keeps more requests in flight than the hardware
// prefetchers alone (which see three streams per group: quants, scales, mins). Measured on the
// default model's matrices in forward order (Zen 5, 1 / 2 threads): 19 / 26 GB/s without, 43 / 45
// with 2 groups ahead into all cache levels (T0); the NTA hint the per-row kernels use gave 29 GB/s
// at 2 threads here. A hint only: never faults, even past the end of the matrix.
constexpr int kPrefetchGroups = 2;
static inline void prefetch_ahead(const uint8_t* group, int64_t group_bytes, int64_t nb, int64_t b) {
  const int64_t share = group_bytes / nb;
  // Integer arithmetic: the address may lie past the matrix, where pointer arithmetic would be UB.
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(group) + (uintptr_t)(kPrefetchGroups * group_bytes + b * share);
  for (int64_t i = 0; i < share; i += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + (uintptr_t)i), _MM_HINT_T0);
}

template <typename Traits, int NT>
static void group_dot(int64_t nb, const uint8_t* group, int64_t group_bytes, const uint8_t* x, int64_t xs, float* y,
                      int64_t ys, __mmask16 store) {
  const uint8_t* quants = group;
  const uint8_t* fifth = quants + nb * Traits::kQuantBytes;
  const uint8_t* scales = fifth + (Traits::kFifthBits ? nb * 64 : 0);
  const uint8_t* mins = scales + nb * kPackRows * 2;
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
  for (int64_t b = 0; b < nb; ++b) {
    if (NT == 1) prefetch_ahead(group, group_bytes, nb, b);
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

template <typename Traits>
void packed_tile(int64_t nb, const uint8_t* w, int64_t group_bytes, int n_groups, int64_t rows_left,
                 const uint8_t* x, int64_t xs, int nt, float* y, int64_t ys) {
  for (int g = 0; g < n_groups; ++g) {
    const int64_t left = rows_left - (int64_t)g * kPackRows;
    const __mmask16 store = left >= kPackRows ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
    const uint8_t* group = w + g * group_bytes;
    float* out = y + g * kPackRows;
    switch (nt) {
      case 1: group_dot<Traits, 1>(nb, group, group_bytes, x, xs, out, ys, store); break;
      case 2: group_dot<Traits, 2>(nb, group, group_bytes, x, xs, out, ys, store); break;
      case 3: group_dot<Traits, 3>(nb, group, group_bytes, x, xs, out, ys, store); break;
      default: group_dot<Traits, 4>(nb, group, group_bytes, x, xs, out, ys, store); break;
    }
  }
}

}  // namespace

PackedTileFn avx512_packed_tile(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0: return packed_tile<Q4_0Packed>;
    case GgmlType::Q4_1: return packed_tile<Q4_1Packed>;
    case GgmlType::Q5_0: return packed_tile<Q5_0Packed>;
    case GgmlType::Q5_1: return packed_tile<Q5_1Packed>;
    case GgmlType::Q8_0: return packed_tile<Q8_0Packed>;
    case GgmlType::IQ4_NL: return packed_tile<IQ4_NLPacked>;
    default: return nullptr;
  }
}

}  // namespace sinkstream

#else  // not an x86-64 build with the AVX-512 flags: no kernels

namespace sinkstream {
PackedTileFn avx512_packed_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream

#endif
