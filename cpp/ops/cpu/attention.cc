// Attention over the sink cache (ops.h `attend`): a GQA group of query heads, A(t) as runs of slots.
// The scalar kernels here are the reference; attention_avx2.cc, attention_avx512.cc and
// attention_neon.cc have the fast ones, picked at run time (kernels_for).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "ops/cpu/attention_kernels.h"
#include "ops/cpu/cpu_features.h"
#include "ops/ops.h"
#include "quant/quant_blocks.h"

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
constexpr int64_t kMaxGroupDim = 8192;  // query heads per KV head * head_dim, kept on the stack
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

// Q8_0 rows (sink_cache.h): each block's products summed, then scaled by the block's d.
void score_rows_q8_scalar(const uint8_t* keys, int64_t n_rows, int64_t row_bytes, const float* q, int64_t group,
                          int64_t dim, float scale, float* scores, int64_t scores_stride) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const BlockQ8_0* k = reinterpret_cast<const BlockQ8_0*>(keys + r * row_bytes);
    for (int64_t h = 0; h < group; ++h) {
      float dot = 0.0f;
      for (int64_t b = 0; b < dim / kQK; ++b) {
        float block = 0.0f;
        for (int i = 0; i < kQK; ++i) block += q[h * dim + b * kQK + i] * (float)k[b].qs[i];
        dot += to_f32(k[b].d) * block;
      }
      scores[h * scores_stride + r] = dot * scale;
    }
  }
}

void accumulate_rows_q8_scalar(const uint8_t* values, int64_t n_rows, int64_t row_bytes, const float* weights,
                               int64_t weights_stride, int64_t group, int64_t dim, float* out) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const BlockQ8_0* v = reinterpret_cast<const BlockQ8_0*>(values + r * row_bytes);
    for (int64_t h = 0; h < group; ++h) {
      for (int64_t b = 0; b < dim / kQK; ++b) {
        const float w = weights[h * weights_stride + r] * to_f32(v[b].d);
        for (int i = 0; i < kQK; ++i) out[h * dim + b * kQK + i] += w * (float)v[b].qs[i];
      }
    }
  }
}

// The max shift keeps exp() finite; the weights sum to 1 before any rounding to half. A learned
// sink logit (finite `sink`) joins the max and adds exp(sink - max) to the denominator only, a
// column with no value (attention_kernels.h).
void softmax_scalar(float* s, int64_t n, float sink, bool round_half) {
  float max_score = sink;  // -inf without a learned sink
  for (int64_t r = 0; r < n; ++r) max_score = std::max(max_score, s[r]);
  float sum = 0.0f;
  for (int64_t r = 0; r < n; ++r) {
    s[r] = std::exp(s[r] - max_score);
    sum += s[r];
  }
  if (sink != -INFINITY) sum += std::exp(sink - max_score);
  const float inv = 1.0f / sum;
  for (int64_t r = 0; r < n; ++r) s[r] = round_half ? round_to_half(s[r] * inv) : s[r] * inv;
}

void round_to_half_scalar(const float* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = round_to_half(in[i]);
}

const Kernels& scalar_kernels() {
  static const Kernels k{score_rows_scalar<uint16_t>, score_rows_scalar<float>,    accumulate_rows_scalar<uint16_t>,
                         accumulate_rows_scalar<float>, softmax_scalar,            round_to_half_scalar,
                         score_rows_q8_scalar,          accumulate_rows_q8_scalar};
  return k;
}

// The kernels attention uses at level `isa` for rows of `dim` elements. x86-64 levels at or above
// AVX2 have AVX2+FMA+F16C (cpu_features.h); SINKSTREAM_ISA can lower the level.
const Kernels& kernels_for(int64_t dim, Isa isa) {
  static const Kernels avx512 = isa_supported(Isa::Avx512) ? avx512_kernels() : scalar_kernels();
  static const Kernels avx2 = isa_supported(Isa::Avx2) ? avx2_kernels() : scalar_kernels();
  static const Kernels neon = isa_supported(Isa::Neon) ? neon_kernels() : scalar_kernels();
  if (isa == Isa::Avx512 && isa_supported(isa) && dim % 16 == 0) return avx512;
  if ((isa == Isa::Avx512 || isa == Isa::Avx2) && isa_supported(Isa::Avx2) && dim % 8 == 0) return avx2;
  if (is_arm_isa(isa) && isa_supported(isa) && dim % 4 == 0) return neon;  // (dotprod, i8mm: the same)
  return scalar_kernels();
}

