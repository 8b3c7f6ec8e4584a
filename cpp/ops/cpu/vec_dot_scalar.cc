// Portable reference kernels: activation quantization (shared by every ISA) and one scalar
// integer dot product per weight type. The SIMD files must agree with these up to float summation
// order (tests/test_matmul.py).
//
// Each quantized dot follows from the block formulas in quant/quant_blocks.h with x ~= d_x * a:
//   Q4_0  sum_b d_w d_x sum_i (q_i - 8) a_i          Q4_1  sum_b d_w d_x sum_i q_i a_i + m d_x sum_i a_i
//   K-quants: sum over sub-blocks of (d sc_j) d_x sum_i q_i a_i - (dmin mn_j) d_x sum_i a_i,
// where the activation block sums (Q8AScale::ds, BlockQ8KA::bsums) give the min / offset terms.
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "ops/cpu/vec_dot.h"

namespace sinkstream {

// ---- activation quantization ---------------------------------------------------------------------

namespace {

// Round half to even for |v| < 2^22: adding 1.5 * 2^23 pushes the fraction bits out of the float's
// mantissa, so the default rounding mode (to nearest, ties to even) does the rounding. Plain IEEE
// float adds, so every ISA gets identical integers.
inline int round_to_int(float v) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  return (int)((v + magic) - magic);
}

// Quantizes `count` floats with one symmetric scale d = max|x| / 127; returns d, writes q and the
// sum of q.
float quantize_block(const float* x, int count, int8_t* q, int* sum) {
  float amax = 0.0f;
  bool finite = true;
  for (int i = 0; i < count; ++i) {
    amax = std::fmax(amax, std::fabs(x[i]));
    finite = finite && std::isfinite(x[i]);
  }
  const float d = amax / 127.0f;
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;  // as llama.cpp: 127 / amax, not 1 / d
  // Converting inf or NaN to int is undefined behaviour (fuzz_model_load finding: activations of
  // ~1e-38 make 127 / amax overflow). A block that small quantizes to zeros (it is below float
  // resolution next to any other term); a NaN or inf activation (a diverged model) has no int8
  // code, so its block gets zeros and a NaN scale: the output is NaN, as the float kernels give.
  if (!finite || !std::isfinite(id)) {
    for (int i = 0; i < count; ++i) q[i] = 0;
    *sum = 0;
    return finite ? 0.0f : NAN;
  }
  int s = 0;
  for (int i = 0; i < count; ++i) {
    const int v = round_to_int(x[i] * id);
    q[i] = (int8_t)v;
    s += v;
  }
  *sum = s;
  return d;
}

}  // namespace

void quantize_activations(ActFormat format, const float* x, int64_t cols, uint8_t* out) {
  switch (format) {
    case ActFormat::F32: std::memcpy(out, x, (size_t)cols * sizeof(float)); return;
    case ActFormat::Q8A: {
      const int64_t nb = cols / kQK;
      Q8AScale* scales = reinterpret_cast<Q8AScale*>(out + q8a_scales_offset(nb));
      if (nb % 2 == 1) std::memset(out + q8a_quant_offset(nb - 1, 0), 0, 64);  // the missing partner's zeros
      for (int64_t b = 0; b < nb; ++b) {
        int8_t q[kQK];
        int sum;
        // The scale is kept at half precision, as llama.cpp's Q8_0/Q8_1 activation blocks keep it,
        // so both engines round the same activations the same way (and agree more closely).
        scales[b].d = fp16_to_f32(f32_to_fp16(quantize_block(x + b * kQK, kQK, q, &sum)));
        scales[b].ds = scales[b].d * (float)sum;
        std::memcpy(out + q8a_quant_offset(b, 0), q, 16);
        std::memcpy(out + q8a_quant_offset(b, 1), q + 16, 16);
      }
      return;
    }
    case ActFormat::Q8K: {
      BlockQ8KA* blocks = reinterpret_cast<BlockQ8KA*>(out);
      for (int64_t b = 0; b < cols / kQKK; ++b) {
        int sum;
        blocks[b].d = quantize_block(x + b * kQKK, kQKK, blocks[b].qs, &sum);
        for (int g = 0; g < kQKK / 16; ++g) {
          int group = 0;
          for (int i = 0; i < 16; ++i) group += blocks[b].qs[16 * g + i];
          blocks[b].bsums[g] = (int16_t)group;
        }
        std::memset(blocks[b].padding, 0, sizeof(blocks[b].padding));
      }
      return;
    }
  }
}

