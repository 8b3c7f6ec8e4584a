// Packing of weight rows into the interleaved groups of packed_weights.h (portable code, run once
// per matrix at load).
#include "ops/cpu/packed_weights.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"
#include "quant/quant_blocks.h"

namespace sinkstream {

namespace {

// What each packed type keeps per block: where its fields are in the file's block, and which of
// the optional regions of the group layout it has.
struct PackedFormat {
  int quant_bytes;    // per block and group: 256 (nibbles) or 512 (Q8_0)
  bool fifth_bits;    // Q5_0, Q5_1
  bool mins;          // Q4_1, Q5_1
  int d_offset;       // byte offsets inside the file's block
  int m_offset;
  int qh_offset;
  int qs_offset;
};

bool packed_format(GgmlType type, PackedFormat* f) {
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

}  // namespace

PackedTileFn packed_tile_kernel(GgmlType type, Isa isa) {
  PackedFormat f;
  if (!packed_format(type, &f)) return nullptr;
  return isa == Isa::Avx512 ? avx512_packed_tile(type) : nullptr;
}

int64_t packed_bytes(const WeightMatrix& w) {
  const int64_t groups = (w.rows + kPackRows - 1) / kPackRows;
  return groups * kPackRows * w.row_bytes;
}

void pack_weight(const WeightMatrix& w, uint8_t* out) {
  PackedFormat f;
  SS_CHECK_ARG(packed_format(w.type, &f), "weight ", w.name, ": no packed layout for ", ggml_type_name(w.type));
  const GgmlTypeInfo& info = ggml_type_info(w.type);
  const int64_t nb = w.cols / kQK;
  const int64_t group_bytes = kPackRows * w.row_bytes;
  const int64_t groups = (w.rows + kPackRows - 1) / kPackRows;
  std::memset(out, 0, (size_t)(groups * group_bytes));
  for (int64_t g = 0; g < groups; ++g) {
    uint8_t* quants = out + g * group_bytes;
    uint8_t* fifth = quants + nb * f.quant_bytes;
    uint8_t* scales = fifth + (f.fifth_bits ? nb * 64 : 0);
    uint8_t* mins = scales + nb * kPackRows * 2;
    for (int lane = 0; lane < kPackRows && g * kPackRows + lane < w.rows; ++lane) {
      const uint8_t* row = w.data + (g * kPackRows + lane) * w.row_bytes;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* block = row + b * info.block_bytes;
        const uint8_t* qs = block + f.qs_offset;
        uint8_t* q = quants + b * f.quant_bytes;
        for (int c = 0; c < f.quant_bytes / 64; ++c) {
          for (int k = 0; k < 4; ++k) {
            const uint8_t byte = qs[4 * c + k];
            q[64 * c + 4 * lane + k] = f.quant_bytes == 512 ? (uint8_t)(byte ^ 0x80) : byte;  // Q8_0: + 128
          }
        }
        if (f.fifth_bits) {
          uint32_t qh;
          std::memcpy(&qh, block + f.qh_offset, 4);
          // Register j < 4: low nibbles of chunk j (elements 4j + k); j >= 4: high nibbles of chunk
          // j - 4 (elements 16 + 4(j - 4) + k).
          for (int j = 0; j < 8; ++j) {
            const int first_element = j < 4 ? 4 * j : 16 + 4 * (j - 4);
            uint64_t mask;
            std::memcpy(&mask, fifth + b * 64 + 8 * j, 8);
            for (int k = 0; k < 4; ++k)
              if ((qh >> (first_element + k)) & 1u) mask |= uint64_t{1} << (4 * lane + k);
            std::memcpy(fifth + b * 64 + 8 * j, &mask, 8);
          }
        }
        std::memcpy(scales + (b * kPackRows + lane) * 2, block + f.d_offset, 2);
        if (f.mins) std::memcpy(mins + (b * kPackRows + lane) * 2, block + f.m_offset, 2);
      }
    }
  }
}

void PackedWeightStore::FreeAligned::operator()(uint8_t* p) const { std::free(p); }

void PackedWeightStore::pack(WeightMatrix& w, Isa isa) {
  if (w.data == nullptr || w.cols % kQK != 0 || packed_tile_kernel(w.type, isa) == nullptr) return;
  const int64_t bytes = packed_bytes(w);
  // 64-byte aligned: every chunk of quants is one cache line (aligned_alloc wants a multiple of it).
  uint8_t* p = static_cast<uint8_t*>(std::aligned_alloc(64, (size_t)((bytes + 63) / 64 * 64)));
  if (p == nullptr) throw std::bad_alloc();
  buffers_.emplace_back(p);
  pack_weight(w, p);
  w.packed = p;
  bytes_ += bytes;
}

}  // namespace sinkstream
