#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "core/error.h"
#include "model/weights.h"

namespace sinkstream {

LlamaModel::LlamaModel(std::shared_ptr<GgufFile> file) : Model(std::move(file)) {
  ModelConfig& c = config_;
  const WeightBinder bind(*file_);
  const int64_t q_dim = c.n_head * c.head_dim;
  const int64_t kv_dim = c.n_head_kv * c.head_dim;

  const GgufTensorInfo& embd = bind.require("token_embd.weight");
  if (embd.dims.size() != 2 || embd.dims[0] != c.n_embd)
    throw ModelError(cat(file_->path(), ": tensor 'token_embd.weight' has shape ", shape_string(embd.dims),
                         ", expected (", c.n_embd, ", n_vocab)"));
  c.n_vocab = embd.dims[1];
  token_embd_ = bind.matrix("token_embd.weight", c.n_vocab, c.n_embd);
  output_norm_ = bind.vector("output_norm.weight", c.n_embd);
  output_ = file_->find_tensor("output.weight") ? bind.matrix("output.weight", c.n_vocab, c.n_embd) : token_embd_;
  if (tokenizer_ && tokenizer_->n_vocab() > c.n_vocab)
    throw ModelError(cat(file_->path(), ": the tokenizer has ", tokenizer_->n_vocab(),
                         " tokens but token_embd.weight only ", c.n_vocab, " rows"));

  layers_.resize((size_t)c.n_layer);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    LlamaLayer& L = layers_[(size_t)i];
    const std::string p = cat("blk.", i, ".");
    L.attn_norm = bind.vector(p + "attn_norm.weight", c.n_embd);
    L.wq = bind.matrix(p + "attn_q.weight", q_dim, c.n_embd);
    L.wk = bind.matrix(p + "attn_k.weight", kv_dim, c.n_embd);
    L.wv = bind.matrix(p + "attn_v.weight", kv_dim, c.n_embd);
    L.bq = bind.optional_vector(p + "attn_q.bias", q_dim);
    L.bk = bind.optional_vector(p + "attn_k.bias", kv_dim);
    L.bv = bind.optional_vector(p + "attn_v.bias", kv_dim);
    L.wo = bind.matrix(p + "attn_output.weight", c.n_embd, q_dim);
    L.ffn_norm = bind.vector(p + "ffn_norm.weight", c.n_embd);
    L.w_gate = bind.matrix(p + "ffn_gate.weight", c.n_ff, c.n_embd);
    L.w_up = bind.matrix(p + "ffn_up.weight", c.n_ff, c.n_embd);
    L.w_down = bind.matrix(p + "ffn_down.weight", c.n_embd, c.n_ff);
  }
}

namespace {
// attend() for every KV head of one token, its three phases each spread over the threads: scores
// and weighted sums in kAttendChunkRows-row pieces of A(t), the softmax per query head (ops.h).
// Costs two more hand-offs between threads than one task per KV head, and balances the work.
void attend_across_threads(const SinkCache& cache, int64_t layer, int64_t n_head_kv, int64_t group, uint64_t t,
                           const float* q_sink, const float* q_window, float scale, ForwardScratch& s,
                           ThreadPool& pool, float* out) {
  const int64_t n_rows = attention_set_size(cache, t);
  const int64_t n_pieces = (n_rows + kAttendChunkRows - 1) / kAttendChunkRows;
  const int64_t width = group * cache.head_dim();       // one KV head's query heads, contiguous
  float* scores = s.spread_scores.data();                // (n_head_kv, group, n_rows)
  float* partials = s.spread_partials.data();            // (n_head_kv, n_pieces, width)
  const auto piece_rows = [&](int64_t piece) {
    return std::make_pair(piece * kAttendChunkRows, std::min(n_rows, (piece + 1) * kAttendChunkRows));
  };
  pool.run(n_head_kv * n_pieces, [&](int64_t task, int) {
    const int64_t kv = task / n_pieces;
    const auto [begin, end] = piece_rows(task % n_pieces);
    attend_scores(cache, layer, kv, group, t, q_sink + kv * width, q_window + kv * width, scale, begin, end,
                  scores + kv * group * n_rows, n_rows);
  });
  pool.run(n_head_kv * group, [&](int64_t head, int) { attend_softmax(cache, scores + head * n_rows, n_rows); });
  pool.run(n_head_kv * n_pieces, [&](int64_t task, int) {
    const int64_t kv = task / n_pieces;
    const auto [begin, end] = piece_rows(task % n_pieces);
    attend_accumulate(cache, layer, kv, group, t, begin, end, scores + kv * group * n_rows, n_rows,
                      partials + task * width);
  });
  for (int64_t kv = 0; kv < n_head_kv; ++kv) {  // the partial sums in attend()'s order
    float* o = out + kv * width;
    for (int64_t i = 0; i < width; ++i) o[i] = 0.0f;
    for (int64_t piece = 0; piece < n_pieces; ++piece)
      for (int64_t i = 0; i < width; ++i) o[i] += partials[(kv * n_pieces + piece) * width + i];
  }
}

void add_bias(float* y, const std::vector<float>& bias, int64_t n) {
  if (bias.empty()) return;
  const int64_t d = (int64_t)bias.size();
  for (int64_t t = 0; t < n; ++t) add_inplace(y + t * d, bias.data(), d);
}
}  // namespace

