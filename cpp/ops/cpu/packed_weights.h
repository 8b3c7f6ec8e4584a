// Weights regrouped at load for the interleaved-row matmul kernels (packed_avx512.cc, packed_avx2.cc,
// packed_dotprod.cc).
//
// The per-row kernels (vec_dot.h) take a weight row and an activation row and reduce 32-element
// blocks to one number with horizontal sums and per-block scale shuffles: about nine vector
// operations per 64 multiply-adds per token. Here the rows of a group of kPackRows = 16 rows are
// interleaved so that one 512-bit register holds four consecutive weights of each of the 16 rows:
// one VPDPBUSD then adds four products into each row's own int32 lane, against four activation
// bytes broadcast from memory. A block's 16 row sums come out in one register with no horizontal
// work, and its scales are 16 halves loaded at once: 8 VPDPBUSD and 4 float operations per block
// of 32 per token (the K-quants add one integer multiply by the sub-block scale). The same layout
// serves decode (1 token; the group is one contiguous stream of memory) and prefill / batched
// steps (tiles of tokens share each unpacked register).
//
// Group layout, for a group of 16 rows (row r = 16 g + lane) of nb blocks, in this order:
//   quants  nb * kQuantBytes: block b's quants, in 64-byte chunks; chunk c holds 4 bytes of each
//           row, row-major (byte 4 lane + k of the chunk is byte 4c + k of that row's block):
//             nibble types (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL): 4 chunks of the 16 qs bytes; the low
//             nibbles of chunk c are elements 4c..4c+3, the high nibbles 16+4c..16+4c+3
//             Q8_0: 8 chunks of the 32 quants, each stored + 128 (an unsigned byte for VPDPBUSD;
//             the 128 * sum(activations) it adds is taken back with the offset term below)
//   fifth   (Q5_0, Q5_1) nb * 64: per block 8 little-endian uint64 bit masks, one per register of
//           unpacked nibbles (low nibbles of chunks 0..3, then high nibbles of chunks 0..3): bit
//           4 lane + k is the fifth bit of that register's byte 4 lane + k
//   scales  nb * 16 halves: block b's d of the 16 rows
//   mins    (Q4_1, Q5_1) nb * 16 halves: block b's m
// K-quants (256-element super-blocks, Q8K activations), per group and super-block:
//   Q4_K, Q5_K: quants nb * 2048: 32 chunks; chunk n is qs bytes 4n .. 4n + 3 of each row: low
//           nibbles elements 4(n % 8) .. + 3 of sub-block 2 (n / 8), high nibbles the same of sub-block
//           2 (n / 8) + 1; fifth (Q5_K) nb * 512: 64 masks as above, mask n for the low nibbles of
//           chunk n, 32 + n for its high nibbles; scales nb * 128 and mins nb * 128: byte 16 j + lane
//           is sub-block j's 6-bit scale (min), unpacked; d and dmin: nb * 16 halves each
//   Q6_K:   quants nb * 3072: per sub-block j of 16, three chunks: L0 (low nibbles: elements k, high
//           nibbles: 4 + k, of the 6-bit value's low 4 bits), L1 (8 + k, 12 + k), H (bits 2i, 2i + 1:
//           the top 2 bits of element 4i + k); scales nb * 256: the int8 scales in pairs, bytes
//           32 p + 2 lane + (0, 1) for sub-blocks 2p, 2p + 1; d nb * 16 halves
//   Q2_K, Q3_K: quants nb * 1024: per sub-block j of 16, one chunk, bits 2i, 2i + 1 of byte k the
//           2-bit value of element 4i + k; masks (Q3_K) nb * 512: per sub-block 4 masks, mask i the
//           third bit of elements 4i + k; scales nb * 256: Q2_K the file's scale/min bytes, byte
//           16 j + lane; Q3_K the signed scales in pairs as Q6_K's; d (and Q2_K's dmin) nb * 16 halves
// Masks at Isa::Avx2 and Isa::Dotprod (mask_bit_planes): AVX2 and NEON have no mask registers, and
// turning a 32-bit mask into bytes costs a broadcast, a shuffle, a compare and two logic operations
// per register (AVX2). Packed for those levels, a mask region (Q5 fifth bits, Q3_K high bits)
// holds the same bits as planes: the masks in eights, transposed. Plane p (64 bytes: rows 0-7, then
// 8-15) holds masks 8p .. 8p + 7; bit r of its byte 32 half + 4 l + k is bit 4 (8 half + l) + k of
// mask 8p + r. A register's bits then come from one shift of its plane and a mask.
// Rows past the matrix's last row (the last group's padding) are zero. A group is 16 rows of
// packed_block_bytes each per block: the file's block size for the 32-element types, Q2_K and Q6_K,
// 148 for Q4_K and 180 for Q5_K (+ 4 bytes for unpacked scales), 114 for Q3_K (+ 4).
//
// Results: per row and token, dot = sum over blocks, in order, of fma(d_w * d_x, isum_b) into one
// float accumulator and fma(e_w, ds_x) into a second (e_w: the min, or d_w times the offset of the
// type), then their sum. For the K-quants isum_b is the super-block's integer total (each
// sub-block's exact sum times its integer scale; the mins' and Q6_K's offset term likewise from
// the activation block sums), one float step per super-block. Integer sums are exact, so a token's
// result does not depend on the tile of tokens it was computed with, nor on the thread split
// (groups are never divided): evaluating a prompt at once, token by token, or batched with other
// sessions gives the same bits. (Across ISA levels results differ in float order, as before.)
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "ops/cpu/cpu_features.h"
#include "ops/ops.h"
#include "quant/quant_types.h"

