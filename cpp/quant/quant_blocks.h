// Byte layouts of the GGML quantized blocks stored in GGUF files, one struct per type.
//
// Layouts are the GGUF spec's (ggml's ggml-common.h block_* structs): every field is a byte array or
// a 16-bit half, so the structs have alignment 2 (or 1) and no padding; the static_asserts pin the
// sizes to the spec's bytes per block (quant_types.cc). Half-precision fields are kept as raw
// uint16_t bits (decode with fp16_to_f32). Reading the mmap through these structs is fine: tensor
// data in a GGUF file is aligned to at least 32 bytes (general.alignment) and every block size is a
// multiple of 2 bytes or made of bytes only.
//
// Value of element i of a block (what dequantize.cc computes, in gguf-py's operation order):
//   Q4_0   d * (q - 8)                    q: 4 bits, low nibbles are elements 0..15, high 16..31
//   Q4_1   d * q + m                      same nibble order
//   Q5_0   d * (q - 16)                   q = nibble | (bit i of qh) << 4
//   Q5_1   d * q + m
//   Q8_0   d * q                          q: int8
//   Q2_K   (d * sc) * q - (dmin * mn)     16 sub-blocks of 16, 4-bit scale sc / min mn, q: 2 bits
//   Q3_K   (d * (sc - 32)) * q            16 sub-blocks of 16, 6-bit scales, q = 2 bits - 4*(1 - hbit)
//   Q4_K   (d * sc) * q - (dmin * mn)     8 sub-blocks of 32, 6-bit scales/mins, q: 4 bits
//   Q5_K   (d * sc) * q - (dmin * mn)     as Q4_K with a 5th bit from qh
//   Q6_K   (d * sc) * (q - 32)            16 sub-blocks of 16, int8 scales, q: 4 low + 2 high bits
//   IQ4_NL d * kIq4nlValues[q]            q: 4 bits, a non-linear codebook
//   MXFP4  e8m0_half(e) * kMxfp4Values[q] q: 4-bit E2M1 code, values doubled to integers, so the
//                                         E8M0 scale 2^(e-127) is halved (OCP MX spec v1.0, 5.3)
#pragma once
#include <cstdint>

#include "core/fp16.h"

