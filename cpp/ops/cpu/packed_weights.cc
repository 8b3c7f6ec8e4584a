// Packing of weight rows into the interleaved groups of packed_weights.h (portable code, run once
// per matrix at load).
#include "ops/cpu/packed_weights.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"
#include "quant/quant_blocks.h"

namespace sinkstream {

namespace {

// What each packed 32-element type keeps per block: where its fields are in the file's block, and
// which of the optional regions of the group layout it has.
struct Format32 {
  int quant_bytes;    // per block and group: 256 (nibbles) or 512 (Q8_0)
  bool fifth_bits;    // Q5_0, Q5_1
  bool mins;          // Q4_1, Q5_1
  int d_offset;       // byte offsets inside the file's block
  int m_offset;
  int qh_offset;
  int qs_offset;
};

bool format32(GgmlType type, Format32* f) {
  switch (type) {
    case GgmlType::Q4_0: *f = {256, false, false, 0, -1, -1, 2}; return true;
    case GgmlType::IQ4_NL: *f = {256, false, false, 0, -1, -1, 2}; return true;
    case GgmlType::Q4_1: *f = {256, false, true, 0, 2, -1, 4}; return true;
    case GgmlType::Q5_0: *f = {256, true, false, 0, -1, 2, 6}; return true;
    case GgmlType::Q5_1: *f = {256, true, true, 0, 2, 4, 8}; return true;
    case GgmlType::Q8_0: *f = {512, false, false, 0, -1, -1, 2}; return true;
    default: return false;
  }
}

// Bytes one row's block takes in a packed group (packed_weights.h), or 0 for a type without a layout.
int64_t packed_block_bytes(GgmlType type) {
  Format32 f;
  if (format32(type, &f)) return ggml_type_info(type).block_bytes;
  switch (type) {
    case GgmlType::Q4_K: return 148;  // 128 quants, 8 scales, 8 mins, d, dmin
    case GgmlType::Q5_K: return 180;  // Q4_K's and 32 bytes of fifth-bit masks
    case GgmlType::Q6_K: return 210;  // 192 quants, 16 scales, d
    case GgmlType::Q2_K: return 84;   // 64 quants, 16 scale/min bytes, d, dmin
    case GgmlType::Q3_K: return 114;  // 64 quants, 32 bytes of high-bit masks, 16 scales, d
    default: return 0;
  }
}

// Where bit 4 lane + k of mask `mask` of a block's mask region (fifth bits, Q3_K's high bits) is
// kept (packed_weights.h): in the little-endian 64-bit mask itself, or, packed for AVX2 (planes),
// at bit mask % 8 of a byte of bit plane mask / 8.
struct BitPlace {
  int byte, bit;
};
BitPlace mask_bit_place(bool planes, int mask, int lane, int k) {
  if (planes) return {64 * (mask / 8) + 32 * (lane / 8) + 4 * (lane % 8) + k, mask % 8};
  const int bit = 4 * lane + k;
  return {8 * mask + bit / 8, bit % 8};
}
void set_mask_bit(uint8_t* region, bool planes, int mask, int lane, int k) {
  const BitPlace place = mask_bit_place(planes, mask, lane, k);
  region[place.byte] |= (uint8_t)(1u << place.bit);
}
bool mask_bit(const uint8_t* region, bool planes, int mask, int lane, int k) {
  const BitPlace place = mask_bit_place(planes, mask, lane, k);
  return (region[place.byte] >> place.bit) & 1u;
}

// One row (lane `lane` of the group at `group`) of a 32-element type (planes: fifth bits as planes).
void pack_row32(const Format32& f, bool planes, const uint8_t* row, int64_t nb, int64_t block_bytes, int lane,
                uint8_t* group) {
  auto [quants, fifth, scales, mins] = regions32(group, nb, f.quant_bytes, f.fifth_bits);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = row + b * block_bytes;
    const uint8_t* qs = block + f.qs_offset;
    uint8_t* q = quants + b * f.quant_bytes;
    for (int c = 0; c < f.quant_bytes / 64; ++c)
      for (int k = 0; k < 4; ++k)  // Q8_0: + 128 (flip the sign bit)
        q[64 * c + 4 * lane + k] = f.quant_bytes == 512 ? (uint8_t)(qs[4 * c + k] ^ 0x80) : qs[4 * c + k];
    if (f.fifth_bits) {
      uint32_t qh;
      std::memcpy(&qh, block + f.qh_offset, 4);
      // Register j < 4: low nibbles of chunk j (elements 4j + k); j >= 4: high nibbles of chunk
      // j - 4 (elements 16 + 4(j - 4) + k).
      for (int j = 0; j < 8; ++j) {
        const int first_element = j < 4 ? 4 * j : 16 + 4 * (j - 4);
        for (int k = 0; k < 4; ++k)
          if ((qh >> (first_element + k)) & 1u) set_mask_bit(fifth + b * 64, planes, j, lane, k);
      }
    }
    std::memcpy(scales + (b * kPackRows + lane) * 2, block + f.d_offset, 2);
    if (f.mins) std::memcpy(mins + (b * kPackRows + lane) * 2, block + f.m_offset, 2);
  }
}

// One row of Q4_K or Q5_K (the shared fields are at the same offsets; Q5_K adds qh).
void pack_row_q45k(bool q5, bool planes, const uint8_t* row, int64_t nb, int lane, uint8_t* group) {
  auto [quants, fifth, scales, mins, d, dmin] = regions_q45k(group, nb, q5);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = row + b * (q5 ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K));
    const uint8_t* packed_scales = q5 ? reinterpret_cast<const BlockQ5_K*>(block)->scales
                                      : reinterpret_cast<const BlockQ4_K*>(block)->scales;
    const uint8_t* qs =
        q5 ? reinterpret_cast<const BlockQ5_K*>(block)->qs : reinterpret_cast<const BlockQ4_K*>(block)->qs;
    for (int n = 0; n < 32; ++n)
      for (int k = 0; k < 4; ++k) quants[b * 2048 + 64 * n + 4 * lane + k] = qs[4 * n + k];
    if (q5) {
      // Chunk n = 8c + i holds elements 4i .. 4i + 3 of sub-block 2c (low nibbles, mask n) and of
      // sub-block 2c + 1 (high nibbles, mask 32 + n); fifth bit of element l of sub-block j: bit j of qh[l].
      const uint8_t* qh = reinterpret_cast<const BlockQ5_K*>(block)->qh;
      for (int n = 0; n < 32; ++n) {
        const int c = n / 8, first = 4 * (n % 8);
        for (int k = 0; k < 4; ++k) {
          if ((qh[first + k] >> (2 * c)) & 1) set_mask_bit(fifth + b * 512, planes, n, lane, k);
          if ((qh[first + k] >> (2 * c + 1)) & 1) set_mask_bit(fifth + b * 512, planes, 32 + n, lane, k);
        }
      }
    }
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      unpack_k4_scale_min(packed_scales, j, &sc, &m);
      scales[b * 128 + 16 * j + lane] = sc;
      mins[b * 128 + 16 * j + lane] = m;
    }
    std::memcpy(d + b * 32 + 2 * lane, block, 2);
    std::memcpy(dmin + b * 32 + 2 * lane, block + 2, 2);
  }
}

