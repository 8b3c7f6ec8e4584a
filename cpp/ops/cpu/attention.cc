// Attention over the sink cache (ops.h `attend`): a GQA group of query heads, A(t) as runs of slots.
// The scalar kernels here are the reference; attention_avx2.cc has the fast ones, picked at run time.
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/fp16.h"
#include "ops/cpu/attention_kernels.h"
#include "ops/cpu/cpu_features.h"
#include "ops/ops.h"

namespace sinkstream {

namespace {

using namespace attention_kernels;

// f16 -> f32 through a 64K-entry table: exact, and fast enough without F16C.
const float* fp16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = fp16_to_f32((uint16_t)i);
    return t;
  }();
  return table.data();
}

inline float to_f32(float v) { return v; }
inline float round_to_half(float v) { return fp16_to_f32(f32_to_fp16(v)); }
constexpr int64_t kMaxGroupDim = 2048;  // query heads per KV head * head_dim rounded on the stack
inline float to_f32(uint16_t v) { return fp16_table()[v]; }

template <typename T>
void score_rows_scalar(const T* keys, int64_t n_rows, int64_t row_stride, const float* q, int64_t group,
                       int64_t dim, float scale, float* scores, int64_t scores_stride) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const T* k = keys + r * row_stride;
    for (int64_t h = 0; h < group; ++h) {
      float dot = 0.0f;
      for (int64_t i = 0; i < dim; ++i) dot += q[h * dim + i] * to_f32(k[i]);
      scores[h * scores_stride + r] = dot * scale;
    }
  }
}

template <typename T>
void accumulate_rows_scalar(const T* values, int64_t n_rows, int64_t row_stride, const float* weights,
                            int64_t weights_stride, int64_t group, int64_t dim, float* out) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const T* v = values + r * row_stride;
    for (int64_t h = 0; h < group; ++h) {
      const float w = weights[h * weights_stride + r];
      for (int64_t i = 0; i < dim; ++i) out[h * dim + i] += w * to_f32(v[i]);
    }
  }
}

// The max shift keeps exp() finite; the weights sum to 1 before any rounding to half.
void softmax_scalar(float* s, int64_t n, bool round_half) {
  float max_score = -INFINITY;
  for (int64_t r = 0; r < n; ++r) max_score = std::max(max_score, s[r]);
  float sum = 0.0f;
  for (int64_t r = 0; r < n; ++r) {
    s[r] = std::exp(s[r] - max_score);
    sum += s[r];
  }
  const float inv = 1.0f / sum;
  for (int64_t r = 0; r < n; ++r) s[r] = round_half ? round_to_half(s[r] * inv) : s[r] * inv;
}

void round_to_half_scalar(const float* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = round_to_half(in[i]);
}

const Kernels& scalar_kernels() {
  static const Kernels k{score_rows_scalar<uint16_t>, score_rows_scalar<float>, accumulate_rows_scalar<uint16_t>,
                         accumulate_rows_scalar<float>, softmax_scalar, round_to_half_scalar};
  return k;
}

const Kernels& kernels_for(int64_t dim) {
  // x86-64 levels at or above AVX2 have AVX2+FMA+F16C (cpu_features.h); SINKSTREAM_ISA can lower it.
  static const Kernels avx2 = active_isa() >= Isa::Avx2 ? avx2_kernels() : scalar_kernels();
  return dim % 8 == 0 ? avx2 : scalar_kernels();
}

struct Run {
  int64_t first_slot, n_rows;
  bool sink;
};

// A(t) as runs of consecutive slots, in token order: the sinks, then the window (split where the
// ring wraps around).
int collect_runs(const SinkCache& cache, uint64_t t, Run runs[3]) {
  const AttentionSpan span = cache.span(t);
  int n = 0;
  if (span.sink_end > 0) runs[n++] = {0, (int64_t)span.sink_end, true};
  uint64_t j = span.window_begin;
  while (j <= t) {
    const int64_t slot = cache.slot_of(j);
    const int64_t until_wrap = cache.n_slots() - slot;
    const int64_t len = (int64_t)std::min<uint64_t>(t + 1 - j, (uint64_t)until_wrap);
    runs[n++] = {slot, len, false};
    j += (uint64_t)len;
  }
  return n;
}

template <typename T, typename Score, typename Accumulate>
void attend_typed(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
                  const float* q_sink, const float* q_window, float scale, float* scores, float* out, Score score,
                  Accumulate accumulate, const Kernels& k) {
  const int64_t dim = cache.head_dim();
  const int64_t row = cache.row_elements();
  const T* keys = reinterpret_cast<const T*>(cache.keys(layer)) + kv_head * dim;
  const T* values = reinterpret_cast<const T*>(cache.values(layer)) + kv_head * dim;
  Run runs[3];
  const int n_runs = collect_runs(cache, t, runs);
  int64_t n_total = 0;  // |A(t)|: each head's scores are a contiguous row of this length
  for (int i = 0; i < n_runs; ++i) n_total += runs[i].n_rows;

  // With a half-precision cache both operands of each product are half precision: the query is
  // rounded like the keys, and the attention weights like the values (as llama.cpp's f16 cache
  // does), so the two engines agree closely.
  constexpr bool kHalf = std::is_same<T, uint16_t>::value;
  float q_half[2][kMaxGroupDim];
  if (kHalf && group * dim <= kMaxGroupDim) {
    k.round_to_half(q_sink, group * dim, q_half[0]);
    k.round_to_half(q_window, group * dim, q_half[1]);
    q_sink = q_half[0];
    q_window = q_half[1];
  }

  int64_t n = 0;  // rows scored so far
  for (int i = 0; i < n_runs; ++i) {
    score(keys + runs[i].first_slot * row, runs[i].n_rows, row, runs[i].sink ? q_sink : q_window, group, dim, scale,
          scores + n, n_total);
    n += runs[i].n_rows;
  }
  for (int64_t h = 0; h < group; ++h) k.softmax(scores + h * n_total, n_total, kHalf);
  for (int64_t i = 0; i < group * dim; ++i) out[i] = 0.0f;
  n = 0;
  for (int i = 0; i < n_runs; ++i) {
    accumulate(values + runs[i].first_slot * row, runs[i].n_rows, row, scores + n, n_total, group, dim, out);
    n += runs[i].n_rows;
  }
}

}  // namespace

void attend(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t, const float* q_sink,
            const float* q_window, float scale, float* scores, float* out) {
  const Kernels& k = kernels_for(cache.head_dim());
  if (cache.type() == KvType::kF16)
    attend_typed<uint16_t>(cache, layer, kv_head, group, t, q_sink, q_window, scale, scores, out, k.score_f16,
                           k.accumulate_f16, k);
  else
    attend_typed<float>(cache, layer, kv_head, group, t, q_sink, q_window, scale, scores, out, k.score_f32,
                        k.accumulate_f32, k);
}

}  // namespace sinkstream
