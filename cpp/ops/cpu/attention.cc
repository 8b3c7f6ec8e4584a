// Reference attention over the sink cache (ops.h `attend`): one query head, A(t) as two ranges.
#include <cmath>
#include <vector>

#include "core/fp16.h"
#include "ops/ops.h"

namespace sinkstream {

namespace {

// f16 -> f32 through a 64K-entry table: exact, and fast without F16C in the reference path.
const float* fp16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = fp16_to_f32((uint16_t)i);
    return t;
  }();
  return table.data();
}

inline float to_f32(float v, const float*) { return v; }
inline float to_f32(uint16_t v, const float* table) { return table[v]; }

template <typename T>
void attend_typed(const SinkCache& cache, int64_t layer, int64_t kv_head, uint64_t t, const float* q_sink,
                  const float* q_window, float scale, float* scores, float* out) {
  const float* table = fp16_table();
  const int64_t dim = cache.head_dim();
  const int64_t row = cache.row_elements();
  const T* keys = reinterpret_cast<const T*>(cache.keys(layer)) + kv_head * dim;
  const T* values = reinterpret_cast<const T*>(cache.values(layer)) + kv_head * dim;
  const AttentionSpan span = cache.span(t);

  // Scores: sinks first, then the window in token order (the order of A(t)).
  int64_t n = 0;
  float max_score = -INFINITY;
  auto score_slot = [&](const float* q, int64_t slot) {
    const T* k = keys + slot * row;
    float dot = 0.0f;
    for (int64_t i = 0; i < dim; ++i) dot += q[i] * to_f32(k[i], table);
    const float s = dot * scale;
    scores[n++] = s;
    if (s > max_score) max_score = s;
  };
  for (uint64_t j = 0; j < span.sink_end; ++j) score_slot(q_sink, (int64_t)j);
  for (uint64_t j = span.window_begin; j <= t; ++j) score_slot(q_window, cache.slot_of(j));

  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    scores[i] = std::exp(scores[i] - max_score);
    sum += scores[i];
  }
  const float inv_sum = 1.0f / sum;

  for (int64_t i = 0; i < dim; ++i) out[i] = 0.0f;
  int64_t k = 0;
  auto accumulate_slot = [&](int64_t slot) {
    const T* v = values + slot * row;
    const float w = scores[k++] * inv_sum;
    for (int64_t i = 0; i < dim; ++i) out[i] += w * to_f32(v[i], table);
  };
  for (uint64_t j = 0; j < span.sink_end; ++j) accumulate_slot((int64_t)j);
  for (uint64_t j = span.window_begin; j <= t; ++j) accumulate_slot(cache.slot_of(j));
}

}  // namespace

void attend(const SinkCache& cache, int64_t layer, int64_t kv_head, uint64_t t, const float* q_sink,
            const float* q_window, float scale, float* scores, float* out) {
  if (cache.type() == KvType::kF16)
    attend_typed<uint16_t>(cache, layer, kv_head, t, q_sink, q_window, scale, scores, out);
  else
    attend_typed<float>(cache, layer, kv_head, t, q_sink, q_window, scale, scores, out);
}

}  // namespace sinkstream
