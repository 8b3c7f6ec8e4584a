// AVX-512 kernels (F, BW, VL, DQ, VNNI). Compiled with the AVX-512 flags of CMakeLists.txt and only
// called when cpu_features() reports all of them with ZMM state enabled; every helper has internal
// linkage. Types without a kernel here (Q2_K, Q3_K, Q4_K, Q5_K) use the AVX2 file's kernels
// (matmul.cc: select_dot_tile): on Zen 4 (where 512-bit operations take two 256-bit passes) 512-bit
// versions of those measured no faster.
//
// 32-element formats: the 256-bit kernels of kernel32_x86.inc with AVX512-VNNI products: VPDPBUSD
// multiplies unsigned weight bytes by signed activation bytes and sums groups of four into int32
// without intermediate saturation, replacing VPMADDUBSW + VPADDW + VPMADDWD. Signed weights (Q8_0,
// IQ4_NL) use |w| and sign(w) * a. 256-bit registers: 512-bit ones gave no gain on Zen 4.
#include "ops/cpu/vec_dot.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512VNNI__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>

#include <cstring>

// GCC 12's AVX-512 intrinsics use _mm512_undefined_* as pass-through operands, which -Wmaybe-
// uninitialized reports at every inlined use (GCC bug 105593, fixed in GCC 13): not our code's.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace sinkstream {

namespace {

#include "ops/cpu/kernel32_x86.inc"

static inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

// ---- 32-element formats -----------------------------------------------------------------------------

struct VnniPairDot {
  template <bool kSigned>
  static inline __m256i dot(const PairWeights& w, const PairWeights& w_abs, __m256i a0, __m256i a1) {
    const __m256i zero = _mm256_setzero_si256();
    if (kSigned)
      return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(zero, w_abs.w0, _mm256_sign_epi8(a0, w.w0)), w_abs.w1,
                                 _mm256_sign_epi8(a1, w.w1));
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(zero, w.w0, a0), w.w1, a1);
  }
};
template <typename Traits>
using Kernel32 = Kernel32X86<Traits, VnniPairDot>;

// ---- Q6_K: 64 weights per register (four sub-blocks of 16) -------------------------------------
// The AVX2 scheme at twice the width: VPMADDUBSW then VPMADDWD by the int16 sub-block scales (no
// int16 overflow: 2 * 63 * 127 < 32768), int32 sums per super-block, float scales once per super-block.

static inline const BlockQ8KA* q8k_row(const uint8_t* x, int64_t stride, int t) {
  return reinterpret_cast<const BlockQ8KA*>(x + t * stride);
}

struct Q6_KKernel {
  template <int NT>
  static void run(int64_t nb, const uint8_t* w, const uint8_t* x, int64_t xs, float* y, int64_t ys) {
    const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(w);
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0f), bits45 = _mm256_set1_epi8(0x30);
    // int16 lane k of a 64-element register covers elements 2k, 2k + 1: sub-block first + k / 8.
    const __m512i quarter_of_lane = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1,
                                                     1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    for (int64_t i = 0; i < nb; ++i) {
      const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].scales)));
      const __m512i scales16z = _mm512_zextsi256_si512(scales16);
      __m512i sumi[NT];
      for (int t = 0; t < NT; ++t) sumi[t] = _mm512_setzero_si512();
      for (int h = 0; h < 2; ++h) {
        const __m256i ql_a = load256(b[i].ql + 64 * h), ql_b = load256(b[i].ql + 64 * h + 32);
        const __m256i qh = load256(b[i].qh + 32 * h);
        // Elements 128h + 64g .. +63 (g = 0, 1): low nibbles of ql_a, ql_b (g = 0) or their high nibbles
        // (g = 1); high bits 2s, 2s + 1 of qh for the quarters s = 2g, 2g + 1, moved to bits 4, 5.
        for (int g = 0; g < 2; ++g) {
          const __m256i low_a = g == 0 ? _mm256_and_si256(ql_a, low4) : _mm256_and_si256(_mm256_srli_epi16(ql_a, 4), low4);
          const __m256i low_b = g == 0 ? _mm256_and_si256(ql_b, low4) : _mm256_and_si256(_mm256_srli_epi16(ql_b, 4), low4);
          const __m256i high_a = g == 0 ? _mm256_and_si256(_mm256_slli_epi16(qh, 4), bits45) : _mm256_and_si256(qh, bits45);
          const __m256i high_b = g == 0 ? _mm256_and_si256(_mm256_slli_epi16(qh, 2), bits45)
                                        : _mm256_and_si256(_mm256_srli_epi16(qh, 2), bits45);
          const __m512i q = _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_or_si256(low_a, high_a)),
                                               _mm256_or_si256(low_b, high_b), 1);  // q + 32, in 0..63
          const int first = 8 * h + 4 * g;  // sub-blocks first .. first + 3
          const __m512i scv = _mm512_permutexvar_epi16(_mm512_add_epi16(quarter_of_lane, _mm512_set1_epi16((short)first)),
                                                       scales16z);
          for (int t = 0; t < NT; ++t) {
            const __m512i a = _mm512_loadu_si512(q8k_row(x, xs, t)[i].qs + 16 * first);
            sumi[t] = _mm512_add_epi32(sumi[t], _mm512_madd_epi16(_mm512_maddubs_epi16(q, a), scv));
          }
        }
      }
      const float d = _cvtsh_ss(b[i].d);
      for (int t = 0; t < NT; ++t) {
        const BlockQ8KA& a = q8k_row(x, xs, t)[i];
        // sum (q - 32) a = sum q a - 32 * sum_j sc_j bsum_j
        const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(load256(a.bsums), scales16), 5);
        const __m512i total = _mm512_sub_epi32(sumi[t], _mm512_zextsi256_si512(offset));
        acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * a.d), _mm512_cvtepi32_ps(total), acc[t]);
      }
    }
    for (int t = 0; t < NT; ++t) y[t * ys] = hsum512(acc[t]);
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
    for (int t = 0; t < NT; ++t) y[t * ys] = hsum512(acc[t]);
  }
};

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
    case GgmlType::MXFP4: return tile_dot_rows<Kernel32<MXFP4Traits>>;
    case GgmlType::Q6_K: return tile_dot_rows<Q6_KKernel>;
    default: return nullptr;  // the other K-quants: the AVX2 kernels
  }
}

}  // namespace sinkstream

#else  // not an x86-64 build with the AVX-512 flags: no kernels

namespace sinkstream {
DotTileFn avx512_dot_tile(GgmlType) { return nullptr; }
}  // namespace sinkstream

#endif