// ---- scalar kernels ------------------------------------------------------------------------------

namespace {

uint32_t load_qh(const uint8_t qh[4]) {
  return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

// A Q8A activation row (layout in vec_dot.h).
struct Q8ARow {
  const uint8_t* base;
  int64_t nb;
  // Quants [16 * half, 16 * half + 16) of block b.
  const int8_t* quants(int64_t b, int half) const {
    return reinterpret_cast<const int8_t*>(base + q8a_quant_offset(b, half));
  }
  const Q8AScale& scale(int64_t b) const {
    return reinterpret_cast<const Q8AScale*>(base + q8a_scales_offset(nb))[b];
  }
};

float dot_q4_0(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const BlockQ4_0* b = reinterpret_cast<const BlockQ4_0*>(w);
  const Q8ARow a{x, nb};
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t *lo = a.quants(i, 0), *hi = a.quants(i, 1);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) isum += ((b[i].qs[j] & 0x0f) - 8) * lo[j] + ((b[i].qs[j] >> 4) - 8) * hi[j];
    sum += fp16_to_f32(b[i].d) * a.scale(i).d * (float)isum;
  }
  return sum;
}

float dot_q4_1(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const BlockQ4_1* b = reinterpret_cast<const BlockQ4_1*>(w);
  const Q8ARow a{x, nb};
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t *lo = a.quants(i, 0), *hi = a.quants(i, 1);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) isum += (b[i].qs[j] & 0x0f) * lo[j] + (b[i].qs[j] >> 4) * hi[j];
    sum += fp16_to_f32(b[i].d) * a.scale(i).d * (float)isum + fp16_to_f32(b[i].m) * a.scale(i).ds;
  }
  return sum;
}

float dot_q5_0(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const BlockQ5_0* b = reinterpret_cast<const BlockQ5_0*>(w);
  const Q8ARow a{x, nb};
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const uint32_t qh = load_qh(b[i].qh);
    const int8_t *lo = a.quants(i, 0), *hi = a.quants(i, 1);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int q_lo = ((b[i].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4) - 16;
      const int q_hi = ((b[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4) - 16;
      isum += q_lo * lo[j] + q_hi * hi[j];
    }
    sum += fp16_to_f32(b[i].d) * a.scale(i).d * (float)isum;
  }
  return sum;
}

float dot_q5_1(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const BlockQ5_1* b = reinterpret_cast<const BlockQ5_1*>(w);
  const Q8ARow a{x, nb};
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const uint32_t qh = load_qh(b[i].qh);
    const int8_t *lo = a.quants(i, 0), *hi = a.quants(i, 1);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int q_lo = (b[i].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
      const int q_hi = (b[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
      isum += q_lo * lo[j] + q_hi * hi[j];
    }
    sum += fp16_to_f32(b[i].d) * a.scale(i).d * (float)isum + fp16_to_f32(b[i].m) * a.scale(i).ds;
  }
  return sum;
}

float dot_q8_0(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const BlockQ8_0* b = reinterpret_cast<const BlockQ8_0*>(w);
  const Q8ARow a{x, nb};
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t *lo = a.quants(i, 0), *hi = a.quants(i, 1);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) isum += b[i].qs[j] * lo[j] + b[i].qs[j + 16] * hi[j];
    sum += fp16_to_f32(b[i].d) * a.scale(i).d * (float)isum;
  }
  return sum;
}

