// AVX2 silu_mul and gelu_tanh_mul (activations.h): the AVX-512 file's polynomial, 8 lanes at a time.
// Compiled with -mavx2 -mfma; only called at Isa::Avx2.
#include "ops/cpu/activations.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace sinkstream {

namespace {

// 2^k for integer-valued k in [-126, 127], from its exponent bits.
inline __m256 pow2(__m256i k) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}

// exp(x) as activations_avx512.cc's exp_ps (the same reduction and degree-7 polynomial). AVX2 has
// no VSCALEFPS: 2^n, n in [-150, 128] after the clamp, is applied as 2^(n/2) * 2^(n - n/2), each
// factor a normal float, so the only rounding is the last product's, as VSCALEFPS's (0 and inf
// past the float range, subnormals rounded once).
inline __m256 exp_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);  // ln 2 high part (exact n * it)
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);   // ln 2 low part
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i k = _mm256_cvtps_epi32(n);  // exact: n is an integer in [-150, 128]
  const __m256i k_half = _mm256_srai_epi32(k, 1);
  return _mm256_mul_ps(_mm256_mul_ps(p, pow2(k_half)), pow2(_mm256_sub_epi32(k, k_half)));
}

// out = f(gate) * up over n values, 8 at a time, the last piece masked (no scalar tail, so every
// element takes the same path wherever it sits).
template <typename F>
void gated(const float* gate, const float* up, int64_t n, float* out, F activation) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t i = 0; i < n; i += 8) {
    if (n - i >= 8) {
      _mm256_storeu_ps(out + i, _mm256_mul_ps(activation(_mm256_loadu_ps(gate + i)), _mm256_loadu_ps(up + i)));
      continue;
    }
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - i)), lane);
    const __m256 g = _mm256_maskload_ps(gate + i, m), u = _mm256_maskload_ps(up + i, m);
    _mm256_maskstore_ps(out + i, m, _mm256_mul_ps(activation(g), u));
  }
}

// silu(g) = g / (1 + e^-g), as ops.h silu_mul.
void silu_mul_avx2(const float* gate, const float* up, int64_t n, float* out) {
  gated(gate, up, n, out, [](__m256 g) {
    return _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g))));
  });
}

// gelu_tanh(g) = g / (1 + e^(-2z)), z = sqrt(2/pi) (g + 0.044715 g^3), as ops.h gelu_tanh_mul.
void gelu_tanh_mul_avx2(const float* gate, const float* up, int64_t n, float* out) {
  gated(gate, up, n, out, [](__m256 g) {
    const __m256 cube = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
    const __m256 inner = _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), cube, g);
    const __m256 e = exp_ps(_mm256_mul_ps(_mm256_set1_ps(-1.5957691216057308f), inner));
    return _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
  });
}

}  // namespace

GluFn avx2_glu(FfnActivation act) {
  switch (act) {
    case FfnActivation::kSwiGlu: return silu_mul_avx2;
    case FfnActivation::kGeGlu: return gelu_tanh_mul_avx2;
    default: return nullptr;
  }
}

}  // namespace sinkstream

#else  // not an x86-64 build with the AVX2 flags

namespace sinkstream {
GluFn avx2_glu(FfnActivation) { return nullptr; }
}  // namespace sinkstream

#endif