struct Run {
  int64_t first_slot, n_rows;
  bool sink;
};

// A_l(t) as runs of consecutive slots, in token order: the sinks, then the window (split where the
// ring wraps around).
int collect_runs(const SinkCache& cache, int64_t layer, uint64_t t, Run runs[3]) {
  const AttentionSpan span = cache.span(layer, t);
  int n = 0;
  if (span.sink_end > span.sink_begin)
    runs[n++] = {(int64_t)span.sink_begin, (int64_t)(span.sink_end - span.sink_begin), true};
  uint64_t j = span.window_begin;
  while (j <= t) {
    const int64_t slot = cache.slot_of(layer, j);
    const int64_t until_wrap = cache.n_slots(layer) - slot;
    const int64_t len = (int64_t)std::min<uint64_t>(t + 1 - j, (uint64_t)until_wrap);
    runs[n++] = {slot, len, false};
    j += (uint64_t)len;
  }
  return n;
}

// Calls fn(first_slot, n_rows, sink, row) for the parts of the runs of A_l(t) that hold rows
// [row_begin, row_end) of A_l(t) in token order (row: the first one's index in A_l(t)).
template <typename Fn>
void for_each_run_part(const SinkCache& cache, int64_t layer, uint64_t t, int64_t row_begin, int64_t row_end, Fn fn) {
  Run runs[3];
  const int n_runs = collect_runs(cache, layer, t, runs);
  int64_t row = 0;
  for (int i = 0; i < n_runs; ++i) {
    const int64_t lo = std::max(row_begin, row), hi = std::min(row_end, row + runs[i].n_rows);
    if (lo < hi) fn(runs[i].first_slot + (lo - row), hi - lo, runs[i].sink, lo);
    row += runs[i].n_rows;
  }
}

// The kernels prefetch kPrefetchRows ahead of the rows they read, so a run's first rows would wait
// for DRAM: those of both the keys and the values (read right after) are asked for as its scores
// start. Short runs (a batched step's young sessions, sliding-window layers) gain most.
void prefetch_run_start(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t slot, int64_t n_rows) {
  const int64_t row_bytes = (int64_t)cache.head_row_bytes();
  const int64_t n_bytes = std::min(n_rows, kPrefetchRows) * row_bytes;
  prefetch_bytes(cache.key_rows(layer, kv_head), slot * row_bytes, n_bytes);
  prefetch_bytes(cache.value_rows(layer, kv_head), slot * row_bytes, n_bytes);
}

template <typename T, typename Score>
void scores_typed(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
                  const float* q_sink, const float* q_window, float scale, int64_t row_begin, int64_t row_end,
                  float* scores, int64_t scores_stride, Score score, const Kernels& k) {
  const int64_t dim = cache.head_dim();
  const int64_t row = dim;  // one KV head's rows are contiguous (sink_cache.h)
  const T* keys = reinterpret_cast<const T*>(cache.key_rows(layer, kv_head));
  // With a half-precision cache both operands of each product are half precision: the query is
  // rounded like the keys (and, in attend_softmax, the attention weights like the values), as
  // llama.cpp's f16 cache does, so the two engines agree closely.
  float q_half[2][kMaxGroupDim];
  if (std::is_same<T, uint16_t>::value && group * dim <= kMaxGroupDim) {
    k.round_to_half(q_sink, group * dim, q_half[0]);
    k.round_to_half(q_window, group * dim, q_half[1]);
    q_sink = q_half[0];
    q_window = q_half[1];
  }
  for_each_run_part(cache, layer, t, row_begin, row_end, [&](int64_t slot, int64_t n_rows, bool sink, int64_t r) {
    prefetch_run_start(cache, layer, kv_head, slot, n_rows);
    score(keys + slot * row, n_rows, row, sink ? q_sink : q_window, group, dim, scale, scores + r, scores_stride);
  });
}

template <typename T, typename Accumulate>
void accumulate_typed(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
                      int64_t row_begin, int64_t row_end, const float* weights, int64_t weights_stride,
                      float* partial, Accumulate accumulate) {
  const int64_t dim = cache.head_dim();
  const int64_t row = dim;  // one KV head's rows are contiguous (sink_cache.h)
  const T* values = reinterpret_cast<const T*>(cache.value_rows(layer, kv_head));
  for (int64_t i = 0; i < group * dim; ++i) partial[i] = 0.0f;
  for_each_run_part(cache, layer, t, row_begin, row_end, [&](int64_t slot, int64_t n_rows, bool, int64_t r) {
    accumulate(values + slot * row, n_rows, row, weights + r, weights_stride, group, dim, partial);
  });
}

}  // namespace

