// rope_cos_sin (ops.h) against an independent reference: the angle pos * theta reduced modulo 2*pi
// in quad precision (libquadmath: 113-bit significand, M_PIq), so the reference angle is good to
// ~1e-15 rad even at pos = 2^64 - 1. The engine must give cos/sin within float rounding at every
// position, and (streaming.md invariant 4) the rotation between two positions t and t - d, which
// is all an attention score sees, must be the rotation by d * theta however large t is.
#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"
#include "ops/ops.h"

#ifndef SINKSTREAM_TEST_QUADMATH
#define SINKSTREAM_TEST_QUADMATH 0
#endif
#if SINKSTREAM_TEST_QUADMATH
#include <quadmath.h>
#endif

using namespace sinkstream;

namespace {

#if SINKSTREAM_TEST_QUADMATH
using Wide = __float128;
// 2*pi to 40 digits, rounded once to quad (the M_PIq macro needs GNU literal suffixes).
const Wide kTwoPi = strtoflt128("6.283185307179586476925286766559005768394", nullptr);
Wide reduce(Wide x) { return fmodq(x, kTwoPi); }
double wide_cos(Wide x) { return (double)cosq(x); }
double wide_sin(Wide x) { return (double)sinq(x); }
constexpr uint64_t kMaxPosition = UINT64_MAX;
#else
// Fallback without libquadmath: x87 long double (64-bit significand) is exact enough only for
// positions up to ~2^24, so the far positions are not checked.
using Wide = long double;
Wide reduce(Wide x) { return std::fmod(x, 2 * 3.14159265358979323846264338327950288L); }
double wide_cos(Wide x) { return (double)std::cos(x); }
double wide_sin(Wide x) { return (double)std::sin(x); }
constexpr uint64_t kMaxPosition = 1ull << 24;
#endif

// Reference angle pos * theta mod 2*pi, with pos and theta taken exactly as given.
Wide reference_angle(uint64_t pos, double theta) { return reduce((Wide)pos * (Wide)theta); }

std::vector<double> make_thetas(double base, int n_rot, double linear_scale, double factor_every_other) {
  std::vector<double> thetas;
  for (int i = 0; i < n_rot / 2; ++i) {
    double theta = std::pow(base, -2.0 * i / n_rot) / linear_scale;
    if (i % 2 == 1) theta /= factor_every_other;  // like llama3's rope_freqs divisors
    thetas.push_back(theta);
  }
  return thetas;
}

std::vector<uint64_t> positions() {
  std::vector<uint64_t> out;
  for (uint64_t p = 0; p < 300; ++p) out.push_back(p);
  for (uint64_t base : {1ull << 16, 1ull << 24, (1ull << 31), (1ull << 32), 1ull << 40, 1ull << 52, 1ull << 53,
                        1ull << 62, 1ull << 63})
    for (uint64_t k : {0ull, 1ull, 2ull, 3ull, 1000ull, 123457ull})
      for (uint64_t p : {base + k, base - 1 - k})
        if (p <= kMaxPosition) out.push_back(p);
  for (uint64_t k = 0; k < 5; ++k) out.push_back(kMaxPosition - k);
  return out;
}

}  // namespace

int main() {
  const std::vector<std::vector<double>> theta_sets = {
      make_thetas(10000.0, 64, 1.0, 1.0),     // llama / SmolLM head_dim 64
      make_thetas(500000.0, 128, 1.0, 8.0),   // llama3 base with frequency divisors
      make_thetas(1000000.0, 128, 4.0, 1.0),  // linear scaling
      make_thetas(100.0, 8, 1.0, 1.7),
  };
  const std::vector<uint64_t> pos_list = positions();
  double max_abs_error = 0.0, max_diff_error = 0.0;

  for (const auto& thetas : theta_sets) {
    const int64_t n = (int64_t)thetas.size();
    std::vector<float> c((size_t)n), s((size_t)n), c2((size_t)n), s2((size_t)n);
    // 1. Absolute angles.
    for (uint64_t pos : pos_list) {
      rope_cos_sin(pos, thetas.data(), n, c.data(), s.data());
      for (int64_t i = 0; i < n; ++i) {
        const Wide a = reference_angle(pos, thetas[(size_t)i]);
        const double ec = std::fabs((double)c[(size_t)i] - wide_cos(a));
        const double es = std::fabs((double)s[(size_t)i] - wide_sin(a));
        max_abs_error = std::max({max_abs_error, ec, es});
        // float rounding of a value in [-1, 1] is at most 2^-25 ~ 3e-8; allow a few ulps.
        CHECK(ec <= 2e-7 && es <= 2e-7, "pos", pos, "theta", thetas[(size_t)i], "cos err", ec, "sin err", es);
      }
    }
    // 2. Rotations between t and t - d: cos/sin(angle(t) - angle(t - d)) from the engine's tables
    //    must equal cos/sin(d * theta) for every t, near 0 or near 2^63.
    const uint64_t far_positions[] = {5000, (1ull << 40) + 17, (1ull << 62) + 3, (1ull << 63) + 999, kMaxPosition - 7};
    for (uint64_t t : far_positions) {
      if (t > kMaxPosition) continue;
      rope_cos_sin(t, thetas.data(), n, c.data(), s.data());
      for (uint64_t d : {0ull, 1ull, 2ull, 3ull, 4ull, 100ull, 2047ull, 4095ull}) {
        rope_cos_sin(t - d, thetas.data(), n, c2.data(), s2.data());
        for (int64_t i = 0; i < n; ++i) {
          const double cos_diff = (double)c[(size_t)i] * c2[(size_t)i] + (double)s[(size_t)i] * s2[(size_t)i];
          const double sin_diff = (double)s[(size_t)i] * c2[(size_t)i] - (double)c[(size_t)i] * s2[(size_t)i];
          const Wide a = reference_angle(d, thetas[(size_t)i]);
          const double e = std::max(std::fabs(cos_diff - wide_cos(a)), std::fabs(sin_diff - wide_sin(a)));
          max_diff_error = std::max(max_diff_error, e);
          CHECK(e <= 5e-7, "t", t, "d", d, "theta", thetas[(size_t)i], "err", e);
        }
      }
    }
  }
  std::fprintf(stderr, "rope_cos_sin: max |error| %.3g (absolute angles), %.3g (angle differences), %zu positions%s\n",
               max_abs_error, max_diff_error, pos_list.size(),
               SINKSTREAM_TEST_QUADMATH ? "" : " (no libquadmath: positions up to 2^24 only)");
  return sinkstream_test::check_summary("test_rope");
}