// One row of Q6_K: per sub-block j of 16, three chunks (packed_weights.h).
void pack_row_q6k(const uint8_t* row, int64_t nb, int lane, uint8_t* group) {
  auto [quants, scales, d] = regions_q6k(group, nb);
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ6_K& block = reinterpret_cast<const BlockQ6_K*>(row)[b];
    uint8_t q[kQKK];  // the 6-bit values, 0 .. 63 (quant_blocks.h layout)
    for (int e = 0; e < kQKK; ++e) {
      const int h = e / 128, r = e % 128;
      const int low = (block.ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
      const int high = (block.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
      q[e] = (uint8_t)(low | high << 4);
    }
    for (int j = 0; j < 16; ++j) {
      const uint8_t* v = q + 16 * j;
      uint8_t* chunks = quants + b * 3072 + j * 192 + 4 * lane;
      for (int k = 0; k < 4; ++k) {
        chunks[k] = (uint8_t)((v[k] & 0x0f) | (v[4 + k] & 0x0f) << 4);
        chunks[64 + k] = (uint8_t)((v[8 + k] & 0x0f) | (v[12 + k] & 0x0f) << 4);
        chunks[128 + k] = (uint8_t)((v[k] >> 4) | (v[4 + k] >> 4) << 2 | (v[8 + k] >> 4) << 4 | (v[12 + k] >> 4) << 6);
      }
      scales[b * 256 + (j / 2) * 32 + 2 * lane + j % 2] = (uint8_t)block.scales[j];
    }
    std::memcpy(d + b * 32 + 2 * lane, &block.d, 2);
  }
}

// One row of Q2_K or Q3_K: per sub-block j of 16, one chunk of 2-bit values (bits 2i, 2i + 1 of
// byte k: element 4i + k); Q3_K adds 4 masks per sub-block for the third bit.
void pack_row_q23k(bool q3, bool planes, const uint8_t* row, int64_t nb, int lane, uint8_t* group) {
  auto [quants, masks, scales, d, dmin] = regions_q23k(group, nb, q3);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* qs =
        q3 ? reinterpret_cast<const BlockQ3_K*>(row)[b].qs : reinterpret_cast<const BlockQ2_K*>(row)[b].qs;
    uint8_t low[kQKK], high[kQKK];  // element e's 2-bit value and (Q3_K) third bit
    for (int e = 0; e < kQKK; ++e) {
      const int h = e / 128, s = (e % 128) / 32, l = e % 32;
      low[e] = (uint8_t)((qs[32 * h + l] >> (2 * s)) & 3);
      high[e] = q3 ? (uint8_t)((reinterpret_cast<const BlockQ3_K*>(row)[b].hmask[l] >> (e / 32)) & 1) : 0;
    }
    for (int j = 0; j < 16; ++j) {
      for (int k = 0; k < 4; ++k) {
        uint8_t byte = 0;
        for (int i = 0; i < 4; ++i) byte |= (uint8_t)(low[16 * j + 4 * i + k] << (2 * i));
        quants[b * 1024 + 64 * j + 4 * lane + k] = byte;
        for (int i = 0; i < 4 && q3; ++i)
          if (high[16 * j + 4 * i + k]) set_mask_bit(masks + b * 512, planes, 4 * j + i, lane, k);
      }
      if (q3)  // the signed scales in pairs, as Q6_K's
        scales[b * 256 + (j / 2) * 32 + 2 * lane + j % 2] =
            (uint8_t)(int8_t)q3k_scale(reinterpret_cast<const BlockQ3_K*>(row)[b].scales, j);
      else  // the file's byte: scale in the low nibble, min in the high
        scales[b * 256 + 16 * j + lane] = reinterpret_cast<const BlockQ2_K*>(row)[b].scales[j];
    }
    if (q3) {
      std::memcpy(d + b * 32 + 2 * lane, &reinterpret_cast<const BlockQ3_K*>(row)[b].d, 2);
    } else {
      std::memcpy(d + b * 32 + 2 * lane, &reinterpret_cast<const BlockQ2_K*>(row)[b].d, 2);
      std::memcpy(dmin + b * 32 + 2 * lane, &reinterpret_cast<const BlockQ2_K*>(row)[b].dmin, 2);
    }
  }
}

