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
#include <algorithm>
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

// ---- tiles of queries (prefill) ------------------------------------------------------------------
// Consecutive queries of a pass share most of their attention sets, so the prefill kernel reads each
// key and value once per tile of kTileQueries queries instead of once per query. A tile walks the
// union of its queries' sets as candidates: the sink slots [sink_begin, sink_begin + n_sink_slots),
// then n_window_slots ring slots from window_first_slot. Each query keeps exactly its own set:
// tile_candidate_row() says which of its rows a candidate is, or that it is not one of them.
constexpr int64_t kTileQueries = 16;

struct AttentionTilePlan {
  int64_t first_query = 0, n_queries = 0;
  int64_t sink_begin = 0, n_sink_slots = 0;
  int64_t window_first_slot = 0, n_window_slots = 0;
};

// Distance forward on the ring from `from` to `to` (two window slots, or two offsets into the ring),
// 0 .. ring_slots - 1.
SS_HD int64_t ring_offset(int64_t from, int64_t to, int64_t ring_slots) {
  const int64_t d = to - from;
  return d < 0 ? d + ring_slots : d;
}

// The tile of plans[first .. first + count - 1].
inline AttentionTilePlan plan_attention_tile(const AttentionRowPlan* plans, int64_t first, int64_t count,
                                             int64_t ring_slots) {
  AttentionTilePlan tile;
  tile.first_query = first;
  tile.n_queries = count;
  int64_t sink_end = 0;
  bool has_sinks = false, has_window = false;
  for (int64_t b = first; b < first + count; ++b) {
    const AttentionRowPlan& p = plans[b];
    if (p.n_sink_rows > 0) {
      tile.sink_begin = has_sinks ? std::min(tile.sink_begin, p.sink_begin) : p.sink_begin;
      sink_end = has_sinks ? std::max(sink_end, p.sink_begin + p.n_sink_rows) : p.sink_begin + p.n_sink_rows;
      has_sinks = true;
    }
    if (p.n_window_rows > 0) {
      if (!has_window) tile.window_first_slot = p.window_first_slot;
      has_window = true;
      // Each query's window as an offset from the tile's first window slot; the union ends at the
      // farthest end, and never holds a ring slot twice.
      const int64_t end = ring_offset(tile.window_first_slot, p.window_first_slot, ring_slots) + p.n_window_rows;
      tile.n_window_slots = std::min(ring_slots, std::max(tile.n_window_slots, end));
    }
  }
  tile.n_sink_slots = has_sinks ? sink_end - tile.sink_begin : 0;
  return tile;
}

SS_HD int64_t tile_candidates(const AttentionTilePlan& t) { return t.n_sink_slots + t.n_window_slots; }

// The cache slot of candidate c of the tile.
SS_HD int64_t tile_candidate_slot(const AttentionTilePlan& t, int64_t c, int64_t n_sink, int64_t ring_slots) {
  if (c < t.n_sink_slots) return t.sink_begin + c;
  return n_sink + (t.window_first_slot - n_sink + (c - t.n_sink_slots)) % ring_slots;
}

// The row of query plan p that candidate c is, or -1 when c is not in p's set.
SS_HD int64_t tile_candidate_row(const AttentionTilePlan& t, const AttentionRowPlan& p, int64_t c,
                                 int64_t ring_slots) {
  if (c < t.n_sink_slots) {
    const int64_t slot = t.sink_begin + c;
    return slot >= p.sink_begin && slot < p.sink_begin + p.n_sink_rows ? slot - p.sink_begin : -1;
  }
  if (p.n_window_rows == 0) return -1;
  const int64_t into = ring_offset(ring_offset(t.window_first_slot, p.window_first_slot, ring_slots),
                                   c - t.n_sink_slots, ring_slots);
  return into < p.n_window_rows ? p.n_sink_rows + into : -1;
}

// The slot a token's key and value are stored in (SinkCache::store's row).
inline int64_t store_slot(const SinkCache& cache, int64_t layer, uint64_t t) { return cache.slot_of(layer, t); }

}  // namespace sinkstream::cuda
