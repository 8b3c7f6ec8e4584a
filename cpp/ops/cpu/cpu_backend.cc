#include "ops/cpu/cpu_backend.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/error.h"
#include "model/model.h"
#include "ops/cpu/activations.h"
#include "ops/cpu/attention_kernels.h"

namespace sinkstream {

CpuBackend::CpuBackend(ThreadPool& pool, int64_t capacity, int64_t n_head, int64_t n_head_kv, int64_t head_dim)
    : pool_(pool), n_head_kv_(n_head_kv), head_dim_(head_dim), group_(n_head / n_head_kv) {
  scores_stride_ = capacity * group_;
  scores_.assign((size_t)(scores_stride_ * pool.n_threads()), 0.0f);
  const int64_t pieces = (capacity + kAttendChunkRows - 1) / kAttendChunkRows;
  spread_scores_.assign((size_t)(n_head * capacity), 0.0f);
  spread_partials_.assign((size_t)(n_head * head_dim * pieces), 0.0f);
  entries_attended_.resize((size_t)pool.n_threads());
}

size_t CpuBackend::bytes_for(int n_threads, int64_t capacity, int64_t n_head, int64_t n_head_kv, int64_t head_dim) {
  const int64_t group = n_head / n_head_kv;
  const int64_t pieces = (capacity + kAttendChunkRows - 1) / kAttendChunkRows;
  const size_t floats = (size_t)(capacity * group * n_threads) + (size_t)(n_head * capacity) +
                        (size_t)(n_head * head_dim * pieces);
  return floats * sizeof(float) + (size_t)n_threads * sizeof(entries_attended_[0]);
}

void CpuBackend::matmul(const WeightMatrix& w, const float* x, int64_t n, float* y) {
  sinkstream::matmul(w, x, n, y, pool_);
}

void CpuBackend::matmul_shared_input(const WeightMatrix* const* ws, float* const* ys, int count, const float* x,
                                     int64_t n) {
  sinkstream::matmul_shared_input(ws, ys, count, x, n, pool_);
}

void CpuBackend::embed(const WeightMatrix& table, const int32_t* ids, int64_t n, float* out) {
  for (int64_t b = 0; b < n; ++b) get_row(table, ids[b], out + b * table.cols);
}

// Row-wise ops over a prompt's chunk are spread over the threads in pieces of at least this many
// values (a serial part of prefill otherwise); a decode step's rows stay inline.
constexpr int64_t kRowOpMinPerTask = 16384;

void CpuBackend::rms_norm(const float* x, const float* weight, int64_t rows, int64_t d, float eps, float* out) {
  pool_.parallel_for(
      rows,
      [&](int64_t begin, int64_t end, int) {
        sinkstream::rms_norm(x + begin * d, weight, end - begin, d, eps, out + begin * d);
      },
      std::max<int64_t>(1, kRowOpMinPerTask / d));
}

void CpuBackend::layer_norm(const float* x, const float* weight, const float* bias, int64_t rows, int64_t d,
                            float eps, float* out) {
  sinkstream::layer_norm(x, weight, bias, rows, d, eps, out);
}

void CpuBackend::activate(FfnActivation act, float* x, int64_t n) {
  switch (act) {
    case FfnActivation::kGelu: gelu_erf_inplace(x, n); break;
    case FfnActivation::kGeluTanh: gelu_tanh_inplace(x, n); break;
    default: SS_ASSERT(!"activate() is for the plain activations");
  }
}

void CpuBackend::clamp(float* x, float limit, int64_t n) { clamp_inplace(x, limit, n); }

GluFn select_glu(FfnActivation act, Isa isa) {
  GluFn fn = isa == Isa::Avx512 ? avx512_glu(act) : isa == Isa::Avx2 ? avx2_glu(act) : nullptr;
  if (fn != nullptr) return fn;
  switch (act) {
    case FfnActivation::kSwiGlu: return silu_mul;
    case FfnActivation::kSwiGluOai: return swiglu_oai_mul;
    case FfnActivation::kGeGlu: return gelu_tanh_mul;
    default: SS_ASSERT(!"glu() is for the gated activations"); return nullptr;
  }
}

// Spread over the threads in pieces of at least kGluMinPerTask values (one exp each): prefill of
// 64 tokens on a 1536-wide feed-forward is 98,304 of them per layer.
constexpr int64_t kGluMinPerTask = 4096;

void CpuBackend::glu(FfnActivation act, const float* gate, const float* up, int64_t rows, int64_t width,
                     int64_t stride, float* out) {
  const GluFn fn = select_glu(act, active_isa());
  if (stride == width) {  // contiguous rows: one range of values
    pool_.parallel_for(
        rows * width, [&](int64_t begin, int64_t end, int) { fn(gate + begin, up + begin, end - begin, out + begin); },
        kGluMinPerTask);
  } else {
    pool_.parallel_for(
        rows,
        [&](int64_t begin, int64_t end, int) {
          for (int64_t r = begin; r < end; ++r) fn(gate + r * stride, up + r * stride, width, out + r * width);
        },
        std::max<int64_t>(1, kGluMinPerTask / width));
  }
}

void CpuBackend::add(float* y, const float* x, float scale, int64_t n) {
  if (scale == 1.0f)
    add_inplace(y, x, n);
  else
    add_scaled_inplace(y, x, scale, n);
}

void CpuBackend::scale(float* x, float s, int64_t n) { scale_inplace(x, s, n); }

void CpuBackend::soft_cap(float* x, float cap, int64_t n) { soft_cap_inplace(x, cap, n); }

void CpuBackend::rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, RopeLayout layout, const float* cos,
                      const float* sin) {
  rope_apply(x, n_heads, head_dim, n_rot, layout, cos, sin);
}