// The inverses of the pack_row_* functions: the file's blocks of row `lane` of a group.
void unpack_row32(const Format32& f, bool planes, const uint8_t* group, int64_t nb, int64_t block_bytes, int lane,
                  uint8_t* row) {
  auto [quants, fifth, scales, mins] = regions32(group, nb, f.quant_bytes, f.fifth_bits);
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* block = row + b * block_bytes;
    uint8_t* qs = block + f.qs_offset;
    const uint8_t* q = quants + b * f.quant_bytes;
    for (int c = 0; c < f.quant_bytes / 64; ++c)
      for (int k = 0; k < 4; ++k)
        qs[4 * c + k] = f.quant_bytes == 512 ? (uint8_t)(q[64 * c + 4 * lane + k] ^ 0x80) : q[64 * c + 4 * lane + k];
    if (f.fifth_bits) {
      uint32_t qh = 0;
      for (int j = 0; j < 8; ++j) {
        const int first_element = j < 4 ? 4 * j : 16 + 4 * (j - 4);
        for (int k = 0; k < 4; ++k)
          if (mask_bit(fifth + b * 64, planes, j, lane, k)) qh |= 1u << (first_element + k);
      }
      std::memcpy(block + f.qh_offset, &qh, 4);
    }
    std::memcpy(block + f.d_offset, scales + (b * kPackRows + lane) * 2, 2);
    if (f.mins) std::memcpy(block + f.m_offset, mins + (b * kPackRows + lane) * 2, 2);
  }
}

