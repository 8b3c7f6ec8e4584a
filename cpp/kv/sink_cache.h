// SinkCache: the K/V cache of one stream (StreamingLLM, Xiao et al. 2024, sec. 3.2).
//
// Per layer, `n_sink` sink slots hold tokens 0..n_sink-1 forever, and a ring of `ring_slots` holds
// the most recent tokens: token j >= n_sink lives in slot n_sink + (j - n_sink) % ring_slots.
// The ring has `window + max_chunk - 1` slots, so while a chunk of queries is processed every query
// t still finds its whole attention set A(t) = sinks U {t-window+1 .. t} (streaming.md, chunked
// prefill); nothing is copied or moved when the window slides.
//
// Keys are stored already rotated by RoPE at their absolute index j and never touched again: a
// score depends only on the difference of the query's and key's positions, so a window key scored
// against the query rotated at t sits at distance t - j, exactly as in the cache, and a sink key
// (rotated at s) is scored against a second copy of the query rotated at p(t) = min(t, C - 1).
// Two query rotations per head per token; no O(window) work per step.
//
// Layers may differ (streaming.md, "Models whose layers differ"): a sliding-window layer l of
// window w_l attends to A_l(t) = A(t) ∩ {t - w_l + 1 .. t}, at the same positions (ranks in A(t)),
// and keeps only the ring its own window needs: min(window, w_l) + chunk slack slots, so Gemma 3's
// local layers hold ~512 entries whatever the capacity.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/large_pages.h"

namespace sinkstream {

// Storage of cached keys and values: half or single precision, or GGML's Q8_0 blocks (32 values,
// an f16 scale and 32 int8: 34 bytes, 1.06 bytes a value; head_dim must be a multiple of 32).
enum class KvType { kF16, kF32, kQ8_0 };

const char* kv_type_name(KvType type);
KvType parse_kv_type(const std::string& name);  // ArgumentError naming the choices
// Bytes one head's row of head_dim values takes in the storage type.
size_t kv_head_row_bytes(KvType type, int64_t head_dim);

// The attention set A_l(t) of query t in one layer, as two index ranges (streaming.md, "Modes").
struct AttentionSpan {
  uint64_t sink_begin = 0;    // sinks are tokens [sink_begin, sink_end): 0 unless a local window
  uint64_t sink_end = 0;      // has moved past some of them
  uint64_t window_begin = 0;  // window tokens are [window_begin, t]
  uint64_t query_position = 0;  // p(t) = |A(t)| - 1: where the query sits within the cache
  int64_t size(uint64_t t) const {  // |A_l(t)|
    return (int64_t)(sink_end - sink_begin) + (t >= window_begin ? (int64_t)(t + 1 - window_begin) : 0);
  }
};

class SinkCache {
 public:
  // n_sink + window = capacity C. max_chunk: the most tokens written before their queries attend.
  // layer_windows: w_l per layer, 0 for a global layer (empty: every layer global).
  // evicts = false (dense, recompute): the stream never passes the capacity, so global layers keep
  // exactly `window` ring slots (no chunk slack); local layers still slide.
  // host_storage = false: the geometry alone, no key/value storage (a device backend keeps the
  // entries in its own copy of this layout: ops/cuda/cuda_backend.h); store / copy_* must not be
  // called then, and bytes() still says what the layout holds.
  SinkCache(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t n_sink, int64_t window,
            int64_t max_chunk, KvType type, uint64_t position_offset = 0,
            std::vector<int64_t> layer_windows = {}, bool evicts = true, bool host_storage = true);

  // The bytes a cache of these arguments allocates (keys and values), without allocating them:
  // memory estimates before a session is made use the same layout as the constructor.
  static size_t bytes_for(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t n_sink, int64_t window,
                          int64_t max_chunk, KvType type, const std::vector<int64_t>& layer_windows = {},
                          bool evicts = true);

  // RoPE positions. Window keys and the window copy of a query sit at position_offset + t (the
  // absolute index in a stream whose first token had index position_offset; 0 for a fresh stream);
  // a sink key sits at its rank s, and the sink copy of query t at p(t). Only differences of
  // positions reach the scores, so the offset changes nothing but the size of the angles
  // (streaming.md invariant 4).
  uint64_t position_offset() const { return position_offset_; }
  uint64_t window_position(uint64_t t) const { return position_offset_ + t; }