// Host memory: the activations are the scratch's own vectors, and moving data is a memcpy (or
// nothing, when the "upload" is to where the data already is).
void CpuBackend::bind_scratch(ForwardScratch& s) { s.buf = host_buffers(s); }

void CpuBackend::upload(float* dst, const float* host_src, int64_t n) {
  if (dst != host_src) std::memcpy(dst, host_src, (size_t)n * sizeof(float));
}

void CpuBackend::download(float* host_dst, const float* src, int64_t n) {
  if (host_dst != src) std::memcpy(host_dst, src, (size_t)n * sizeof(float));
}

void CpuBackend::copy_rows(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
                           int64_t width) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * dst_stride, src + r * src_stride, (size_t)width * sizeof(float));
}

void CpuBackend::add_bias(float* y, const float* bias, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) add_inplace(y + r * d, bias, d);
}

void CpuBackend::store_kv(SinkCache& cache, int64_t layer, uint64_t t, const float* key, const float* value) {
  static const SinkCache::HalfRowFn to_half = half_row_conversion(active_isa());
  cache.store(layer, t, key, value, to_half);
}

uint64_t CpuBackend::entries_attended() const {
  uint64_t total = 0;
  for (const Counter& c : entries_attended_) total += c.value;
  return total;
}

// attend() for every KV head of one token, its three phases each spread over the threads: scores
// and weighted sums in kAttendChunkRows-row pieces of A_l(t), the softmax per query head (ops.h).
// Costs two more hand-offs between threads than one task per KV head, and balances the work.
void CpuBackend::attend_across_threads(const AttentionCall& call, int64_t b) {
  const SinkCache& cache = *call.cache;
  const uint64_t t = call.t0 + (uint64_t)b;
  const int64_t q_dim = call.n_head * head_dim_;
  const float* q_window = call.q + b * q_dim;
  const float* q_sink =
      call.separate_sink_query != nullptr && call.separate_sink_query[b] ? call.q_sink + b * q_dim : q_window;
  float* out = call.out + b * q_dim;
  const int64_t n_rows = attention_set_size(cache, call.layer, t);
  const int64_t n_pieces = (n_rows + kAttendChunkRows - 1) / kAttendChunkRows;
  const int64_t width = group_ * head_dim_;       // one KV head's query heads, contiguous
  float* scores = spread_scores_.data();          // (n_head_kv, group, n_rows)
  float* partials = spread_partials_.data();      // (n_head_kv, n_pieces, width)
  const auto piece_rows = [&](int64_t piece) {
    return std::make_pair(piece * kAttendChunkRows, std::min(n_rows, (piece + 1) * kAttendChunkRows));
  };
  pool_.run(n_head_kv_ * n_pieces, [&](int64_t task, int) {
    const int64_t kv = task / n_pieces;
    const auto [begin, end] = piece_rows(task % n_pieces);
    attend_scores(cache, call.layer, kv, group_, t, q_sink + kv * width, q_window + kv * width, call.scale, begin,
                  end, scores + kv * group_ * n_rows, n_rows);
  });
  const ScoreBias bias{call.alibi_slopes, call.softcap, call.sink_logits};  // head: the query head, 0 .. n_head
  pool_.run(n_head_kv_ * group_, [&](int64_t head, int) {
    attend_softmax(cache, call.layer, t, head, bias, scores + head * n_rows, n_rows);
  });
  pool_.run(n_head_kv_ * n_pieces, [&](int64_t task, int) {
    const int64_t kv = task / n_pieces;
    const auto [begin, end] = piece_rows(task % n_pieces);
    attend_accumulate(cache, call.layer, kv, group_, t, begin, end, scores + kv * group_ * n_rows, n_rows,
                      partials + task * width);
  });
  for (int64_t kv = 0; kv < n_head_kv_; ++kv) {  // the partial sums in attend()'s order
    float* o = out + kv * width;
    for (int64_t i = 0; i < width; ++i) o[i] = 0.0f;
    for (int64_t piece = 0; piece < n_pieces; ++piece)
      for (int64_t i = 0; i < width; ++i) o[i] += partials[(kv * n_pieces + piece) * width + i];
  }
  entries_attended_[0].value += (uint64_t)(n_rows * call.n_head);
}

