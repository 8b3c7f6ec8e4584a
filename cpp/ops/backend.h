// The backend interface: everything the model's forward pass asks of a device, in the terms of
// ops.h. A backend owns how the work is spread (threads on the CPU, streams on a GPU) and the
// scratch its kernels need; the model owns the order of the math. CPU: ops/cpu/cpu_backend.h.
//
// Memory: every float* an op takes lives where the backend computes. The forward's activations come
// from bind_scratch (the CPU: the ForwardScratch vectors themselves; CUDA: device buffers of the same
// shapes), so decoder.cc is written once for every backend and never touches an activation itself:
// the few host-side steps it used to do (copies between activations, storing K/V rows, the logits'
// way out) are ops here too. Weights (WeightMatrix, norm and bias vectors) are passed as the host
// pointers the model binds; a device backend maps each to its resident copy, uploaded once per model
// (cuda_backend.h). Positions and attention sets are always computed on the host, from the SinkCache.
// See docs/architectures.md, "Backends".
#pragma once
#include <cstdint>

#include "core/error.h"
#include "kv/sink_cache.h"
#include "ops/ops.h"

namespace sinkstream {

struct ForwardScratch;

// Attention of n consecutive tokens t0 .. t0+n-1 of one layer, each over its own A_l(t) in the
// cache (their keys and values are already stored). Queries: (n, n_head * head_dim), each KV
// head's group of query heads contiguous; q rotated at the window position, q_sink at p(t) (used
// against the sinks where separate_sink_query[b], else q serves both).
struct AttentionCall {
  const SinkCache* cache = nullptr;
  int64_t layer = 0;
  uint64_t t0 = 0;
  int64_t n = 0;
  int64_t n_head = 0;
  const float* q = nullptr;
  const float* q_sink = nullptr;
  const uint8_t* separate_sink_query = nullptr;  // (n) or nullptr: q serves the sinks too
  float scale = 1.0f;
  float softcap = 0.0f;                  // ScoreBias::softcap
  const float* alibi_slopes = nullptr;   // (n_head) ALiBi slopes, or nullptr
  const float* sink_logits = nullptr;    // (n_head) learned sink logits (ScoreBias), or nullptr
  float* out = nullptr;  // (n, n_head * head_dim)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // Weights (ops.h matmul, matmul_shared_input, get_row).
  virtual void matmul(const WeightMatrix& w, const float* x, int64_t n, float* y) = 0;
  virtual void matmul_shared_input(const WeightMatrix* const* ws, float* const* ys, int count, const float* x,
                                   int64_t n) = 0;
  virtual void embed(const WeightMatrix& table, const int32_t* ids, int64_t n, float* out) = 0;

  // Row-wise and elementwise ops (ops.h).
  virtual void rms_norm(const float* x, const float* weight, int64_t rows, int64_t d, float eps, float* out) = 0;
  // (x - mean) / sqrt(var + eps) * weight + bias per row; bias may be nullptr.
  virtual void layer_norm(const float* x, const float* weight, const float* bias, int64_t rows, int64_t d, float eps,
                          float* out) = 0;
  // out (rows, width) = act(gate) * up; gate/up rows `stride` apart (fused gate/up: stride 2 * width).
  virtual void glu(FfnActivation act, const float* gate, const float* up, int64_t rows, int64_t width,
                   int64_t stride, float* out) = 0;
  // x = act(x) over n values, for the plain (ungated) activations.
  virtual void activate(FfnActivation act, float* x, int64_t n) = 0;
  virtual void clamp(float* x, float limit, int64_t n) = 0;  // x = min(max(x, -limit), limit)
  virtual void add(float* y, const float* x, float scale, int64_t n) = 0;  // y += scale * x
  virtual void scale(float* x, float s, int64_t n) = 0;
  virtual void soft_cap(float* x, float cap, int64_t n) = 0;
  virtual void rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, RopeLayout layout, const float* cos,
                    const float* sin) = 0;

  virtual void attention(const AttentionCall& call) = 0;
  // attention() of `count` calls at once (a batched step's segments, each over its own cache);
  // entries[i] = the cache entries call i read (as entries_attended() counts them). A backend may
  // spread all the calls' work over its threads together; by default, one call after another.
  virtual void attention_calls(const AttentionCall* calls, int64_t count, uint64_t* entries) {
    for (int64_t i = 0; i < count; ++i) {
      const uint64_t before = entries_attended();
      attention(calls[i]);
      entries[i] = entries_attended() - before;
    }
  }

  // Memory and data movement (one call per forward or per block, never per element).
  // Points scratch.buf at this backend's activation buffers for scratch's shapes (model.h).
  virtual void bind_scratch(ForwardScratch& scratch) = 0;
  // n floats host -> backend memory / backend memory -> host; no-ops when dst == src (the CPU).
  virtual void upload(float* dst, const float* host_src, int64_t n) = 0;
  virtual void download(float* host_dst, const float* src, int64_t n) = 0;
  // rows of `width` floats, src rows src_stride apart -> dst rows dst_stride apart (backend memory).
  virtual void copy_rows(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
                         int64_t width) = 0;
  // y (rows, d) += bias (d) on every row.
  virtual void add_bias(float* y, const float* bias, int64_t rows, int64_t d) = 0;
  // Token t's key and value rows (row_elements() floats each, backend memory) into layer's slot of
  // t in `cache` (SinkCache::store; a device backend writes its device copy of the cache).
  virtual void store_kv(SinkCache& cache, int64_t layer, uint64_t t, const float* key, const float* value) = 0;
  // A device backend's copy of `cache` (a SinkCache without host storage), whole, in the SinkCache
  // layout (keys, values: cache.bytes() / 2 each), out to host memory and back in: save() and load()
  // of a device session go through a host twin (SinkCache::with_host_storage). After the work queued
  // before it. A backend whose caches are the host ones has nothing to copy: it refuses.
  virtual void download_cache(const SinkCache& cache, uint8_t* keys, uint8_t* values) {
    (void)cache, (void)keys, (void)values;
    refuse_cache_copy();
  }
  virtual void upload_cache(const SinkCache& cache, const uint8_t* keys, const uint8_t* values) {
    (void)cache, (void)keys, (void)values;
    refuse_cache_copy();
  }

  // Batched forms (one call per run of rows; a GPU overrides them with one launch). By default, the
  // per-row calls above, row by row:
  // rope() of `rows` rows of x, row_stride apart, row r with cos/sin + r * n_rot / 2.
  virtual void rope_rows(float* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                         int64_t n_rot, RopeLayout layout, const float* cos, const float* sin) {
    const int64_t n_freq = n_rot / 2;
    for (int64_t r = 0; r < rows; ++r)
      rope(x + r * row_stride, n_heads, head_dim, n_rot, layout, cos + r * n_freq, sin + r * n_freq);
  }
  // store_kv() of tokens t0 .. t0+n-1, rows row_elements() apart in keys and values.
  virtual void store_kv_rows(SinkCache& cache, int64_t layer, uint64_t t0, int64_t n, const float* keys,
                             const float* values) {
    const int64_t d = cache.row_elements();
    for (int64_t b = 0; b < n; ++b) store_kv(cache, layer, t0 + (uint64_t)b, keys + b * d, values + b * d);
  }

  // Cache entries attention has read so far, summed over query heads and layers (counted by the
  // kernels' callers from the rows really read: streaming.md invariant 3 is checked on this).
  virtual uint64_t entries_attended() const = 0;

 private:
  [[noreturn]] void refuse_cache_copy() const {
    throw ArgumentError(cat("the ", name(), " backend keeps no copy of a cache"));
  }
};

}  // namespace sinkstream
