// What the CUDA attention kernel needs to know about each query's attention set, computed on the
// host from the SinkCache itself (span(layer, t), slot_of, window_position: the same logic as the
// CPU; sink_cache.h) and uploaded per call: the kernel never decides positions or membership.
//
// A_l(t) is walked as rows 0 .. size-1 in token order (sinks first, then the window up to t), as
// the CPU kernels do (attention.cc, collect_runs). row_slot() and alibi_distance() are shared by the
// kernel and the host (SS_HD), so the host can check, without a GPU, that every row the kernel would
// read is the slot SinkCache::slot_of names and that its ALiBi distance is the CPU's
// (tests/test_cuda.py, test_attention_plan_matches_sink_cache).
#pragma once
#include <cstdint>

#include "kv/sink_cache.h"
#include "ops/cuda/block_decode.h"  // SS_HD

namespace sinkstream::cuda {

struct AttentionRowPlan {
  int64_t sink_begin = 0;         // first sink token (its slot is its index)
  int64_t n_sink_rows = 0;        // sinks in A_l(t)
  int64_t window_first_slot = 0;  // slot_of(layer, window_begin)
  int64_t n_window_rows = 0;      // window tokens window_begin .. t
  int64_t query_position = 0;     // p(t)
  int64_t separate_sink_query = 0;  // 1: the sinks are scored against the query rotated at p(t)
};

// The plan of query t in `layer` (ring of ring_slots slots after n_sink sink slots).
inline AttentionRowPlan plan_attention_row(const SinkCache& cache, int64_t layer, uint64_t t, bool separate) {
  const AttentionSpan span = cache.span(layer, t);
  AttentionRowPlan p;
  p.sink_begin = (int64_t)span.sink_begin;
  p.n_sink_rows = (int64_t)(span.sink_end - span.sink_begin);
  p.n_window_rows = t >= span.window_begin ? (int64_t)(t + 1 - span.window_begin) : 0;
  p.window_first_slot = p.n_window_rows > 0 ? cache.slot_of(layer, span.window_begin) : cache.n_sink();
  p.query_position = (int64_t)span.query_position;
  p.separate_sink_query = separate ? 1 : 0;
  return p;
}

SS_HD int64_t plan_rows(const AttentionRowPlan& p) { return p.n_sink_rows + p.n_window_rows; }

// The cache slot of row r (the ring wraps after n_sink + ring_slots - 1).
SS_HD int64_t row_slot(const AttentionRowPlan& p, int64_t r, int64_t n_sink, int64_t ring_slots) {
  if (r < p.n_sink_rows) return p.sink_begin + r;
  const int64_t w = r - p.n_sink_rows;
  return n_sink + (p.window_first_slot - n_sink + w) % ring_slots;
}

// p(t) - p(row): what ALiBi multiplies by the slope (ops.h ScoreBias; attention.cc apply_score_bias).
SS_HD int64_t alibi_distance(const AttentionRowPlan& p, int64_t r) {
  if (r < p.n_sink_rows) return p.query_position - (p.sink_begin + r);
  return plan_rows(p) - 1 - r;
}

// The slot a token's key and value are stored in (SinkCache::store's row).
inline int64_t store_slot(const SinkCache& cache, int64_t layer, uint64_t t) { return cache.slot_of(layer, t); }

}  // namespace sinkstream::cuda
