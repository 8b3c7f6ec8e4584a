// AVX-512 silu_mul and gelu_tanh_mul (activations.h). Compiled with the AVX-512 flags of
// CMakeLists.txt; only called at Isa::Avx512.
#include "ops/cpu/activations.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>

namespace sinkstream {

namespace {

// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 with ln 2 in two parts (Cody-Waite), so
// |r| <= ln(2) / 2; exp(r) by its degree-7 Taylor polynomial (truncation below 6e-9 relative),
// 2^n applied by VSCALEFPS, which gives inf and 0 past the float range. x is first limited to
// [-104, 89] (exp is 0 or inf in float beyond) so that -inf and +inf give 0 and inf rather than
// NaN from inf - inf; NaN stays NaN (VMAXPS/VMINPS return their second operand, x, for it).
inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln 2 high part (exact n * it)
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);   // ln 2 low part
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// out = f(gate) * up over n values, 16 at a time, the last piece masked.
template <typename F>
void gated(const float* gate, const float* up, int64_t n, float* out, F activation) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(activation(g), u));
  }
}

// silu(g) = g / (1 + e^-g), as ops.h silu_mul.
void silu_mul_avx512(const float* gate, const float* up, int64_t n, float* out) {
  gated(gate, up, n, out, [](__m512 g) {
    return _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g))));
  });
}

// gelu_tanh(g) = g / (1 + e^(-2z)), z = sqrt(2/pi) (g + 0.044715 g^3), as ops.h gelu_tanh_mul.
void gelu_tanh_mul_avx512(const float* gate, const float* up, int64_t n, float* out) {
  gated(gate, up, n, out, [](__m512 g) {
    const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(g, g), g);
    const __m512 inner = _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), cube, g);
    const __m512 e = exp_ps(_mm512_mul_ps(_mm512_set1_ps(-1.5957691216057308f), inner));
    return _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  });
}

}  // namespace

GluFn avx512_glu(FfnActivation act) {
  switch (act) {
    case FfnActivation::kSwiGlu: return silu_mul_avx512;
    case FfnActivation::kGeGlu: return gelu_tanh_mul_avx512;
    default: return nullptr;
  }
}

}  // namespace sinkstream

#else  // not an x86-64 build with the AVX-512 flags

namespace sinkstream {
GluFn avx512_glu(FfnActivation) { return nullptr; }
}  // namespace sinkstream

#endif