int64_t CpuBackend::attend_pair(const AttentionCall& call, int64_t b, int64_t kv_head, int thread) {
  const int64_t q_dim = call.n_head * head_dim_;
  const int64_t first = b * q_dim + kv_head * group_ * head_dim_;  // the group's query heads are contiguous
  const float* q = call.q + first;
  const float* qs = call.separate_sink_query != nullptr && call.separate_sink_query[b] ? call.q_sink + first : q;
  // The group's slopes: head h of the group is query head kv_head * group + h.
  const ScoreBias bias{call.alibi_slopes != nullptr ? call.alibi_slopes + kv_head * group_ : nullptr, call.softcap,
                       call.sink_logits != nullptr ? call.sink_logits + kv_head * group_ : nullptr};
  const int64_t rows = attend(*call.cache, call.layer, kv_head, group_, call.t0 + (uint64_t)b, qs, q, call.scale,
                              bias, scores_.data() + thread * scores_stride_, call.out + first);
  return rows * group_;
}

// Decode deep in a stream gives too few (token, KV head) pairs to keep every thread busy: then
// each token's attention is spread over the threads in pieces of its A_l(t) (the same bits).
static bool too_few_pairs(int64_t pairs, int n_threads) { return pairs < 2 * n_threads; }

void CpuBackend::attention(const AttentionCall& call) {
  SS_ASSERT(call.n_head == n_head_kv_ * group_);
  // Every (token, KV head) pair attends independently with its group of query heads: all keys of
  // the chunk are already stored, and the ring's slack keeps each query's whole A_l(t) in place.
  if (too_few_pairs(call.n * n_head_kv_, pool_.n_threads()) &&
      attention_set_size(*call.cache, call.layer, call.t0) > kAttendChunkRows) {
    for (int64_t b = 0; b < call.n; ++b) attend_across_threads(call, b);
    return;
  }
  pool_.run(call.n * n_head_kv_, [&](int64_t task, int thread) {
    entries_attended_[(size_t)thread].value += (uint64_t)attend_pair(call, task / n_head_kv_, task % n_head_kv_, thread);
  });
}

// A batched step's segments: the (token, KV head) pairs of every call in one run, so the threads
// share them out together (one call of a decoding session has only n_head_kv pairs, too few to
// split evenly over the threads, and a run per call would add a hand-off each).
void CpuBackend::attention_calls(const AttentionCall* calls, int64_t count, uint64_t* entries) {
  int64_t pairs = 0;
  pair_start_.assign(1, 0);
  for (int64_t i = 0; i < count; ++i) {
    SS_ASSERT(calls[i].n_head == n_head_kv_ * group_);
    pairs += calls[i].n * n_head_kv_;
    pair_start_.push_back(pairs);
  }
  if (count == 1 || too_few_pairs(pairs, pool_.n_threads())) {
    Backend::attention_calls(calls, count, entries);
    return;
  }
  pair_entries_.assign((size_t)pairs, 0);
  pool_.run(pairs, [&](int64_t task, int thread) {
    const int64_t i = std::upper_bound(pair_start_.begin(), pair_start_.end(), task) - pair_start_.begin() - 1;
    const int64_t pair = task - pair_start_[(size_t)i];
    pair_entries_[(size_t)task] = attend_pair(calls[i], pair / n_head_kv_, pair % n_head_kv_, thread);
  });
  for (int64_t i = 0; i < count; ++i) {
    entries[i] = 0;
    for (int64_t task = pair_start_[(size_t)i]; task < pair_start_[(size_t)i + 1]; ++task)
      entries[i] += (uint64_t)pair_entries_[(size_t)task];
    entries_attended_[0].value += entries[i];
  }
}

}  // namespace sinkstream
