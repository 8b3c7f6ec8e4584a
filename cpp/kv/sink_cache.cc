#include "kv/sink_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/quant_blocks.h"

namespace sinkstream {

const char* kv_type_name(KvType type) {
  switch (type) {
    case KvType::kF16: return "f16";
    case KvType::kF32: return "f32";
    case KvType::kQ8_0: return "q8_0";
  }
  return "?";
}

KvType parse_kv_type(const std::string& name) {
  for (KvType type : {KvType::kF16, KvType::kF32, KvType::kQ8_0})
    if (name == kv_type_name(type)) return type;
  throw ArgumentError(cat("kv_type must be 'f16', 'f32' or 'q8_0', got '", name, "'"));
}

size_t kv_head_row_bytes(KvType type, int64_t head_dim) {
  switch (type) {
    case KvType::kF16: return (size_t)head_dim * 2;
    case KvType::kF32: return (size_t)head_dim * 4;
    case KvType::kQ8_0: return (size_t)(head_dim / kQK) * sizeof(BlockQ8_0);
  }
  return 0;
}

namespace {

// One row as Q8_0 blocks, as GGML defines them: d = max|x| / 127 (stored as f16), q = round(x / d).
void quantize_row_q8_0(const float* x, int64_t n, BlockQ8_0* out) {
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* xb = x + b * kQK;
    float amax = 0.0f;
    for (int i = 0; i < kQK; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.0f;
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = f32_to_fp16(d);
    for (int i = 0; i < kQK; ++i) out[b].qs[i] = (int8_t)std::lround(xb[i] * inverse);
  }
}

}  // namespace

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
  SS_CHECK_ARG(type != KvType::kQ8_0 || head_dim % kQK == 0, "kv_type 'q8_0' stores blocks of ", kQK,
               " values: it needs head_dim a multiple of ", kQK, ", and this model's head_dim is ", head_dim,
               " (use kv_type='f16')");
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
    total += (size_t)(n_head_kv * (n_sink + ring)) * kv_head_row_bytes(type, head_dim);
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

void SinkCache::store(int64_t layer, uint64_t token, const float* key, const float* value, HalfRowFn to_half) {
  for (int64_t h = 0; h < n_head_kv_; ++h) {
    uint8_t* k = keys_.data() + row_offset(layer, h, token);
    uint8_t* v = values_.data() + row_offset(layer, h, token);
    const float* key_h = key + h * head_dim_;
    const float* value_h = value + h * head_dim_;
    if (type_ == KvType::kF32) {
      std::memcpy(k, key_h, head_row_bytes());
      std::memcpy(v, value_h, head_row_bytes());
    } else if (type_ == KvType::kQ8_0) {
      quantize_row_q8_0(key_h, head_dim_, reinterpret_cast<BlockQ8_0*>(k));
      quantize_row_q8_0(value_h, head_dim_, reinterpret_cast<BlockQ8_0*>(v));
    } else {
      uint16_t* kh = reinterpret_cast<uint16_t*>(k);
      uint16_t* vh = reinterpret_cast<uint16_t*>(v);
      if (to_half != nullptr) {
        to_half(key_h, head_dim_, kh);
        to_half(value_h, head_dim_, vh);
        continue;
      }
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

SinkCache SinkCache::with_host_storage() const {
  SinkCache twin = *this;
  twin.keys_.assign(layout_bytes_, 0);
  twin.values_.assign(layout_bytes_, 0);
  return twin;
}

void SinkCache::copy_in(int64_t layer, uint64_t token, const uint8_t* key, const uint8_t* value) {
  SS_ASSERT(has_host_storage());
  for (int64_t h = 0; h < n_head_kv_; ++h) {
    std::memcpy(keys_.data() + row_offset(layer, h, token), key + h * head_row_bytes(), head_row_bytes());
    std::memcpy(values_.data() + row_offset(layer, h, token), value + h * head_row_bytes(), head_row_bytes());
  }
}

}  // namespace sinkstream