void unpack_row_q45k(bool q5, bool planes, const uint8_t* group, int64_t nb, int lane, uint8_t* row) {
  auto [quants, fifth, scales, mins, d, dmin] = regions_q45k(group, nb, q5);
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* block = row + b * (q5 ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K));
    uint8_t* packed_scales =
        q5 ? reinterpret_cast<BlockQ5_K*>(block)->scales : reinterpret_cast<BlockQ4_K*>(block)->scales;
    uint8_t* qs = q5 ? reinterpret_cast<BlockQ5_K*>(block)->qs : reinterpret_cast<BlockQ4_K*>(block)->qs;
    for (int n = 0; n < 32; ++n)
      for (int k = 0; k < 4; ++k) qs[4 * n + k] = quants[b * 2048 + 64 * n + 4 * lane + k];
    if (q5) {
      uint8_t* qh = reinterpret_cast<BlockQ5_K*>(block)->qh;
      std::memset(qh, 0, kQKK / 8);
      for (int n = 0; n < 32; ++n) {
        const int c = n / 8, first = 4 * (n % 8);
        for (int k = 0; k < 4; ++k) {
          if (mask_bit(fifth + b * 512, planes, n, lane, k)) qh[first + k] |= (uint8_t)(1u << (2 * c));
          if (mask_bit(fifth + b * 512, planes, 32 + n, lane, k)) qh[first + k] |= (uint8_t)(1u << (2 * c + 1));
        }
      }
    }
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; ++j) sc[j] = scales[b * 128 + 16 * j + lane], m[j] = mins[b * 128 + 16 * j + lane];
    for (int j = 0; j < 4; ++j) {  // unpack_k4_scale_min's layout (quant_blocks.h)
      packed_scales[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
      packed_scales[j + 4] = (uint8_t)(m[j] | (m[j + 4] >> 4) << 6);
      packed_scales[j + 8] = (uint8_t)((sc[j + 4] & 0x0f) | (m[j + 4] & 0x0f) << 4);
    }
    std::memcpy(block, d + b * 32 + 2 * lane, 2);
    std::memcpy(block + 2, dmin + b * 32 + 2 * lane, 2);
  }
}

void unpack_row_q6k(const uint8_t* group, int64_t nb, int lane, uint8_t* row) {
  auto [quants, scales, d] = regions_q6k(group, nb);
  for (int64_t b = 0; b < nb; ++b) {
    BlockQ6_K& block = reinterpret_cast<BlockQ6_K*>(row)[b];
    std::memset(&block, 0, sizeof(block));
    for (int j = 0; j < 16; ++j) {
      const uint8_t* chunks = quants + b * 3072 + j * 192 + 4 * lane;
      for (int k = 0; k < 4; ++k) {
        const int values[4] = {chunks[k] & 0x0f, chunks[k] >> 4, chunks[64 + k] & 0x0f, chunks[64 + k] >> 4};
        for (int i = 0; i < 4; ++i) {
          const int e = 16 * j + 4 * i + k, h = e / 128, r = e % 128;
          const int value = values[i] | ((chunks[128 + k] >> (2 * i)) & 3) << 4;
          block.ql[64 * h + r % 64] |= (uint8_t)((value & 0x0f) << (4 * (r / 64)));
          block.qh[32 * h + r % 32] |= (uint8_t)((value >> 4) << (2 * (r / 32)));
        }
      }
      block.scales[j] = (int8_t)scales[b * 256 + (j / 2) * 32 + 2 * lane + j % 2];
    }
    std::memcpy(&block.d, d + b * 32 + 2 * lane, 2);
  }
}