namespace sinkstream {

constexpr int kPackRows = 16;

// Where each region of a packed group of nb blocks starts (the layout above), one function per
// layout family: packing, unpacking and the kernels all take the layout from here. Byte is uint8_t
// when packing, const uint8_t otherwise.
template <typename Byte>
struct Regions32 {
  Byte *quants, *fifth, *scales, *mins;
};
template <typename Byte>
inline Regions32<Byte> regions32(Byte* group, int64_t nb, int quant_bytes, bool fifth_bits) {
  Byte* fifth = group + nb * quant_bytes;
  Byte* scales = fifth + (fifth_bits ? nb * 64 : 0);
  return {group, fifth, scales, scales + nb * kPackRows * 2};
}
template <typename Byte>
struct RegionsQ45K {
  Byte *quants, *fifth, *scales, *mins, *d, *dmin;
};
template <typename Byte>
inline RegionsQ45K<Byte> regions_q45k(Byte* group, int64_t nb, bool fifth_bits) {
  Byte* fifth = group + nb * 2048;
  Byte* scales = fifth + (fifth_bits ? nb * 512 : 0);
  Byte* mins = scales + nb * 128;
  Byte* d = mins + nb * 128;
  return {group, fifth, scales, mins, d, d + nb * 32};
}
template <typename Byte>
struct RegionsQ6K {
  Byte *quants, *scales, *d;
};
template <typename Byte>
inline RegionsQ6K<Byte> regions_q6k(Byte* group, int64_t nb) {
  Byte* scales = group + nb * 3072;
  return {group, scales, scales + nb * 256};
}
template <typename Byte>
struct RegionsQ23K {
  Byte *quants, *masks, *scales, *d, *dmin;
};
template <typename Byte>
inline RegionsQ23K<Byte> regions_q23k(Byte* group, int64_t nb, bool q3) {
  Byte* masks = group + nb * 1024;
  Byte* scales = masks + (q3 ? nb * 512 : 0);
  Byte* d = scales + nb * 256;
  return {group, masks, scales, d, d + nb * 32};
}

// A tile of `n_groups` consecutive groups (group k at w + k * group_bytes) against nt tokens (1 ..
// kPackTokenTile) of Q8A activation rows (row t at x + t * x_stride):
//   y[t * y_stride + 16 k + lane] = dot(row 16 k + lane, token t)   for 16 k + lane < rows_left
// n_blocks: 32-element blocks per row; rows_left: rows of the matrix from this tile's first row on
// (the last group may be partial: its padding lanes are not stored).
using PackedTileFn = void (*)(int64_t n_blocks, const uint8_t* w, int64_t group_bytes, int n_groups, int64_t rows_left,
                              const uint8_t* x, int64_t x_stride, int nt, float* y, int64_t y_stride);
constexpr int kPackTokenTile = 8;

// The kernel for packed weights of `type` at level `isa`, or nullptr when that level has none (the
// weight is then not packed and the per-row kernels read the file's rows).
PackedTileFn packed_tile_kernel(GgmlType type, Isa isa);
PackedTileFn avx512_packed_tile(GgmlType type);  // nullptr when not compiled for x86-64
PackedTileFn avx2_packed_tile(GgmlType type);    // nullptr when not compiled for x86-64
PackedTileFn dotprod_packed_tile(GgmlType type);  // AArch64 SDOT; nullptr elsewhere

// Whether weights packed for `isa` hold their masks as bit planes (above).
constexpr bool mask_bit_planes(Isa isa) { return isa == Isa::Avx2 || isa == Isa::Dotprod; }

// Bytes of one group of w packed, and of all of w (its rows rounded up to a multiple of kPackRows).
int64_t packed_group_bytes(const WeightMatrix& w);
int64_t packed_bytes(const WeightMatrix& w);
// Writes the layout above for w (type with packed kernels) into out (packed_bytes(w)), laid out
// for the kernels of `isa` (any level: packing runs on every CPU).
void pack_weight(const WeightMatrix& w, Isa isa, uint8_t* out);

// The file's bytes of row `row` of packed w (row_bytes of them; w.packed laid out for
// w.packed_isa): the exact inverse of pack_weight, so get_row can read a tied embedding from its
// packed head instead of the file's pages.
void unpack_row(const WeightMatrix& w, int64_t row, uint8_t* out);

// Packed copies of weights, kept alive as long as the WeightMatrix values that point at them.
class PackedWeightStore {
 public:
  // Packs, into one allocation, each weight whose type has kernels at `isa` (sets its `packed` and
  // `packed_isa`); leaves the others as they are. Large matrices go kPackSliceRows rows at a time,
  // and done (if set) is called with each slice's source bytes once they are packed (to release them).
  void pack(const std::vector<WeightMatrix*>& weights, Isa isa,
            const std::function<void(const uint8_t* data, int64_t bytes)>& done = {});
  static constexpr int64_t kPackSliceRows = 64 * kPackRows;
  int64_t bytes() const { return bytes_; }

 private:
  struct FreeAligned {
    void operator()(uint8_t* p) const;
  };
  std::vector<std::unique_ptr<uint8_t, FreeAligned>> arenas_;
  int64_t bytes_ = 0;
};

}  // namespace sinkstream