SinkCache::HalfRowFn half_row_conversion(Isa isa) {
  return kernels_for(8, isa).to_half_bits;  // any row length: the kernels convert their tails too
}

int64_t attention_set_size(const SinkCache& cache, int64_t layer, uint64_t t) {
  return cache.span(layer, t).size(t);
}

namespace {

// Q8_0 rows: the query stays single precision (only the cache is quantized).
void scores_q8(const Kernels& k, const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
               const float* q_sink, const float* q_window, float scale, int64_t row_begin, int64_t row_end,
               float* scores, int64_t scores_stride) {
  const ScoreRowsQ8 score = k.score_q8 != nullptr ? k.score_q8 : scalar_kernels().score_q8;
  const int64_t row = (int64_t)cache.head_row_bytes();
  const uint8_t* keys = cache.key_rows(layer, kv_head);
  for_each_run_part(cache, layer, t, row_begin, row_end, [&](int64_t slot, int64_t n_rows, bool sink, int64_t r) {
    prefetch_run_start(cache, layer, kv_head, slot, n_rows);
    score(keys + slot * row, n_rows, row, sink ? q_sink : q_window, group, cache.head_dim(), scale, scores + r,
          scores_stride);
  });
}

void accumulate_q8(const Kernels& k, const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group,
                   uint64_t t, int64_t row_begin, int64_t row_end, const float* weights, int64_t weights_stride,
                   float* partial) {
  const AccumulateRowsQ8 accumulate = k.accumulate_q8 != nullptr ? k.accumulate_q8 : scalar_kernels().accumulate_q8;
  const int64_t row = (int64_t)cache.head_row_bytes();
  const uint8_t* values = cache.value_rows(layer, kv_head);
  for (int64_t i = 0; i < group * cache.head_dim(); ++i) partial[i] = 0.0f;
  for_each_run_part(cache, layer, t, row_begin, row_end, [&](int64_t slot, int64_t n_rows, bool, int64_t r) {
    accumulate(values + slot * row, n_rows, row, weights + r, weights_stride, group, cache.head_dim(), partial);
  });
}

void scores_with(const Kernels& k, const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
                 const float* q_sink, const float* q_window, float scale, int64_t row_begin, int64_t row_end,
                 float* scores, int64_t scores_stride) {
  if (cache.type() == KvType::kQ8_0)
    scores_q8(k, cache, layer, kv_head, group, t, q_sink, q_window, scale, row_begin, row_end, scores, scores_stride);
  else if (cache.type() == KvType::kF16)
    scores_typed<uint16_t>(cache, layer, kv_head, group, t, q_sink, q_window, scale, row_begin, row_end, scores,
                           scores_stride, k.score_f16, k);
  else
    scores_typed<float>(cache, layer, kv_head, group, t, q_sink, q_window, scale, row_begin, row_end, scores,
                        scores_stride, k.score_f32, k);
}

void accumulate_with(const Kernels& k, const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group,
                     uint64_t t, int64_t row_begin, int64_t row_end, const float* weights, int64_t weights_stride,
                     float* partial) {
  if (cache.type() == KvType::kQ8_0)
    accumulate_q8(k, cache, layer, kv_head, group, t, row_begin, row_end, weights, weights_stride, partial);
  else if (cache.type() == KvType::kF16)
    accumulate_typed<uint16_t>(cache, layer, kv_head, group, t, row_begin, row_end, weights, weights_stride, partial,
                               k.accumulate_f16);
  else
    accumulate_typed<float>(cache, layer, kv_head, group, t, row_begin, row_end, weights, weights_stride, partial,
                            k.accumulate_f32);
}

}  // namespace

void attend_scores(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
                   const float* q_sink, const float* q_window, float scale, int64_t row_begin, int64_t row_end,
                   float* scores, int64_t scores_stride) {
  scores_with(kernels_for(cache.head_dim(), active_isa()), cache, layer, kv_head, group, t, q_sink, q_window, scale,
              row_begin, row_end, scores, scores_stride);
}

