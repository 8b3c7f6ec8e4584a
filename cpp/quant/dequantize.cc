// First cut: the types the default model uses. (The quant work extends this to every listed type.)
#include "quant/dequantize.h"

#include <cstring>

#include "core/error.h"
#include "core/fp16.h"

namespace sinkstream {

namespace {
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[16]; };
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block is 20 bytes");
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");
}  // namespace

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  const GgmlTypeInfo& info = ggml_type_info(type);
  SS_CHECK_ARG(info.can_dequantize, "cannot dequantize tensor type ", info.name);
  SS_CHECK_ARG(n % info.block_size == 0, "row of ", n, " elements is not a multiple of the ", info.name,
               " block size ", info.block_size);
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
    case GgmlType::Q4_1: {
      const BlockQ4_1* b = static_cast<const BlockQ4_1*>(src);
      for (int64_t i = 0; i < nb; ++i, dst += 32) {
        const float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
        for (int j = 0; j < 16; ++j) {
          dst[j] = d * (float)(b[i].qs[j] & 0x0f) + m;
          dst[j + 16] = d * (float)(b[i].qs[j] >> 4) + m;
        }
      }
      return;
    }
    case GgmlType::Q8_0: {
      const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < nb; ++i, dst += 32) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 32; ++j) dst[j] = d * (float)b[i].qs[j];
      }
      return;
    }
    default:
      throw ArgumentError(cat("dequantization of ", info.name, " is not implemented yet"));
  }
}

}  // namespace sinkstream
