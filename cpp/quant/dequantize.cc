// Dequantization of GGML blocks to float32, bit-exact with gguf-py's NumPy dequantizers
// (gguf/quants.py, which follows ggml's dequantize_row_*).
//
// Bit-exactness rests on doing the same float32 operations in the same order as the NumPy code:
// e.g. Q4_1 is `(d * q) + m` (two roundings), Q4_K is `(d * sc) * q - (dmin * mn)`. A fused
// multiply-add would round once and differ in the last bit, so this file is compiled with
// -ffp-contract=off (CMakeLists.txt): GCC contracts a * b + c even in ISO C++ mode whenever the
// target has FMA (aarch64, or x86 with -mfma).
#include "quant/dequantize.h"

#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/quant_blocks.h"

namespace sinkstream {

namespace {

void dequantize_q4_0(const BlockQ4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(b[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * (float)((b[i].qs[j] & 0x0f) - 8);
      y[j + kQK / 2] = d * (float)((b[i].qs[j] >> 4) - 8);
    }
  }
}

void dequantize_q4_1(const BlockQ4_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * (float)(b[i].qs[j] & 0x0f) + m;
      y[j + kQK / 2] = d * (float)(b[i].qs[j] >> 4) + m;
    }
  }
}

// The 32 fifth bits of a Q5 block, bit j for element j.
uint32_t load_qh(const uint8_t qh[4]) {
  return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

void dequantize_q5_0(const BlockQ5_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(b[i].d);
    const uint32_t qh = load_qh(b[i].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (b[i].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
      const int hi = (b[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
      y[j] = d * (float)(lo - 16);
      y[j + kQK / 2] = d * (float)(hi - 16);
    }
  }
}

void dequantize_q5_1(const BlockQ5_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
    const uint32_t qh = load_qh(b[i].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (b[i].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
      const int hi = (b[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
      y[j] = d * (float)lo + m;
      y[j + kQK / 2] = d * (float)hi + m;
    }
  }
}

void dequantize_q8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(b[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = d * (float)b[i].qs[j];
  }
}

// The 4-bit codebook formats, in gguf-py's operation: d * float32(value), one rounding. IQ4_NL:
// d a half; MXFP4 (MXFP4.dequantize_blocks): d = 2^(e-128), exact but for overflow to infinity
// at large exponents and subnormal results, which IEEE float32 gives both sides alike.
template <typename Block, const int8_t* kValues>
void dequantize_codebook(const Block* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = codebook_scale(b[i]);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * (float)kValues[b[i].qs[j] & 0x0f];
      y[j + kQK / 2] = d * (float)kValues[b[i].qs[j] >> 4];
    }
  }
}
constexpr auto dequantize_iq4_nl = dequantize_codebook<BlockIQ4_NL, kIq4nlValues>;
constexpr auto dequantize_mxfp4 = dequantize_codebook<BlockMXFP4, kMxfp4Values>;

void dequantize_q2_k(const BlockQ2_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
    for (int e = 0; e < kQKK; ++e) {
      const int h = e / 128, s = (e / 32) % 4, l = e % 32;
      const int q = (b[i].qs[32 * h + l] >> (2 * s)) & 3;
      const uint8_t sc = b[i].scales[e / 16];
      const float dl = d * (float)(sc & 0x0f);
      const float ml = dmin * (float)(sc >> 4);
      y[e] = dl * (float)q - ml;
    }
  }
}

void dequantize_q3_k(const BlockQ3_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const float d = fp16_to_f32(b[i].d);
    for (int e = 0; e < kQKK; ++e) {
      const int h = e / 128, s = (e / 32) % 4, l = e % 32;
      const int low = (b[i].qs[32 * h + l] >> (2 * s)) & 3;
      const int high_bit = (b[i].hmask[l] >> (e / 32)) & 1;
      const int q = low - (high_bit ? 0 : 4);
      const float dl = d * (float)q3k_scale(b[i].scales, e / 16);
      y[e] = dl * (float)q;
    }
  }
}

void dequantize_q4_k(const BlockQ4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
    for (int j = 0; j < 8; ++j) {  // sub-blocks of 32
      uint8_t sc, mn;
      unpack_k4_scale_min(b[i].scales, j, &sc, &mn);
      const float dl = d * (float)sc;
      const float ml = dmin * (float)mn;
      const uint8_t* q = b[i].qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      for (int l = 0; l < 32; ++l) y[32 * j + l] = dl * (float)((q[l] >> shift) & 0x0f) - ml;
    }
  }
}