// The 4-bit codebook formats: nibbles index a table of int8 values (IQ4_NL's non-linear grid,
// MXFP4's doubled E2M1 values), one float scale per block of 32.
template <typename Block, const int8_t* kValues>
float dot_codebook(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const Block* b = reinterpret_cast<const Block*>(w);
  const Q8ARow a{x, nb};
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t *lo = a.quants(i, 0), *hi = a.quants(i, 1);
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) isum += kValues[b[i].qs[j] & 0x0f] * lo[j] + kValues[b[i].qs[j] >> 4] * hi[j];
    sum += codebook_scale(b[i]) * a.scale(i).d * (float)isum;
  }
  return sum;
}

constexpr auto dot_iq4_nl = dot_codebook<BlockIQ4_NL, kIq4nlValues>;
constexpr auto dot_mxfp4 = dot_codebook<BlockMXFP4, kMxfp4Values>;

float dot_q2_k(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const BlockQ2_K* b = reinterpret_cast<const BlockQ2_K*>(w);
  const BlockQ8KA* a = reinterpret_cast<const BlockQ8KA*>(x);
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int sumq = 0, summ = 0;
    for (int j = 0; j < kQKK / 16; ++j) {
      const int h = j / 8, s = (j / 2) % 4, l0 = 16 * (j % 2);  // element 16j = 128h + 32s + l0
      int isum = 0;
      for (int l = l0; l < l0 + 16; ++l) isum += ((b[i].qs[32 * h + l] >> (2 * s)) & 3) * a[i].qs[16 * j + l - l0];
      sumq += (b[i].scales[j] & 0x0f) * isum;
      summ += (b[i].scales[j] >> 4) * a[i].bsums[j];
    }
    sum += fp16_to_f32(b[i].d) * a[i].d * (float)sumq - fp16_to_f32(b[i].dmin) * a[i].d * (float)summ;
  }
  return sum;
}

float dot_q3_k(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const BlockQ3_K* b = reinterpret_cast<const BlockQ3_K*>(w);
  const BlockQ8KA* a = reinterpret_cast<const BlockQ8KA*>(x);
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int sumq = 0;
    for (int j = 0; j < kQKK / 16; ++j) {
      int isum = 0;
      for (int e = 16 * j; e < 16 * j + 16; ++e) {
        const int h = e / 128, s = (e / 32) % 4, l = e % 32;
        const int low = (b[i].qs[32 * h + l] >> (2 * s)) & 3;
        const int q = low - (((b[i].hmask[l] >> (e / 32)) & 1) ? 0 : 4);
        isum += q * a[i].qs[e];
      }
      sumq += q3k_scale(b[i].scales, j) * isum;
    }
    sum += fp16_to_f32(b[i].d) * a[i].d * (float)sumq;
  }
  return sum;
}

float dot_q4_k(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const BlockQ4_K* b = reinterpret_cast<const BlockQ4_K*>(w);
  const BlockQ8KA* a = reinterpret_cast<const BlockQ8KA*>(x);
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int sumq = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, mn;
      unpack_k4_scale_min(b[i].scales, j, &sc, &mn);
      const uint8_t* q = b[i].qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      int isum = 0;
      for (int l = 0; l < 32; ++l) isum += ((q[l] >> shift) & 0x0f) * a[i].qs[32 * j + l];
      sumq += sc * isum;
      summ += mn * (a[i].bsums[2 * j] + a[i].bsums[2 * j + 1]);
    }
    sum += fp16_to_f32(b[i].d) * a[i].d * (float)sumq - fp16_to_f32(b[i].dmin) * a[i].d * (float)summ;
  }
  return sum;
}

float dot_q5_k(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const BlockQ5_K* b = reinterpret_cast<const BlockQ5_K*>(w);
  const BlockQ8KA* a = reinterpret_cast<const BlockQ8KA*>(x);
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int sumq = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, mn;
      unpack_k4_scale_min(b[i].scales, j, &sc, &mn);
      const uint8_t* q = b[i].qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      int isum = 0;
      for (int l = 0; l < 32; ++l) {
        const int v = ((q[l] >> shift) & 0x0f) | ((b[i].qh[l] >> j) & 1) << 4;
        isum += v * a[i].qs[32 * j + l];
      }
      sumq += sc * isum;
      summ += mn * (a[i].bsums[2 * j] + a[i].bsums[2 * j + 1]);
    }
    sum += fp16_to_f32(b[i].d) * a[i].d * (float)sumq - fp16_to_f32(b[i].dmin) * a[i].d * (float)summ;
  }
  return sum;
}

