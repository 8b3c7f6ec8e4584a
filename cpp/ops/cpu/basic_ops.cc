// Reference CPU implementations of the elementwise ops, RoPE and attention (ops.h).
#include <algorithm>
#include <cmath>

#include "core/fp16.h"
#include "ops/ops.h"

namespace sinkstream {

namespace {
// sum over i of (x[i] - center)^2 in double (a row can hold thousands of squares), in 8 independent
// lanes: one running sum is a chain of dependent adds, 4 cycles each, which the compiler may not
// reorder (float addition is not associative). On the AVX-512 Xeon a 576-wide row took about 0.7 us
// that way, 61 rows a SmolLM2 token: 2% of a decode token, 3% of an 8-session batched step, serial
// on the calling thread. The order of the additions changes the double's last bits, hardly ever
// the float scale taken from it.
double sum_of_squares(const float* x, int64_t d, double center) {
  double lane[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 8 <= d; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] += ((double)x[i + j] - center) * ((double)x[i + j] - center);
  double sum = 0.0;
  for (double v : lane) sum += v;
  for (; i < d; ++i) sum += ((double)x[i] - center) * ((double)x[i] - center);
  return sum;
}
}  // namespace

void rms_norm(const float* x, const float* weight, int64_t n, int64_t d, float eps, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    float* yr = out + r * d;
    const double sum = sum_of_squares(xr, d, 0.0);
    const float scale = (float)(1.0 / std::sqrt(sum / (double)d + (double)eps));
    for (int64_t i = 0; i < d; ++i) yr[i] = xr[i] * scale * weight[i];
  }
}

// The activations call libm's expf (glibc's is table-driven, about 2 ns): a polynomial exp that
// GCC vectorizes at the baseline ISA (SSE2) measured twice as slow, and tanhf seven times.
void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void swiglu_oai_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = std::min(gate[i], kSwiGluOaiLimit);
    const float u = std::min(std::max(up[i], -kSwiGluOaiLimit), kSwiGluOaiLimit);
    out[i] = (u + 1.0f) * (g / (1.0f + std::exp(-kSwiGluOaiAlpha * g)));
  }
}

namespace {
// gelu_tanh(g) = g/2 (1 + tanh(z)) = g / (1 + e^(-2z)), z = sqrt(2/pi) (g + 0.044715 g^3): the same
// function with one expf instead of tanhf.
inline float gelu_tanh(float g) { return g / (1.0f + std::exp(-1.5957691216057308f * (g + 0.044715f * g * g * g))); }
}  // namespace

void gelu_tanh_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gelu_tanh(gate[i]) * up[i];
}

void layer_norm(const float* x, const float* weight, const float* bias, int64_t n, int64_t d, float eps, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    float* yr = out + r * d;
    double sum = 0.0;  // double: mean and variance of thousands of values
    for (int64_t i = 0; i < d; ++i) sum += xr[i];
    const double mean = sum / (double)d;
    const double squares = sum_of_squares(xr, d, mean);
    const float scale = (float)(1.0 / std::sqrt(squares / (double)d + (double)eps));
    const float m = (float)mean;
    for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - m) * scale * weight[i] + (bias != nullptr ? bias[i] : 0.0f);
  }
}

void gelu_erf_inplace(float* x, int64_t n) {
  const float inv_sqrt2 = 0.70710678118654752f;
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * inv_sqrt2));
}

void gelu_tanh_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = gelu_tanh(x[i]);
}

void clamp_inplace(float* x, float limit, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::min(std::max(x[i], -limit), limit);
}

void add_inplace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void add_scaled_inplace(float* y, const float* x, float scale, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += scale * x[i];
}

void scale_inplace(float* x, float scale, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

void soft_cap_inplace(float* x, float cap, int64_t n) {
  const float inverse = 1.0f / cap;
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] * inverse);
}

namespace {

// 2*pi as a sum of two doubles (hi + lo agrees with 2*pi to ~1e-32).
constexpr double kTwoPiHi = 6.283185307179586232;
constexpr double kTwoPiLo = 2.4492935982947063e-16;

// x * y mod 2*pi for |x| < 2^32 integral and 0 < y <= 2^32: the exact product as hi + lo
// (the FMA gives the rounding error exactly), then hi reduced with 2*pi in two parts.
double product_mod_two_pi(double x, double y) {
  const double hi = x * y;
  const double lo = std::fma(x, y, -hi);
  const double n = std::nearbyint(hi / kTwoPiHi);
  double r = std::fma(-n, kTwoPiHi, hi);
  r = std::fma(-n, kTwoPiLo, r);
  return r + lo;
}

}  // namespace

void rope_cos_sin(uint64_t pos, const double* thetas, int64_t n_freq, float* cos_out, float* sin_out) {
  // pos = high * 2^32 + low, each part exact in a double.
  const double high = (double)(pos >> 32);
  const double low = (double)(pos & 0xffffffffu);
  for (int64_t i = 0; i < n_freq; ++i) {
    double angle = product_mod_two_pi(low, thetas[i]);
    if (high != 0.0) angle += product_mod_two_pi(high, std::ldexp(thetas[i], 32));
    cos_out[i] = (float)std::cos(angle);
    sin_out[i] = (float)std::sin(angle);
  }
}

void rope_apply(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, RopeLayout layout,
                const float* cos, const float* sin) {
  const int64_t half = n_rot / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      // Adjacent pairs: (2i, 2i+1); NeoX: (i, i + n_rot/2). Both rotate the pair by angle_i.
      const int64_t a = layout == RopeLayout::kAdjacentPairs ? 2 * i : i;
      const int64_t b = layout == RopeLayout::kAdjacentPairs ? 2 * i + 1 : i + half;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * cos[i] - x1 * sin[i];
      v[b] = x0 * sin[i] + x1 * cos[i];
    }
  }
}

}  // namespace sinkstream