  int64_t n_layer() const { return n_layer_; }
  int64_t n_head_kv() const { return n_head_kv_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t n_sink() const { return n_sink_; }
  int64_t window() const { return window_; }
  int64_t capacity() const { return n_sink_ + window_; }
  int64_t layer_window(int64_t layer) const { return layers_[(size_t)layer].window; }  // 0: global
  int64_t ring_slots(int64_t layer) const { return layers_[(size_t)layer].ring_slots; }
  int64_t n_slots(int64_t layer) const { return n_sink_ + layers_[(size_t)layer].ring_slots; }
  int64_t row_elements() const { return n_head_kv_ * head_dim_; }  // one token's K (or V) in a layer
  KvType type() const { return type_; }
  size_t bytes() const { return 2 * layout_bytes_; }  // keys and values, wherever they are stored
  bool has_host_storage() const { return keys_.size() == layout_bytes_; }

  // StreamingLLM's attention set A(t) of query t (0-based token index in the stream): the
  // session's set, which global layers attend to and which defines every position.
  AttentionSpan span(uint64_t t) const {
    AttentionSpan s;
    const uint64_t S = (uint64_t)n_sink_, W = (uint64_t)window_;
    s.sink_end = t + 1 < S ? t + 1 : S;
    const uint64_t lo = t + 1 > W ? t + 1 - W : 0;
    s.window_begin = lo > S ? lo : S;
    // Rank of t in A(t) = |A(t)| - 1; while t < n_sink the window part is empty.
    const uint64_t window_size = t >= s.window_begin ? t + 1 - s.window_begin : 0;
    s.query_position = s.sink_end + window_size - 1;
    return s;
  }

  // A_l(t) = A(t) ∩ {t - w_l + 1 .. t} for a sliding-window layer, A(t) for a global one; the
  // query keeps its position p(t) in A(t) (streaming.md, "Models whose layers differ").
  AttentionSpan span(int64_t layer, uint64_t t) const {
    AttentionSpan s = span(t);
    const uint64_t w = (uint64_t)layers_[(size_t)layer].window;
    if (w == 0 || t + 1 <= w) return s;
    const uint64_t oldest = t + 1 - w;
    s.sink_begin = oldest < s.sink_end ? oldest : s.sink_end;
    if (s.window_begin < oldest) s.window_begin = oldest;
    return s;
  }

  int64_t slot_of(int64_t layer, uint64_t j) const {
    return j < (uint64_t)n_sink_ ? (int64_t)j
                                 : n_sink_ + (int64_t)((j - (uint64_t)n_sink_) % (uint64_t)ring_slots(layer));
  }

  // Storage is head-major: for each layer and KV head, n_slots(layer) rows of head_dim values (f16 bits,
  // f32 or Q8_0 blocks), slot after slot. Attention reads one KV head's rows at a time, so they are one contiguous
  // stream (a token-major layout, all heads of a slot together, made each head's pass a strided
  // walk that took about twice as long from DRAM).
  const uint8_t* key_rows(int64_t layer, int64_t kv_head) const { return keys_.data() + head_offset(layer, kv_head); }
  const uint8_t* value_rows(int64_t layer, int64_t kv_head) const {
    return values_.data() + head_offset(layer, kv_head);
  }
  size_t head_row_bytes() const { return kv_head_row_bytes(type_, head_dim_); }  // one slot of one head
  size_t token_row_bytes() const { return (size_t)n_head_kv_ * head_row_bytes(); }  // one token's K (or V)

  // Writes one token's rows (float32, row_elements() each, head after head), converting to the
  // storage type. to_half: a vectorized f32 -> f16 row conversion with the same rounding (nearest,
  // ties to even) as fp16.h's, or nullptr for that scalar one.
  using HalfRowFn = void (*)(const float* in, int64_t n, uint16_t* out);
  void store(int64_t layer, uint64_t token, const float* key, const float* value, HalfRowFn to_half = nullptr);

  // One token's stored K and V of a layer as raw bytes, head after head (token_row_bytes() each),
  // for save/restore: exact, the storage is copied as is.
  void copy_out(int64_t layer, uint64_t token, uint8_t* key, uint8_t* value) const;
  void copy_in(int64_t layer, uint64_t token, const uint8_t* key, const uint8_t* value);

  // A cache of this geometry and these settings with host storage, all zeros: the host twin through
  // which a device backend's copy of a cache without host storage is saved and restored
  // (Session::save / load; Backend::download_cache).
  SinkCache with_host_storage() const;
  // The whole storage of keys (values) in the layout above, bytes() / 2 each; host storage only.
  uint8_t* key_storage() { return keys_.data(); }
  uint8_t* value_storage() { return values_.data(); }

 private:
  struct LayerGeometry {
    int64_t window;      // w_l, 0 for a global layer
    int64_t ring_slots;  // slots after the sinks
    size_t offset;       // bytes before this layer's rows
  };
  // Each layer's ring and offset, and the bytes of keys (or values) in all: the constructor and
  // bytes_for share it.
  static std::vector<LayerGeometry> layout(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t n_sink,
                                           int64_t window, int64_t max_chunk, KvType type,
                                           const std::vector<int64_t>& layer_windows, bool evicts, size_t* bytes);
  int64_t n_layer_, n_head_kv_, head_dim_, n_sink_, window_;
  KvType type_;
  uint64_t position_offset_;
  std::vector<LayerGeometry> layers_;
  size_t head_offset(int64_t layer, int64_t kv_head) const {
    return layers_[(size_t)layer].offset + (size_t)(kv_head * n_slots(layer)) * head_row_bytes();
  }
  size_t row_offset(int64_t layer, int64_t kv_head, uint64_t token) const {
    return head_offset(layer, kv_head) + (size_t)slot_of(layer, token) * head_row_bytes();
  }
  size_t layout_bytes_ = 0;      // keys (or values) of every layer
  // Per layer (n_head_kv, n_slots(layer), head_dim); empty without host storage. In huge pages where
  // the OS gives them (core/large_pages.h): decode reads all of it every token.
  std::vector<uint8_t, LargePageAllocator<uint8_t>> keys_;
  std::vector<uint8_t, LargePageAllocator<uint8_t>> values_;
};

}  // namespace sinkstream
