#include "kv/sink_cache.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"

namespace sinkstream {

SinkCache::SinkCache(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t n_sink, int64_t window,
                     int64_t max_chunk, KvType type, uint64_t position_offset, std::vector<int64_t> layer_windows,
                     bool evicts, bool host_storage)
    : n_layer_(n_layer), n_head_kv_(n_head_kv), head_dim_(head_dim), n_sink_(n_sink), window_(window),
      type_(type), position_offset_(position_offset) {
  size_t bytes = 0;
  layers_ = layout(n_layer, n_head_kv, head_dim, n_sink, window, max_chunk, type, layer_windows, evicts, &bytes);
  layout_bytes_ = bytes;
  if (!host_storage) return;
  // Allocated and touched once, here: the cache never grows (streaming.md invariant 2).
  keys_.assign(bytes, 0);
  values_.assign(bytes, 0);
}

std::vector<SinkCache::LayerGeometry> SinkCache::layout(int64_t n_layer, int64_t n_head_kv, int64_t head_dim,
                                                        int64_t n_sink, int64_t window, int64_t max_chunk, KvType type,
                                                        const std::vector<int64_t>& layer_windows, bool evicts,
                                                        size_t* bytes) {
  const size_t element_bytes = type == KvType::kF16 ? 2 : 4;
  SS_CHECK_ARG(n_sink >= 0, "n_sink must be >= 0, got ", n_sink);
  SS_CHECK_ARG(window >= 1, "window must be >= 1, got ", window);
  SS_CHECK_ARG(max_chunk >= 1, "batch size must be >= 1, got ", max_chunk);
  SS_CHECK_ARG(layer_windows.empty() || (int64_t)layer_windows.size() == n_layer, "layer_windows has ",
               layer_windows.size(), " entries for ", n_layer, " layers");
  // The ring keeps every window token some query of a chunk attends to: the last `window` tokens
  // before the chunk's first query plus the chunk itself. A layer of window w_l needs only its
  // last w_l (plus the chunk), and never more than the global ring.
  const int64_t global_ring = window + (evicts ? max_chunk - 1 : 0);
  size_t total = 0;
  std::vector<LayerGeometry> layers;
  for (int64_t l = 0; l < n_layer; ++l) {
    const int64_t w = layer_windows.empty() ? 0 : layer_windows[(size_t)l];
    SS_CHECK_ARG(w >= 0, "layer ", l, ": sliding window must be >= 0, got ", w);
    const int64_t ring = w == 0 ? global_ring : std::min(global_ring, w + max_chunk - 1);
    layers.push_back({w, ring, total});
    total += (size_t)(n_head_kv * (n_sink + ring) * head_dim) * element_bytes;
  }
  *bytes = total;
  return layers;
}

size_t SinkCache::bytes_for(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t n_sink, int64_t window,
                            int64_t max_chunk, KvType type, const std::vector<int64_t>& layer_windows, bool evicts) {
  size_t bytes = 0;
  layout(n_layer, n_head_kv, head_dim, n_sink, window, max_chunk, type, layer_windows, evicts, &bytes);
  return 2 * bytes;  // keys and values
}

void SinkCache::store(int64_t layer, uint64_t token, const float* key, const float* value) {
  for (int64_t h = 0; h < n_head_kv_; ++h) {
    uint8_t* k = keys_.data() + row_offset(layer, h, token);
    uint8_t* v = values_.data() + row_offset(layer, h, token);
    const float* key_h = key + h * head_dim_;
    const float* value_h = value + h * head_dim_;
    if (type_ == KvType::kF32) {
      std::memcpy(k, key_h, head_row_bytes());
      std::memcpy(v, value_h, head_row_bytes());
    } else {
      uint16_t* kh = reinterpret_cast<uint16_t*>(k);
      uint16_t* vh = reinterpret_cast<uint16_t*>(v);
      for (int64_t i = 0; i < head_dim_; ++i) {
        kh[i] = f32_to_fp16(key_h[i]);
        vh[i] = f32_to_fp16(value_h[i]);
      }
    }
  }
}

void SinkCache::copy_out(int64_t layer, uint64_t token, uint8_t* key, uint8_t* value) const {
  SS_ASSERT(has_host_storage());
  for (int64_t h = 0; h < n_head_kv_; ++h) {
    std::memcpy(key + h * head_row_bytes(), keys_.data() + row_offset(layer, h, token), head_row_bytes());
    std::memcpy(value + h * head_row_bytes(), values_.data() + row_offset(layer, h, token), head_row_bytes());
  }
}

void SinkCache::copy_in(int64_t layer, uint64_t token, const uint8_t* key, const uint8_t* value) {
  SS_ASSERT(has_host_storage());
  for (int64_t h = 0; h < n_head_kv_; ++h) {
    std::memcpy(keys_.data() + row_offset(layer, h, token), key + h * head_row_bytes(), head_row_bytes());
    std::memcpy(values_.data() + row_offset(layer, h, token), value + h * head_row_bytes(), head_row_bytes());
  }
}

}  // namespace sinkstream