namespace sinkstream {

constexpr int kQK = 32;    // elements per block of the "legacy" quants (Q4_0 ... Q8_0, IQ4_NL)
constexpr int kQKK = 256;  // elements per super-block of the K-quants

struct BlockQ4_0 {
  uint16_t d;           // scale (half)
  uint8_t qs[kQK / 2];  // element j in the low nibble of qs[j], element j + 16 in the high nibble
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 18 bytes");

struct BlockQ4_1 {
  uint16_t d;           // scale (half)
  uint16_t m;           // minimum (half)
  uint8_t qs[kQK / 2];  // nibbles as in Q4_0
};
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block is 20 bytes");

struct BlockQ5_0 {
  uint16_t d;           // scale (half)
  uint8_t qh[4];        // fifth bits: bit j (little-endian uint32) belongs to element j
  uint8_t qs[kQK / 2];  // low four bits, nibbles as in Q4_0
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block is 22 bytes");

struct BlockQ5_1 {
  uint16_t d;           // scale (half)
  uint16_t m;           // minimum (half)
  uint8_t qh[4];        // fifth bits as in Q5_0
  uint8_t qs[kQK / 2];  // low four bits as in Q5_0
};
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block is 24 bytes");

struct BlockQ8_0 {
  uint16_t d;       // scale (half)
  int8_t qs[kQK];   // quants
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");

struct BlockIQ4_NL {
  uint16_t d;           // scale (half)
  uint8_t qs[kQK / 2];  // codebook indices, nibbles as in Q4_0
};
static_assert(sizeof(BlockIQ4_NL) == 18, "IQ4_NL block is 18 bytes");

// IQ4_NL's codebook (GGUF spec / ggml kvalues_iq4nl): a non-uniform 4-bit grid.
constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

// MXFP4 (OCP Microscaling Formats v1.0, section 5: 32 elements sharing one E8M0 scale; element
// format E2M1, section 5.3.3): one scale byte, then 16 bytes of 4-bit codes, nibbles as in Q4_0.
struct BlockMXFP4 {
  uint8_t e;            // E8M0 shared exponent: scale 2^(e - 127)
  uint8_t qs[kQK / 2];  // E2M1 codes, element j in the low nibble of qs[j], j + 16 in the high
};
static_assert(sizeof(BlockMXFP4) == 17, "MXFP4 block is 17 bytes");

// The 16 E2M1 values {0, 0.5, 1, 1.5, 2, 3, 4, 6} and their negatives, doubled (gguf-py's
// MXFP4.kvalues), so they are integers an int8 dot product can use; the scale is halved instead.
constexpr int8_t kMxfp4Values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// Half of the E8M0 scale 2^(e-127), as a float32 bit pattern: 2^(e-128). e = 0 and 1 give the
// subnormals 2^-128 and 2^-127; e = 255 (NaN in the MX spec) gives 2^127, as gguf-py and ggml do.
inline float e8m0_to_f32_half(uint8_t e) {
  const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// The float scale of a 4-bit codebook block (IQ4_NL: a half; MXFP4: the halved E8M0 scale): kernels
// and dequantizers are written once for both (the values: kIq4nlValues, kMxfp4Values).
inline float codebook_scale(const BlockIQ4_NL& b) { return fp16_to_f32(b.d); }
inline float codebook_scale(const BlockMXFP4& b) { return e8m0_to_f32_half(b.e); }

// ---- K-quants: 256-element super-blocks with quantized per-sub-block scales -------------------

struct BlockQ2_K {
  uint8_t scales[kQKK / 16];  // sub-block j (16 elements): scale in the low nibble, min in the high
  uint8_t qs[kQKK / 4];       // 2-bit quants: element 128*h + 32*s + l is bits 2s..2s+1 of qs[32*h + l]
  uint16_t d;                 // super-block scale of the scales (half)
  uint16_t dmin;              // super-block scale of the mins (half)
};
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block is 84 bytes");

struct BlockQ3_K {
  uint8_t hmask[kQKK / 8];  // high bits: element 32*b + l is bit b of hmask[l]; a CLEAR bit subtracts 4
  uint8_t qs[kQKK / 4];     // low 2 bits, ordered as Q2_K's qs
  uint8_t scales[12];       // 16 6-bit scales (offset by 32): low 4 bits in bytes 0..7, high 2 in 8..11
  uint16_t d;               // super-block scale (half)
};
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block is 110 bytes");

// Q4_K and Q5_K pack 8 6-bit scales and 8 6-bit mins in 12 bytes (see unpack_k4_scale_min).
constexpr int kKScaleBytes = 12;

struct BlockQ4_K {
  uint16_t d;                    // super-block scale of the scales (half)
  uint16_t dmin;                 // super-block scale of the mins (half)
  uint8_t scales[kKScaleBytes];  // 6-bit scales and mins of the 8 sub-blocks of 32
  uint8_t qs[kQKK / 2];          // element 64*c + 32*s + l is nibble s of qs[32*c + l]
};
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block is 144 bytes");

struct BlockQ5_K {
  uint16_t d;                    // super-block scale of the scales (half)
  uint16_t dmin;                 // super-block scale of the mins (half)
  uint8_t scales[kKScaleBytes];  // as in Q4_K
  uint8_t qh[kQKK / 8];          // fifth bits: element 32*j + l is bit j of qh[l]
  uint8_t qs[kQKK / 2];          // low four bits, ordered as Q4_K's qs
};
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block is 176 bytes");

struct BlockQ6_K {
  uint8_t ql[kQKK / 2];     // low 4 bits: element 128*h + 64*s + k is nibble s of ql[64*h + k]
  uint8_t qh[kQKK / 4];     // high 2 bits: element 128*h + 32*s + l is bits 2s..2s+1 of qh[32*h + l]
  int8_t scales[kQKK / 16]; // signed 8-bit scale per sub-block of 16
  uint16_t d;               // super-block scale (half)
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block is 210 bytes");

struct BlockQ8_K {
  float d;                  // scale (float32, unlike the weight blocks)
  int8_t qs[kQKK];          // quants
  int16_t bsums[kQKK / 16]; // sum of each group of 16 quants
};
static_assert(sizeof(BlockQ8_K) == 292, "Q8_K block is 292 bytes");

// Scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block. Bytes 0..3 hold scales 0..3 in
// their low 6 bits, bytes 4..7 mins 0..3; for j >= 4 the low 4 bits come from byte 8 + (j - 4)
// (scale: low nibble, min: high nibble) and the top 2 bits from the spare top bits of bytes j - 4
// (scale) and j (min).
inline void unpack_k4_scale_min(const uint8_t* scales, int j, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = scales[j] & 63;
    *min = scales[j + 4] & 63;
  } else {
    *scale = (uint8_t)((scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4));
    *min = (uint8_t)((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// Scale of sub-block j (0..15) of a Q3_K super-block, already offset: range -32 .. 31.
inline int q3k_scale(const uint8_t* scales, int j) {
  const int low = j < 8 ? (scales[j] & 0x0f) : (scales[j - 8] >> 4);
  const int high = (scales[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
  return (low | (high << 4)) - 32;
}

}  // namespace sinkstream
