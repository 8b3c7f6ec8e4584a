// The backend interface: everything the model's forward pass asks of a device, in the terms of
// ops.h. A backend owns how the work is spread (threads on the CPU, streams on a GPU) and the
// scratch its kernels need; the model owns the order of the math. CPU: ops/cpu/cpu_backend.h.
// (A GPU backend implements the same calls over device buffers: issue "CUDA backend end to end".)
#pragma once
#include <cstdint>

#include "kv/sink_cache.h"
#include "ops/ops.h"

namespace sinkstream {

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

  // Cache entries attention has read so far, summed over query heads and layers (counted by the
  // kernels' callers from the rows really read: streaming.md invariant 3 is checked on this).
  virtual uint64_t entries_attended() const = 0;
};

}  // namespace sinkstream
