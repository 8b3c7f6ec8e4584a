// fp16.h against a brute-force reference written from the IEEE 754 binary16 definition:
// every one of the 65536 halves decodes exactly, every finite half survives float -> half, and
// float -> half rounds to the nearest half (ties to even) for halves, exact midpoints between them,
// their float neighbours and a sweep over the float32 bit patterns.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"
#include "core/fp16.h"

using namespace sinkstream;

namespace {

// binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits. Value in double (exact).
double reference_half_value(uint16_t h) {
  const int sign = h >> 15;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  double magnitude;
  if (exponent == 0) magnitude = std::ldexp((double)mantissa, -24);  // subnormal: mantissa * 2^-24
  else if (exponent == 31) magnitude = mantissa == 0 ? INFINITY : NAN;
  else magnitude = std::ldexp((double)(1024 + mantissa), exponent - 25);  // 1.m * 2^(e-15)
  return sign ? -magnitude : magnitude;
}

bool is_half_nan(uint16_t h) { return ((h >> 10) & 0x1f) == 31 && (h & 0x3ff) != 0; }

// The finite non-negative halves in increasing order (bit patterns 0x0000 .. 0x7bff are monotonic).
struct HalfTable {
  std::vector<double> values;  // index = bit pattern
  HalfTable() {
    for (uint32_t h = 0; h <= 0x7bff; ++h) values.push_back(reference_half_value((uint16_t)h));
  }
};

// Nearest half to x by search over the table; ties go to the even bit pattern; values at or above
// 65520 (the midpoint between the largest half 65504 and 2^16) overflow to infinity.
uint16_t reference_round(const HalfTable& table, float x) {
  if (std::isnan(x)) return 0x7e00;  // any NaN; callers compare NaN-ness only
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs((double)x);
  if (a >= 65520.0) return sign | 0x7c00;
  const auto& v = table.values;
  const size_t hi = (size_t)(std::lower_bound(v.begin(), v.end(), a) - v.begin());  // v[hi] >= a
  if (hi == 0) return sign;
  if (hi == v.size()) return sign | 0x7bff;
  const size_t lo = hi - 1;
  const double below = a - v[lo], above = v[hi] - a;
  size_t pick;
  if (below < above) pick = lo;
  else if (above < below) pick = hi;
  else pick = (lo % 2 == 0) ? lo : hi;  // exact tie: the even mantissa
  return (uint16_t)(sign | pick);
}

}  // namespace

int main() {
  const HalfTable table;

  // 1. Decoding: all 65536 patterns, bit-exact against the reference (NaN: a NaN with the same sign
  //    and the payload in the top mantissa bits, as float32 widening keeps it).
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = fp16_to_f32((uint16_t)h);
    if (is_half_nan((uint16_t)h)) {
      CHECK(std::isnan(got), "half", h);
      CHECK_EQ(f32_to_bits(got), ((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13), "half", h);
      continue;
    }
    const double want = reference_half_value((uint16_t)h);
    CHECK_EQ(f32_to_bits(got), f32_to_bits((float)want), "half", h);  // (float)want is exact
  }

  // 2. Round trip half -> float -> half: identity for every non-NaN half; NaN stays NaN (sign kept).
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t back = f32_to_fp16(fp16_to_f32((uint16_t)h));
    if (is_half_nan((uint16_t)h)) {
      CHECK(is_half_nan(back), "half", h, "came back as", back);
      CHECK_EQ(back & 0x8000, (int)(h & 0x8000), "half", h);
    } else {
      CHECK_EQ(back, (uint16_t)h);
    }
  }

  // 3. Rounding: exact midpoints between neighbouring halves (ties), one float ulp either side of
  //    them, and the largest-half / overflow boundary.
  std::vector<float> probes;
  for (size_t i = 0; i + 1 < table.values.size(); ++i) {
    const float mid = (float)((table.values[i] + table.values[i + 1]) / 2);  // 12 significant bits: exact
    probes.push_back(mid);
    probes.push_back(std::nextafter(mid, 0.0f));
    probes.push_back(std::nextafter(mid, INFINITY));
  }
  for (float x : {65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e30f, 5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f,
                  1e-10f, 0.0f, INFINITY})
    probes.push_back(x);
  // A sweep over float32 bit patterns (a stride prime to 2^32 touches every exponent and many
  // mantissas), both signs.
  for (uint64_t bits = 0; bits < (1ull << 32); bits += 4099) probes.push_back(bits_to_f32((uint32_t)bits));

  size_t n_probes = 0;
  for (float x : probes) {
    for (float s : {x, -x}) {
      const uint16_t got = f32_to_fp16(s);
      const uint16_t want = reference_round(table, s);
      if (std::isnan(s)) CHECK(is_half_nan(got), "float bits", f32_to_bits(s), "gave", got);
      else CHECK_EQ(got, want, "float", s, "bits", f32_to_bits(s));
      ++n_probes;
    }
  }
  std::fprintf(stderr, "float -> half rounding checked on %zu values\n", n_probes);

  // 4. bfloat16 is the top half of a float32.
  for (uint32_t b = 0; b < 65536; b += 7) CHECK_EQ(f32_to_bits(bf16_to_f32((uint16_t)b)), b << 16);

  return sinkstream_test::check_summary("test_fp16");
}
