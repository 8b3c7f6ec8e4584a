// Element-wise decoding of every GGUF weight type the CUDA backend reads, written once for the host
// and the device (SS_HD): the CUDA kernels (cuda_backend.cu: the generic matmul and the embedding
// lookup) call it on the GPU, and the bindings (bind_cuda.cc: cuda_decode_row) call the very same
// code on the CPU, so the block layouts the GPU reads are checked on a machine without a GPU
// against dequantize.cc (tests/test_cuda.py, test_decode_row_matches_cpu_dequantizer).
//
// decode_element(type, row, e) is element e of a row of raw GGUF blocks, with the same float32
// operations in the same order as dequantize.cc (quant_blocks.h lists each formula); products go
// through mul_rn so nvcc cannot contract them with the following add into an FMA (which rounds
// once and would differ from the CPU in the last bit).
#pragma once
#include <cstdint>

#include "quant/quant_blocks.h"
#include "quant/quant_types.h"

#if defined(__CUDACC__)
#define SS_HD __host__ __device__ __forceinline__
#else
#define SS_HD inline
#endif

namespace sinkstream::cuda {

// The weight types the CUDA backend reads directly (matmul, embedding): every type the supported
// families' GGUF files use.
SS_HD bool decodable(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16:
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q8_0:
    case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K:
    case GgmlType::IQ4_NL:
      return true;
    default:
      return false;
  }
}

// Elements and bytes per block (the GGUF spec's, from the block structs).
SS_HD int block_elements(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: return 1;
    case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K:
      return kQKK;
    default: return kQK;
  }
}

SS_HD int block_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 4;
    case GgmlType::F16: case GgmlType::BF16: return 2;
    case GgmlType::Q4_0: return (int)sizeof(BlockQ4_0);
    case GgmlType::Q4_1: return (int)sizeof(BlockQ4_1);
    case GgmlType::Q5_0: return (int)sizeof(BlockQ5_0);
    case GgmlType::Q5_1: return (int)sizeof(BlockQ5_1);
    case GgmlType::Q8_0: return (int)sizeof(BlockQ8_0);
    case GgmlType::IQ4_NL: return (int)sizeof(BlockIQ4_NL);
    case GgmlType::Q2_K: return (int)sizeof(BlockQ2_K);
    case GgmlType::Q3_K: return (int)sizeof(BlockQ3_K);
    case GgmlType::Q4_K: return (int)sizeof(BlockQ4_K);
    case GgmlType::Q5_K: return (int)sizeof(BlockQ5_K);
    case GgmlType::Q6_K: return (int)sizeof(BlockQ6_K);
    default: return 0;
  }
}

// The GGUF name of a decodable type (the CUDA library's own: it may not call quant_types.cc).
inline const char* decodable_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::BF16: return "BF16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::IQ4_NL: return "IQ4_NL";
    default: return "unsupported";
  }
}