void LlamaModel::forward(const int32_t* tokens, int64_t n, uint64_t t0, SinkCache& cache, ForwardScratch& s,
                         ThreadPool& pool, float* logits, bool all_logits) const {
  const ModelConfig& c = config_;
  SS_ASSERT(n >= 1 && n <= s.max_tokens);
  const int64_t E = c.n_embd, hd = c.head_dim, q_dim = c.n_head * hd, kv_dim = c.n_head_kv * hd;
  const int64_t n_freq = c.n_rot / 2;
  const int64_t group = c.n_head / c.n_head_kv;  // query heads per KV head (GQA)
  const float scale = 1.0f / std::sqrt((float)hd);

  for (int64_t b = 0; b < n; ++b) get_row(token_embd_, tokens[b], s.x.data() + b * E);

  // RoPE tables for this chunk: at window_position(t) for the window query and window keys, at
  // p(t) for the sink query and sink keys (sink_cache.h). Usually equal; then one copy of q serves.
  std::vector<uint8_t>& separate_sink_query = s.separate_sink_query;
  bool any_sink_query = false;
  for (int64_t b = 0; b < n; ++b) {
    const uint64_t t = t0 + (uint64_t)b;
    const uint64_t window_pos = cache.window_position(t), sink_pos = cache.span(t).query_position;
    rope_cos_sin(window_pos, rope_thetas_.data(), n_freq, &s.rope_cos[b * n_freq], &s.rope_sin[b * n_freq]);
    separate_sink_query[b] = sink_pos != window_pos;
    if (separate_sink_query[b]) {
      rope_cos_sin(sink_pos, rope_thetas_.data(), n_freq, &s.rope_cos_sink[b * n_freq], &s.rope_sin_sink[b * n_freq]);
      any_sink_query = true;
    }
  }
  // A key is rotated once, at its own position: sinks (t < n_sink) at their rank t = p(t).
  const auto key_table = [&](int64_t b, bool sine) -> const float* {
    const bool sink = t0 + (uint64_t)b < (uint64_t)cache.n_sink() && separate_sink_query[b];
    return (sink ? (sine ? s.rope_sin_sink : s.rope_cos_sink) : (sine ? s.rope_sin : s.rope_cos)).data() + b * n_freq;
  };

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LlamaLayer& L = layers_[(size_t)l];
    rms_norm(s.x.data(), L.attn_norm.data(), n, E, c.rms_eps, s.h.data());
    {
      const WeightMatrix* ws[3] = {&L.wq, &L.wk, &L.wv};
      float* ys[3] = {s.q.data(), s.k.data(), s.v.data()};
      matmul_shared_input(ws, ys, 3, s.h.data(), n, pool);  // q (n, q_dim), k and v (n, kv_dim)
    }
    add_bias(s.q.data(), L.bq, n);
    add_bias(s.k.data(), L.bk, n);
    add_bias(s.v.data(), L.bv, n);

    for (int64_t b = 0; b < n; ++b) {
      const uint64_t t = t0 + (uint64_t)b;
      float* k = s.k.data() + b * kv_dim;
      float* q = s.q.data() + b * q_dim;
      rope_apply(k, c.n_head_kv, hd, c.n_rot, c.rope_layout, key_table(b, false), key_table(b, true));
      s.keys_rotated += 1;
      cache.store(l, t, k, s.v.data() + b * kv_dim);  // written once, never rotated again
      if (any_sink_query && separate_sink_query[b]) {
        float* qs = s.q_sink.data() + b * q_dim;
        std::memcpy(qs, q, (size_t)q_dim * sizeof(float));
        rope_apply(qs, c.n_head, hd, c.n_rot, c.rope_layout, &s.rope_cos_sink[b * n_freq],
                   &s.rope_sin_sink[b * n_freq]);
      }
      rope_apply(q, c.n_head, hd, c.n_rot, c.rope_layout, &s.rope_cos[b * n_freq], &s.rope_sin[b * n_freq]);
    }

    // Every (token, KV head) pair attends independently with its group of query heads: all keys
    // of the chunk are already stored, and the ring's slack keeps each query's whole A(t) in place.
    if (n * c.n_head_kv < 2 * pool.n_threads() && attention_set_size(cache, t0) > kAttendChunkRows) {
      // Decode deep in a stream: too few pairs to keep every thread busy; spread each token's
      // attention over the threads in pieces of its A(t) instead (the same bits as attend()).
      for (int64_t b = 0; b < n; ++b) {
        const float* q = s.q.data() + b * q_dim;
        const float* qs = separate_sink_query[b] ? s.q_sink.data() + b * q_dim : q;
        attend_across_threads(cache, l, c.n_head_kv, group, t0 + (uint64_t)b, qs, q, scale, s, pool,
                              s.attn.data() + b * q_dim);
      }
    } else {
      pool.run(n * c.n_head_kv, [&](int64_t task, int thread) {
        const int64_t b = task / c.n_head_kv, kv_head = task % c.n_head_kv;
        const int64_t first = b * q_dim + kv_head * group * hd;  // the group's query heads are contiguous
        const float* q = s.q.data() + first;
        const float* qs = separate_sink_query[b] ? s.q_sink.data() + first : q;
        attend(cache, l, kv_head, group, t0 + (uint64_t)b, qs, q, scale, s.scores.data() + thread * s.scores_stride,
               s.attn.data() + first);
      });
    }
    for (int64_t b = 0; b < n; ++b) {
      const AttentionSpan span = cache.span(t0 + (uint64_t)b);
      s.entries_attended += (uint64_t)c.n_head * (span.query_position + 1);  // |A(t)| = p(t) + 1
    }
    matmul(L.wo, s.attn.data(), n, s.h.data(), pool);
    add_inplace(s.x.data(), s.h.data(), n * E);

    rms_norm(s.x.data(), L.ffn_norm.data(), n, E, c.rms_eps, s.h.data());
    {
      const WeightMatrix* ws[2] = {&L.w_gate, &L.w_up};
      float* ys[2] = {s.gate.data(), s.up.data()};
      matmul_shared_input(ws, ys, 2, s.h.data(), n, pool);  // gate and up (n, n_ff)
    }
    silu_mul(s.gate.data(), s.up.data(), n * c.n_ff, s.gate.data());
    matmul(L.w_down, s.gate.data(), n, s.h.data(), pool);
    add_inplace(s.x.data(), s.h.data(), n * E);
  }

  if (logits == nullptr) return;
  if (all_logits) {
    rms_norm(s.x.data(), output_norm_.data(), n, E, c.rms_eps, s.h.data());
    matmul(output_, s.h.data(), n, logits, pool);
  } else {
    rms_norm(s.x.data() + (n - 1) * E, output_norm_.data(), 1, E, c.rms_eps, s.h.data());
    matmul(output_, s.h.data(), 1, logits, pool);
  }
}

}  // namespace sinkstream
