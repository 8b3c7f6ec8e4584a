// GGML tensor types as stored in GGUF files: ids, block sizes and bytes per block.
// Ids and sizes are the GGUF spec's (ggml's `ggml_type`); the block layouts live in quant_blocks.h.
#pragma once
#include <cstdint>

namespace sinkstream {

enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct GgmlTypeInfo {
  GgmlType type;
  const char* name;
  int64_t block_size;   // elements per block
  int64_t block_bytes;  // bytes per block
  bool can_dequantize;  // sinkstream can turn it into float32 (and run models with it)
};

// nullptr for an id the GGUF spec does not define (or that we do not know the layout of).
const GgmlTypeInfo* ggml_type_info(uint32_t type_id);
const GgmlTypeInfo& ggml_type_info(GgmlType type);
const char* ggml_type_name(GgmlType type);

// Bytes of a row of n elements; n must be a multiple of the block size (checked by callers).
inline int64_t ggml_row_bytes(const GgmlTypeInfo& info, int64_t n) {
  return n / info.block_size * info.block_bytes;
}

}  // namespace sinkstream