namespace decode_detail {

SS_HD float bits_f32(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  union {
    uint32_t u;
    float f;
  } v{bits};
  return v.f;
#endif
}

// Exact half -> float (core/fp16.h's algorithm, usable on the device).
SS_HD float half_f32(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    const float v = (float)mant * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

// Blocks are 2-byte aligned at best (Q4_0: 18 bytes): read 16-bit fields byte by byte.
SS_HD uint32_t u16(const uint8_t* p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
SS_HD float half_at(const uint8_t* p) { return half_f32(u16(p)); }

SS_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// IQ4_NL's codebook (quant_blocks.h kIq4nlValues: a host constant, which device code cannot read).
SS_HD int iq4nl_value(int q) {
  constexpr int8_t values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  return values[q];
}

SS_HD void k4_scale_min(const uint8_t* scales, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *mn = scales[j + 4] & 63;
  } else {
    *sc = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
    *mn = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

}  // namespace decode_detail

// Element e of a row of `type` blocks starting at `row`.
SS_HD float decode_element(GgmlType type, const uint8_t* row, int64_t e) {
  using namespace decode_detail;
  switch (type) {
    case GgmlType::F32: return bits_f32((uint32_t)u16(row + 4 * e) | u16(row + 4 * e + 2) << 16);
    case GgmlType::F16: return half_at(row + 2 * e);
    case GgmlType::BF16: return bits_f32(u16(row + 2 * e) << 16);
    default: break;
  }
  const int64_t nb = e / block_elements(type);
  const int i = (int)(e % block_elements(type));
  const uint8_t* b = row + nb * block_bytes(type);
  switch (type) {
    case GgmlType::Q4_0: {  // d (2) qs (16)
      const int q = i < 16 ? (b[2 + i] & 0x0f) : (b[2 + i - 16] >> 4);
      return mul_rn(half_at(b), (float)(q - 8));
    }
    case GgmlType::Q4_1: {  // d m qs
      const int q = i < 16 ? (b[4 + i] & 0x0f) : (b[4 + i - 16] >> 4);
      return mul_rn(half_at(b), (float)q) + half_at(b + 2);
    }
    case GgmlType::Q5_0: {  // d qh[4] qs
      const uint32_t qh = (uint32_t)b[2] | (uint32_t)b[3] << 8 | (uint32_t)b[4] << 16 | (uint32_t)b[5] << 24;
      const int lo = i < 16 ? (b[6 + i] & 0x0f) : (b[6 + i - 16] >> 4);
      const int q = lo | (int)((qh >> i) & 1) << 4;
      return mul_rn(half_at(b), (float)(q - 16));
    }
    case GgmlType::Q5_1: {  // d m qh[4] qs
      const uint32_t qh = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24;
      const int lo = i < 16 ? (b[8 + i] & 0x0f) : (b[8 + i - 16] >> 4);
      const int q = lo | (int)((qh >> i) & 1) << 4;
      return mul_rn(half_at(b), (float)q) + half_at(b + 2);
    }
    case GgmlType::Q8_0: return mul_rn(half_at(b), (float)(int8_t)b[2 + i]);
    case GgmlType::IQ4_NL: {
      const int q = i < 16 ? (b[2 + i] & 0x0f) : (b[2 + i - 16] >> 4);
      return mul_rn(half_at(b), (float)iq4nl_value(q));
    }
    case GgmlType::Q2_K: {  // scales[16] qs[64] d dmin
      const int h = i / 128, s = (i / 32) % 4, l = i % 32;
      const int q = (b[16 + 32 * h + l] >> (2 * s)) & 3;
      const int sc = b[i / 16];
      const float dl = mul_rn(half_at(b + 80), (float)(sc & 0x0f));
      const float ml = mul_rn(half_at(b + 82), (float)(sc >> 4));
      return mul_rn(dl, (float)q) - ml;
    }
    case GgmlType::Q3_K: {  // hmask[32] qs[64] scales[12] d
      const int h = i / 128, s = (i / 32) % 4, l = i % 32;
      const int low = (b[32 + 32 * h + l] >> (2 * s)) & 3;
      const int high_bit = (b[l] >> (i / 32)) & 1;
      const int q = low - (high_bit ? 0 : 4);
      const uint8_t* scales = b + 96;
      const int j = i / 16;
      const int lo = j < 8 ? (scales[j] & 0x0f) : (scales[j - 8] >> 4);
      const int hi = (scales[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
      const float dl = mul_rn(half_at(b + 108), (float)((lo | (hi << 4)) - 32));
      return mul_rn(dl, (float)q);
    }
    case GgmlType::Q4_K:    // d dmin scales[12] qs[128]
    case GgmlType::Q5_K: {  // d dmin scales[12] qh[32] qs[128]
      const int j = i / 32, l = i % 32;
      int sc = 0, mn = 0;
      k4_scale_min(b + 4, j, &sc, &mn);
      const float dl = mul_rn(half_at(b), (float)sc);
      const float ml = mul_rn(half_at(b + 2), (float)mn);
      const bool five = type == GgmlType::Q5_K;
      const uint8_t* qs = b + (five ? 48 : 16);
      int v = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0f;
      if (five) v |= ((b[16 + l] >> j) & 1) << 4;
      return mul_rn(dl, (float)v) - ml;
    }
    case GgmlType::Q6_K: {  // ql[128] qh[64] scales[16] d
      const int h = i / 128;
      const int low = (b[64 * h + i % 64] >> (4 * ((i / 64) % 2))) & 0x0f;
      const int high = (b[128 + 32 * h + i % 32] >> (2 * ((i / 32) % 4))) & 3;
      const float dl = mul_rn(half_at(b + 208), (float)(int8_t)b[192 + i / 16]);
      return mul_rn(dl, (float)((low | high << 4) - 32));
    }
    default: return 0.0f;  // decodable() is checked before any call
  }
}

}  // namespace sinkstream::cuda
