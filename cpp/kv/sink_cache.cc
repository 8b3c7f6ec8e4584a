#include "kv/sink_cache.h"

#include <cstring>

#include "core/error.h"
#include "core/fp16.h"

namespace sinkstream {

SinkCache::SinkCache(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t n_sink, int64_t window,
                     int64_t max_chunk, KvType type, uint64_t position_offset)
    : n_layer_(n_layer), n_head_kv_(n_head_kv), head_dim_(head_dim), n_sink_(n_sink), window_(window),
      ring_slots_(window + max_chunk - 1), type_(type), position_offset_(position_offset) {
  SS_CHECK_ARG(n_sink >= 0, "n_sink must be >= 0, got ", n_sink);
  SS_CHECK_ARG(window >= 1, "window must be >= 1, got ", window);
  SS_CHECK_ARG(max_chunk >= 1, "batch size must be >= 1, got ", max_chunk);
  layer_bytes_ = n_slots() * row_elements() * (int64_t)element_bytes();
  // Allocated and touched once, here: the cache never grows (streaming.md invariant 2).
  keys_.assign((size_t)(n_layer_ * layer_bytes_), 0);
  values_.assign((size_t)(n_layer_ * layer_bytes_), 0);
}

void SinkCache::store(int64_t layer, uint64_t token, const float* key, const float* value) {
  const int64_t n = row_elements();
  const size_t offset = (size_t)(slot_of(token) * n) * element_bytes();
  uint8_t* k = keys(layer) + offset;
  uint8_t* v = values(layer) + offset;
  if (type_ == KvType::kF32) {
    std::memcpy(k, key, (size_t)n * 4);
    std::memcpy(v, value, (size_t)n * 4);
  } else {
    uint16_t* kh = reinterpret_cast<uint16_t*>(k);
    uint16_t* vh = reinterpret_cast<uint16_t*>(v);
    for (int64_t i = 0; i < n; ++i) {
      kh[i] = f32_to_fp16(key[i]);
      vh[i] = f32_to_fp16(value[i]);
    }
  }
}

}  // namespace sinkstream
