// IEEE half and bfloat16 <-> float32, exact (no F16C needed; SIMD kernels use their own).
#pragma once
#include <cstdint>
#include <cstring>

namespace sinkstream {

inline float bits_to_f32(uint32_t bits) { float f; std::memcpy(&f, &bits, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t bits; std::memcpy(&bits, &f, 4); return bits; }

// Half -> float, exact for every input including subnormals, inf and NaN.
inline float fp16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    if (mant == 0) return bits_to_f32(sign);
    // Subnormal: value = mant * 2^-24, exactly representable in float32.
    float v = (float)mant * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

// Float -> half with round-to-nearest-even, bit-identical to numpy's astype(float16) for every
// input (NaN payloads included; tests/test_dequantize.py checks it).
inline uint16_t f32_to_fp16(float f) {
  const uint32_t x = f32_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t ax = x & 0x7fffffff;
  if (ax == 0x7f800000u) return (uint16_t)(sign | 0x7c00);  // inf
  if (ax > 0x7f800000u) {
    // NaN: keep the top 10 payload bits (as numpy does), forcing one on so it stays a NaN.
    const uint32_t payload = (ax & 0x7fffffu) >> 13;
    return (uint16_t)(sign | 0x7c00 | (payload != 0 ? payload : 1));
  }
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  // rounds to >= 65520 -> inf
  if (ax < 0x38800000u) {                                    // result is subnormal or zero
    // Scale so the subnormal's integer mantissa lands in the float's low bits, rounding by hardware.
    float v = bits_to_f32(ax) + 0.5f;  // 0.5 = 2^-1: ulp at that scale is 2^-24, the half subnormal step
    return (uint16_t)(sign | (f32_to_bits(v) - 0x3f000000u));
  }
  const uint32_t odd = (ax >> 13) & 1;
  const uint32_t rounded = ax + 0xc8000fffu + odd;  // rebias exponent (-112 << 23) and round to even
  return (uint16_t)(sign | (rounded >> 13));
}

inline float bf16_to_f32(uint16_t b) { return bits_to_f32((uint32_t)b << 16); }

}  // namespace sinkstream
