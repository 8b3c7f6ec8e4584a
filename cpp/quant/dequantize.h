// Dequantization of GGUF tensor data to float32, bit-exact with the reference (gguf-py / ggml).
#pragma once
#include <cstdint>

#include "quant/quant_types.h"

namespace sinkstream {

// Writes n floats decoded from src (n / block_size blocks of `type`) to dst.
// Throws ArgumentError if the type cannot be dequantized or n is not a multiple of the block size.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

}  // namespace sinkstream