void unpack_row_q23k(bool q3, bool planes, const uint8_t* group, int64_t nb, int lane, uint8_t* row) {
  auto [quants, masks, scales, d, dmin] = regions_q23k(group, nb, q3);
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* block = row + b * (q3 ? sizeof(BlockQ3_K) : sizeof(BlockQ2_K));
    std::memset(block, 0, q3 ? sizeof(BlockQ3_K) : sizeof(BlockQ2_K));
    uint8_t* qs = q3 ? reinterpret_cast<BlockQ3_K*>(block)->qs : reinterpret_cast<BlockQ2_K*>(block)->qs;
    for (int j = 0; j < 16; ++j) {
      for (int k = 0; k < 4; ++k) {
        const uint8_t byte = quants[b * 1024 + 64 * j + 4 * lane + k];
        for (int i = 0; i < 4; ++i) {
          const int e = 16 * j + 4 * i + k, h = e / 128, s = (e % 128) / 32, l = e % 32;
          qs[32 * h + l] |= (uint8_t)(((byte >> (2 * i)) & 3) << (2 * s));
          if (q3 && mask_bit(masks + b * 512, planes, 4 * j + i, lane, k))
            reinterpret_cast<BlockQ3_K*>(block)->hmask[l] |= (uint8_t)(1u << (e / 32));
        }
      }
      if (q3) {  // q3k_scale's layout (quant_blocks.h), of the scale + 32 (0 .. 63)
        const int u = (int8_t)scales[b * 256 + (j / 2) * 32 + 2 * lane + j % 2] + 32;
        uint8_t* packed = reinterpret_cast<BlockQ3_K*>(block)->scales;
        packed[j % 8] |= (uint8_t)((u & 0x0f) << (4 * (j / 8)));
        packed[8 + (j & 3)] |= (uint8_t)((u >> 4) << (2 * (j >> 2)));
      } else {
        reinterpret_cast<BlockQ2_K*>(block)->scales[j] = scales[b * 256 + 16 * j + lane];
      }
    }
    if (q3) {
      std::memcpy(&reinterpret_cast<BlockQ3_K*>(block)->d, d + b * 32 + 2 * lane, 2);
    } else {
      std::memcpy(&reinterpret_cast<BlockQ2_K*>(block)->d, d + b * 32 + 2 * lane, 2);
      std::memcpy(&reinterpret_cast<BlockQ2_K*>(block)->dmin, dmin + b * 32 + 2 * lane, 2);
    }
  }
}

}  // namespace

void unpack_row(const WeightMatrix& w, int64_t row, uint8_t* out) {
  SS_CHECK_ARG(w.packed != nullptr && row >= 0 && row < w.rows, "unpack_row: row ", row, " of ", w.name,
               w.packed == nullptr ? " (not packed)" : "");
  const GgmlTypeInfo& info = ggml_type_info(w.type);
  const int64_t nb = w.cols / info.block_size;
  const uint8_t* group = w.packed + (row / kPackRows) * packed_group_bytes(w);
  const int lane = (int)(row % kPackRows);
  const bool planes = mask_bit_planes(w.packed_isa);
  Format32 f32;
  if (format32(w.type, &f32))
    unpack_row32(f32, planes, group, nb, info.block_bytes, lane, out);
  else if (w.type == GgmlType::Q6_K)
    unpack_row_q6k(group, nb, lane, out);
  else if (w.type == GgmlType::Q2_K || w.type == GgmlType::Q3_K)
    unpack_row_q23k(w.type == GgmlType::Q3_K, planes, group, nb, lane, out);
  else
    unpack_row_q45k(w.type == GgmlType::Q5_K, planes, group, nb, lane, out);
}

PackedTileFn packed_tile_kernel(GgmlType type, Isa isa) {
  if (packed_block_bytes(type) == 0) return nullptr;
  if (isa == Isa::Avx512) return avx512_packed_tile(type);
  if (isa == Isa::Avx2) return avx2_packed_tile(type);
  // Not at I8mm: its per-row SMMLA kernels do twice the products per instruction, and no machine
  // was at hand to say which is faster there.
  if (isa == Isa::Dotprod) return dotprod_packed_tile(type);
  return nullptr;
}

int64_t packed_group_bytes(const WeightMatrix& w) {
  return kPackRows * (w.cols / ggml_type_info(w.type).block_size) * packed_block_bytes(w.type);
}