void dequantize_q5_k(const BlockQ5_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, mn;
      unpack_k4_scale_min(b[i].scales, j, &sc, &mn);
      const float dl = d * (float)sc;
      const float ml = dmin * (float)mn;
      const uint8_t* q = b[i].qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      for (int l = 0; l < 32; ++l) {
        const int v = ((q[l] >> shift) & 0x0f) | ((b[i].qh[l] >> j) & 1) << 4;
        y[32 * j + l] = dl * (float)v - ml;
      }
    }
  }
}

void dequantize_q6_k(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const float d = fp16_to_f32(b[i].d);
    for (int e = 0; e < kQKK; ++e) {
      const int h = e / 128;
      const int low = (b[i].ql[64 * h + e % 64] >> (4 * ((e / 64) % 2))) & 0x0f;
      const int high = (b[i].qh[32 * h + e % 32] >> (2 * ((e / 32) % 4))) & 3;
      const float dl = d * (float)b[i].scales[e / 16];
      y[e] = dl * (float)((low | high << 4) - 32);
    }
  }
}

}  // namespace

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  const GgmlTypeInfo& info = ggml_type_info(type);
  SS_CHECK_ARG(info.can_dequantize, "cannot dequantize tensor type ", info.name);
  SS_CHECK_ARG(n >= 0 && n % info.block_size == 0, "row of ", n, " elements is not a multiple of the ",
               info.name, " block size ", info.block_size);
  const int64_t nb = n / info.block_size;
  switch (type) {
    case GgmlType::F32: std::memcpy(dst, src, (size_t)n * 4); return;
    case GgmlType::F16: {
      const uint16_t* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(h[i]);
      return;
    }
    case GgmlType::BF16: {
      const uint16_t* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]);
      return;
    }
    case GgmlType::Q4_0: dequantize_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb); return;
    case GgmlType::Q4_1: dequantize_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb); return;
    case GgmlType::Q5_0: dequantize_q5_0(static_cast<const BlockQ5_0*>(src), dst, nb); return;
    case GgmlType::Q5_1: dequantize_q5_1(static_cast<const BlockQ5_1*>(src), dst, nb); return;
    case GgmlType::Q8_0: dequantize_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb); return;
    case GgmlType::IQ4_NL: dequantize_iq4_nl(static_cast<const BlockIQ4_NL*>(src), dst, nb); return;
    case GgmlType::MXFP4: dequantize_mxfp4(static_cast<const BlockMXFP4*>(src), dst, nb); return;
    case GgmlType::Q2_K: dequantize_q2_k(static_cast<const BlockQ2_K*>(src), dst, nb); return;
    case GgmlType::Q3_K: dequantize_q3_k(static_cast<const BlockQ3_K*>(src), dst, nb); return;
    case GgmlType::Q4_K: dequantize_q4_k(static_cast<const BlockQ4_K*>(src), dst, nb); return;
    case GgmlType::Q5_K: dequantize_q5_k(static_cast<const BlockQ5_K*>(src), dst, nb); return;
    case GgmlType::Q6_K: dequantize_q6_k(static_cast<const BlockQ6_K*>(src), dst, nb); return;
    default:
      throw ArgumentError(cat("dequantization of ", info.name, " is not implemented"));
  }
}

}  // namespace sinkstream
