// SinkCache::span and slot_of against a brute-force reading of docs/streaming.md:
//   A(t) = {0 .. min(S, t+1)-1} U {max(S, t-W+1) .. t}, a token's position is its rank in sorted A(t),
//   so the query sits at p(t) = |A(t)| - 1 = min(t, C-1).
// Checked for many S, W, t, including t near 2^32 and 2^63 (a stream counter never wraps in
// practice), plus the ring property: while a chunk of up to max_chunk queries is processed, every
// token any of them attends to is still in its own slot (no later token of the chunk overwrote it).
// A second layer with a sliding window w attends to A(t) ∩ {t-w+1 .. t} ("Models whose layers
// differ") from a ring of its own, smaller one: the same checks run on it.
#include <algorithm>
#include <cstring>
#include <cstdint>
#include <set>
#include <vector>

#include "check.h"
#include "kv/sink_cache.h"
#include "core/fp16.h"

using namespace sinkstream;

namespace {

// A(t) materialized: the definition's two index sets, enumerated element by element and merged.
std::vector<uint64_t> brute_force_attention_set(uint64_t t, uint64_t S, uint64_t W) {
  std::set<uint64_t> set;
  for (uint64_t j = 0; j < S && j <= t; ++j) set.insert(j);  // {0 .. min(S, t+1)-1}
  // {max(S, t-W+1) .. t}: walk down from t, W tokens at most, never below S or 0.
  for (uint64_t k = 0; k < W; ++k) {
    if (k > t) break;
    const uint64_t j = t - k;
    if (j < S) break;
    set.insert(j);
  }
  return std::vector<uint64_t>(set.begin(), set.end());
}

// A_l(t): A(t) without the members older than the layer's window (w = 0: a global layer).
std::vector<uint64_t> brute_force_layer_set(uint64_t t, uint64_t S, uint64_t W, uint64_t w) {
  std::vector<uint64_t> a = brute_force_attention_set(t, S, W);
  if (w == 0) return a;
  std::vector<uint64_t> kept;
  for (uint64_t j : a)
    if (t - j < w) kept.push_back(j);
  return kept;
}

void check_span(const SinkCache& cache, int64_t layer, uint64_t t) {
  const uint64_t S = (uint64_t)cache.n_sink(), W = (uint64_t)cache.window(), C = S + W;
  const std::vector<uint64_t> all = brute_force_attention_set(t, S, W);
  const std::vector<uint64_t> a = brute_force_layer_set(t, S, W, (uint64_t)cache.layer_window(layer));
  const AttentionSpan span = cache.span(layer, t);
  // The span's two ranges list exactly A_l(t), in order.
  std::vector<uint64_t> from_span;
  for (uint64_t j = span.sink_begin; j < span.sink_end && j <= C; ++j) from_span.push_back(j);
  // (bounded: a wrong span with a far window_begin must fail the comparison, not loop for ages)
  for (uint64_t j = span.window_begin; j <= t && from_span.size() <= C + 1; ++j) {
    from_span.push_back(j);
    if (j == UINT64_MAX) break;
  }
  CHECK(from_span == a, "S", S, "W", W, "layer", layer, "t", t, "sink_end", span.sink_end, "window_begin",
        span.window_begin);
  CHECK_EQ(span.size(t), (int64_t)a.size(), "S", S, "W", W, "layer", layer, "t", t);
  CHECK(span.sink_end <= S, "S", S, "t", t);
  // The query is the last element of A(t) in every layer: its rank is |A(t)| - 1 = min(t, C - 1).
  CHECK_EQ(span.query_position, (uint64_t)all.size() - 1, "S", S, "W", W, "t", t);
  CHECK_EQ(span.query_position, std::min<uint64_t>(t, C - 1), "S", S, "W", W, "t", t);
  CHECK(!a.empty() && a.back() == t, "S", S, "W", W, "t", t);
}

// Queries t0 .. t0+m-1 run after all m keys were stored. Every token any of them attends to must
// hold its own slot: distinct slots among all tokens in [first attended, t0+m-1], sinks apart.
void check_ring(const SinkCache& cache, int64_t layer, uint64_t t0, uint64_t m) {
  const uint64_t S = (uint64_t)cache.n_sink();
  const uint64_t last = t0 + m - 1;
  std::set<uint64_t> needed;
  for (uint64_t t = t0; t <= last; ++t)
    for (uint64_t j : brute_force_layer_set(t, S, (uint64_t)cache.window(), (uint64_t)cache.layer_window(layer)))
      needed.insert(j);
  // Tokens written up to `last` that share a slot with a needed token and came after it would have
  // overwritten it. Check every token in [min needed window token, last].
  uint64_t lowest_window = UINT64_MAX;  // stays so when every needed token is a sink
  for (uint64_t j : needed)
    if (j >= S) lowest_window = std::min(lowest_window, j);
  bool ok = true;
  std::vector<uint64_t> owner_token((size_t)cache.n_slots(layer), 0);
  std::vector<bool> used((size_t)cache.n_slots(layer), false);
  for (uint64_t j = lowest_window; j <= last && lowest_window != UINT64_MAX; ++j) {
    const int64_t slot = cache.slot_of(layer, j);
    if (slot < cache.n_sink() || slot >= cache.n_slots(layer)) { ok = false; break; }
    if (used[(size_t)slot] && needed.count(owner_token[(size_t)slot])) { ok = false; break; }
    used[(size_t)slot] = true;
    owner_token[(size_t)slot] = j;
  }
  for (uint64_t j : needed)
    if (j < S && cache.slot_of(layer, j) != (int64_t)j) ok = false;
  CHECK(ok, "S", S, "W", cache.window(), "layer", layer, "ring", cache.ring_slots(layer), "t0", t0, "chunk", m);
}

}  // namespace