int64_t packed_bytes(const WeightMatrix& w) {
  const int64_t groups = (w.rows + kPackRows - 1) / kPackRows;
  return groups * packed_group_bytes(w);
}

void pack_weight(const WeightMatrix& w, Isa isa, uint8_t* out) {
  SS_CHECK_ARG(packed_block_bytes(w.type) != 0, "weight ", w.name, ": no packed layout for ", ggml_type_name(w.type));
  const GgmlTypeInfo& info = ggml_type_info(w.type);
  const int64_t nb = w.cols / info.block_size;
  const int64_t group_bytes = packed_group_bytes(w);
  const int64_t groups = (w.rows + kPackRows - 1) / kPackRows;
  std::memset(out, 0, (size_t)(groups * group_bytes));
  Format32 f32;
  const bool is32 = format32(w.type, &f32), planes = mask_bit_planes(isa);
  for (int64_t g = 0; g < groups; ++g) {
    uint8_t* group = out + g * group_bytes;
    for (int lane = 0; lane < kPackRows && g * kPackRows + lane < w.rows; ++lane) {
      const uint8_t* row = w.data + (g * kPackRows + lane) * w.row_bytes;
      if (is32)
        pack_row32(f32, planes, row, nb, info.block_bytes, lane, group);
      else if (w.type == GgmlType::Q6_K)
        pack_row_q6k(row, nb, lane, group);
      else if (w.type == GgmlType::Q2_K || w.type == GgmlType::Q3_K)
        pack_row_q23k(w.type == GgmlType::Q3_K, planes, row, nb, lane, group);
      else
        pack_row_q45k(w.type == GgmlType::Q5_K, planes, row, nb, lane, group);
    }
  }
}

void PackedWeightStore::FreeAligned::operator()(uint8_t* p) const { std::free(p); }

void PackedWeightStore::pack(const std::vector<WeightMatrix*>& weights, Isa isa,
                             const std::function<void(const uint8_t* data, int64_t bytes)>& done) {
  // One allocation for all of them, each matrix on a cache line: 64-byte chunks stay aligned.
  std::vector<WeightMatrix*> packable;
  std::vector<int64_t> offsets;
  int64_t total = 0;
  for (WeightMatrix* w : weights) {
    if (w->data == nullptr || w->cols % ggml_type_info(w->type).block_size != 0 ||
        packed_tile_kernel(w->type, isa) == nullptr)
      continue;
    packable.push_back(w);
    offsets.push_back(total);
    total += (packed_bytes(*w) + 63) / 64 * 64;
  }
  if (packable.empty()) return;
  // Aligned to 2 MiB and, where the kernel offers them on request (transparent huge pages in
  // "madvise" mode), backed by huge pages: decode streams every matrix from DRAM, and with 4 KiB
  // pages each page costs a TLB miss and stops the hardware prefetchers at its end.
  const int64_t alignment = int64_t{2} << 20;
  const int64_t size = (total + alignment - 1) / alignment * alignment;
  uint8_t* arena = static_cast<uint8_t*>(std::aligned_alloc((size_t)alignment, (size_t)size));
  if (arena == nullptr) throw std::bad_alloc();
  arenas_.emplace_back(arena);
#ifdef MADV_HUGEPAGE
  madvise(arena, (size_t)size, MADV_HUGEPAGE);  // a hint: fine if refused
#endif
  for (size_t i = 0; i < packable.size(); ++i) {
    WeightMatrix& w = *packable[i];
    const int64_t group_bytes = packed_group_bytes(w);
    // Slices of whole groups pack to exactly their groups of the whole matrix.
    for (int64_t first = 0; first < w.rows; first += kPackSliceRows) {
      WeightMatrix slice = w;
      slice.data = w.data + first * w.row_bytes;
      slice.rows = std::min(kPackSliceRows, w.rows - first);
      pack_weight(slice, isa, arena + offsets[i] + first / kPackRows * group_bytes);
      if (done) done(slice.data, slice.rows * slice.row_bytes);
    }
    w.packed = arena + offsets[i];
    w.packed_isa = isa;
  }
  bytes_ += total;
}

}  // namespace sinkstream