namespace {
// ScoreBias on one query head's scores, rows in A_l(t) order (sinks, then the window up to t).
void apply_score_bias(const SinkCache& cache, int64_t layer, uint64_t t, int64_t head, const ScoreBias& bias,
                      float* scores, int64_t n) {
  if (bias.alibi_slopes != nullptr) {
    // Distances within the cache: a window member j is t - j behind (the last row is t itself), a
    // sink s is p(t) - s behind, so the bias is contiguous, it never jumps as the window slides.
    const float slope = bias.alibi_slopes[head];
    const AttentionSpan span = cache.span(layer, t);
    const int64_t sink_rows = (int64_t)(span.sink_end - span.sink_begin);
    for (int64_t r = 0; r < sink_rows; ++r)
      scores[r] -= slope * (float)(span.query_position - (span.sink_begin + (uint64_t)r));
    for (int64_t r = sink_rows; r < n; ++r) scores[r] -= slope * (float)(n - 1 - r);
  }
  if (bias.softcap > 0.0f) {  // Gemma 2's attention logit soft-capping
    const float cap = bias.softcap, inverse = 1.0f / bias.softcap;
    for (int64_t r = 0; r < n; ++r) scores[r] = cap * std::tanh(scores[r] * inverse);
  }
}

// The learned sink logit of query head `head` (of the call's group), or -inf for none.
float sink_logit(const ScoreBias& bias, int64_t head) {
  return bias.sink_logits != nullptr ? bias.sink_logits[head] : -INFINITY;
}
}  // namespace

void attend_softmax(const SinkCache& cache, int64_t layer, uint64_t t, int64_t head, const ScoreBias& bias,
                    float* scores, int64_t n) {
  apply_score_bias(cache, layer, t, head, bias, scores, n);
  kernels_for(cache.head_dim(), active_isa()).softmax(scores, n, sink_logit(bias, head), cache.type() == KvType::kF16);
}

void attend_accumulate(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
                       int64_t row_begin, int64_t row_end, const float* weights, int64_t weights_stride,
                       float* partial) {
  accumulate_with(kernels_for(cache.head_dim(), active_isa()), cache, layer, kv_head, group, t, row_begin, row_end,
                  weights, weights_stride, partial);
}

int64_t attend_at_isa(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
                      const float* q_sink, const float* q_window, float scale, const ScoreBias& bias, float* scores,
                      float* out, Isa isa) {
  const int64_t n = attention_set_size(cache, layer, t), width = group * cache.head_dim();
  SS_CHECK_ARG(width <= kMaxGroupDim, "attention: ", group, " query heads x head_dim ", cache.head_dim(),
               " exceeds ", kMaxGroupDim);
  SS_CHECK_ARG(isa_supported(isa), "ISA ", isa_name(isa), " is not available on this CPU (best: ",
               isa_name(best_isa()), ")");
  const Kernels& k = kernels_for(cache.head_dim(), isa);
  // Scores and the weighted sum go in kAttendChunkRows-row pieces (the partial sums added in
  // order): the same bits as a split of those pieces over threads. (Kernels block rows from the
  // start of each call, so the pieces must be the same for the same bits.)
  for (int64_t r = 0; r < n; r += kAttendChunkRows)
    scores_with(k, cache, layer, kv_head, group, t, q_sink, q_window, scale, r, std::min(n, r + kAttendChunkRows),
                scores, n);
  for (int64_t h = 0; h < group; ++h) {
    apply_score_bias(cache, layer, t, h, bias, scores + h * n, n);
    k.softmax(scores + h * n, n, sink_logit(bias, h), cache.type() == KvType::kF16);
  }
  float partial[kMaxGroupDim];
  for (int64_t i = 0; i < width; ++i) out[i] = 0.0f;
  for (int64_t r = 0; r < n; r += kAttendChunkRows) {
    accumulate_with(k, cache, layer, kv_head, group, t, r, std::min(n, r + kAttendChunkRows), scores, n, partial);
    for (int64_t i = 0; i < width; ++i) out[i] += partial[i];
  }
  return n;
}

int64_t attend(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
               const float* q_sink, const float* q_window, float scale, const ScoreBias& bias, float* scores,
               float* out) {
  return attend_at_isa(cache, layer, kv_head, group, t, q_sink, q_window, scale, bias, scores, out, active_isa());
}

}  // namespace sinkstream