int main() {
  const uint64_t kFar[] = {(1ull << 32) - 3, 1ull << 40, (1ull << 62) + 7, (1ull << 63) - 5, 1ull << 63,
                           (1ull << 63) + 123};
  int n_configs = 0;
  for (int64_t S : {0, 1, 2, 4, 7}) {
    for (int64_t W : {1, 2, 3, 5, 16, 33}) {
      for (int64_t max_chunk : {1, 3, 8}) {
        for (int64_t local_window : {1, 3, 6, 40}) {  // below, around and above S + W
          const SinkCache cache(2, 1, 2, S, W, max_chunk, KvType::kF32, 0, {0, local_window});
          CHECK_EQ(cache.capacity(), S + W);
          CHECK_EQ(cache.ring_slots(0), W + max_chunk - 1);
          CHECK_EQ(cache.ring_slots(1), std::min(W, local_window) + max_chunk - 1);  // its own window only
          ++n_configs;
          for (int64_t layer : {0, 1}) {
            for (uint64_t t = 0; t < 200; ++t) check_span(cache, layer, t);
            for (uint64_t far : kFar)
              for (uint64_t d = 0; d < 40; ++d) check_span(cache, layer, far + d);
            // Chunks of every size up to max_chunk, starting anywhere (near the start and far out).
            for (uint64_t m = 1; m <= (uint64_t)max_chunk; ++m) {
              for (uint64_t t0 = 0; t0 < 120; ++t0) check_ring(cache, layer, t0, m);
              for (uint64_t far : kFar)
                for (uint64_t d = 0; d < 20; ++d) check_ring(cache, layer, far + d, m);
            }
          }
        }
      }
    }
  }
  std::fprintf(stderr, "span and ring checked for %d (S, W, chunk, local window) configurations\n", n_configs);

  // store() writes token j's rows into slot_of(j) of each head's rows, converted to the storage
  // type; copy_out() gives them back head after head, and copy_in() of those bytes restores them.
  for (KvType type : {KvType::kF32, KvType::kF16}) {
    SinkCache cache(2, 2, 3, 2, 4, 2, type);
    const int64_t n = cache.row_elements(), dim = cache.head_dim();
    const size_t eb = cache.head_row_bytes() / (size_t)dim;  // bytes per element (f32, f16)
    for (uint64_t j = 0; j < 30; ++j) {
      std::vector<float> k((size_t)n), v((size_t)n);
      for (int64_t i = 0; i < n; ++i) {
        k[(size_t)i] = (float)j + 0.25f * (float)i;
        v[(size_t)i] = -(float)j - 0.5f * (float)i;
      }
      const int64_t layer = (int64_t)(j % 2);
      cache.store(layer, j, k.data(), v.data());
      const auto element = [&](const uint8_t* p) {
        if (type == KvType::kF32) {
          float f;
          std::memcpy(&f, p, 4);
          return f;
        }
        uint16_t h;
        std::memcpy(&h, p, 2);
        return fp16_to_f32(h);
      };
      for (int64_t i = 0; i < n; ++i) {
        const int64_t head = i / dim;
        const size_t at = ((size_t)cache.slot_of(layer, j) * (size_t)dim + (size_t)(i % dim)) * eb;
        CHECK_EQ(element(cache.key_rows(layer, head) + at), k[(size_t)i], "token", j, "element", i);  // exact in f16
        CHECK_EQ(element(cache.value_rows(layer, head) + at), v[(size_t)i], "token", j, "element", i);
      }
      std::vector<uint8_t> kb((size_t)n * eb), vb((size_t)n * eb);
      cache.copy_out(layer, j, kb.data(), vb.data());
      for (int64_t i = 0; i < n; ++i) {
        CHECK_EQ(element(kb.data() + (size_t)i * eb), k[(size_t)i], "copy_out token", j, "element", i);
        CHECK_EQ(element(vb.data() + (size_t)i * eb), v[(size_t)i], "copy_out token", j, "element", i);
      }
      SinkCache restored(2, 2, 3, 2, 4, 2, type);
      restored.copy_in(layer, j, kb.data(), vb.data());
      for (int64_t head = 0; head < cache.n_head_kv(); ++head) {
        const size_t at = (size_t)cache.slot_of(layer, j) * cache.head_row_bytes();
        CHECK(std::memcmp(restored.key_rows(layer, head) + at, cache.key_rows(layer, head) + at,
                          cache.head_row_bytes()) == 0, "copy_in keys, token", j, "head", head);
        CHECK(std::memcmp(restored.value_rows(layer, head) + at, cache.value_rows(layer, head) + at,
                          cache.head_row_bytes()) == 0, "copy_in values, token", j, "head", head);
      }
    }
  }
  // A device session's host twin (Session::save / load): the geometry of a cache without host
  // storage, every slot of every layer (local windows included) where the original puts it, all zeros.
  {
    const std::vector<int64_t> windows = {0, 3};
    SinkCache device_side(2, 2, 8, 2, 5, 4, KvType::kF16, 7, windows, true, /*host_storage=*/false);
    CHECK(!device_side.has_host_storage());
    SinkCache twin = device_side.with_host_storage();
    CHECK(twin.has_host_storage() && twin.bytes() == device_side.bytes() && twin.position_offset() == 7);
    for (int64_t layer = 0; layer < 2; ++layer) {
      CHECK_EQ(twin.layer_window(layer), device_side.layer_window(layer));
      CHECK_EQ(twin.n_slots(layer), device_side.n_slots(layer));
      for (uint64_t j = 0; j < 40; ++j) CHECK_EQ(twin.slot_of(layer, j), device_side.slot_of(layer, j));
    }
    bool zeros = true;
    for (size_t i = 0; i < twin.bytes() / 2; ++i) zeros = zeros && twin.key_storage()[i] == 0 && twin.value_storage()[i] == 0;
    CHECK(zeros, "a twin starts as zeros");
    SinkCache on_host(2, 2, 8, 2, 5, 4, KvType::kF16, 7, windows, true);
    CHECK(twin.key_rows(1, 1) - twin.key_storage() == on_host.key_rows(1, 1) - on_host.key_storage(),
          "the twin's layer and head offsets are the layout's");
  }
  return sinkstream_test::check_summary("test_sink_cache");
}