float dot_q6_k(int64_t nb, const uint8_t* w, const uint8_t* x) {
  const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(w);
  const BlockQ8KA* a = reinterpret_cast<const BlockQ8KA*>(x);
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int sumq = 0;
    for (int j = 0; j < kQKK / 16; ++j) {
      int isum = 0;
      for (int e = 16 * j; e < 16 * j + 16; ++e) {
        const int h = e / 128;
        const int low = (b[i].ql[64 * h + e % 64] >> (4 * ((e / 64) % 2))) & 0x0f;
        const int high = (b[i].qh[32 * h + e % 32] >> (2 * ((e / 32) % 4))) & 3;
        isum += ((low | high << 4) - 32) * a[i].qs[e];
      }
      sumq += b[i].scales[j] * isum;
    }
    sum += fp16_to_f32(b[i].d) * a[i].d * (float)sumq;
  }
  return sum;
}

// Float weights against float activations; four partial sums (any order is as good as another).
template <float (*Load)(const uint8_t*, int64_t)>
float dot_float(int64_t n, const uint8_t* w, const uint8_t* x) {
  const float* xf = reinterpret_cast<const float*>(x);
  float partial[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) partial[k] += Load(w, i + k) * xf[i + k];
  for (; i < n; ++i) partial[0] += Load(w, i) * xf[i];
  return (partial[0] + partial[1]) + (partial[2] + partial[3]);
}

float load_f32(const uint8_t* w, int64_t i) { float v; std::memcpy(&v, w + 4 * i, 4); return v; }
float load_f16(const uint8_t* w, int64_t i) { uint16_t h; std::memcpy(&h, w + 2 * i, 2); return fp16_to_f32(h); }
float load_bf16(const uint8_t* w, int64_t i) { uint16_t h; std::memcpy(&h, w + 2 * i, 2); return bf16_to_f32(h); }

// A DotTileFn from a one-row, one-token dot.
template <float (*Dot)(int64_t, const uint8_t*, const uint8_t*)>
void tile_dot(int64_t nb, const uint8_t* w, int64_t w_stride, int nr, const uint8_t* x, int64_t x_stride, int nt,
              float* y, int64_t y_stride) {
  for (int t = 0; t < nt; ++t)
    for (int r = 0; r < nr; ++r) y[t * y_stride + r] = Dot(nb, w + r * w_stride, x + t * x_stride);
}

}  // namespace

DotTileFn scalar_dot_tile(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return tile_dot<dot_float<load_f32>>;
    case GgmlType::F16: return tile_dot<dot_float<load_f16>>;
    case GgmlType::BF16: return tile_dot<dot_float<load_bf16>>;
    case GgmlType::Q4_0: return tile_dot<dot_q4_0>;
    case GgmlType::Q4_1: return tile_dot<dot_q4_1>;
    case GgmlType::Q5_0: return tile_dot<dot_q5_0>;
    case GgmlType::Q5_1: return tile_dot<dot_q5_1>;
    case GgmlType::Q8_0: return tile_dot<dot_q8_0>;
    case GgmlType::IQ4_NL: return tile_dot<dot_iq4_nl>;
    case GgmlType::MXFP4: return tile_dot<dot_mxfp4>;
    case GgmlType::Q2_K: return tile_dot<dot_q2_k>;
    case GgmlType::Q3_K: return tile_dot<dot_q3_k>;
    case GgmlType::Q4_K: return tile_dot<dot_q4_k>;
    case GgmlType::Q5_K: return tile_dot<dot_q5_k>;
    case GgmlType::Q6_K: return tile_dot<dot_q6_k>;
    default: return nullptr;
  }
}

}  // namespace sinkstream
