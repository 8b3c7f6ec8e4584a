#include "model/decoder.h"

#include <cstring>
#include <utility>

#include "core/error.h"
#include "model/weights.h"

namespace sinkstream {

Decoder::Decoder(std::shared_ptr<GgufFile> file) : Model(std::move(file)) {
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
    const LayerConfig& lc = c.layers[(size_t)i];
    LayerWeights& L = layers_[(size_t)i];
    const std::string p = cat("blk.", i, ".");
    L.attn_norm = bind.vector(p + "attn_norm.weight", c.n_embd);
    if (c.fused_qkv) {
      L.wqkv = bind.matrix(p + "attn_qkv.weight", q_dim + 2 * kv_dim, c.n_embd);
    } else {
      L.wq = bind.matrix(p + "attn_q.weight", q_dim, c.n_embd);
      L.wk = bind.matrix(p + "attn_k.weight", kv_dim, c.n_embd);
      L.wv = bind.matrix(p + "attn_v.weight", kv_dim, c.n_embd);
    }
    L.bq = bind.optional_vector(p + "attn_q.bias", q_dim);
    L.bk = bind.optional_vector(p + "attn_k.bias", kv_dim);
    L.bv = bind.optional_vector(p + "attn_v.bias", kv_dim);
    if (lc.qk_norm) {
      L.q_norm = bind.vector(p + "attn_q_norm.weight", c.head_dim);
      L.k_norm = bind.vector(p + "attn_k_norm.weight", c.head_dim);
    }
    L.wo = bind.matrix(p + "attn_output.weight", c.n_embd, q_dim);
    if (lc.post_attention_norm) L.post_attention_norm = bind.vector(p + "post_attention_norm.weight", c.n_embd);
    L.ffn_norm = bind.vector(p + "ffn_norm.weight", c.n_embd);
    if (c.fused_gate_up) {
      L.w_up = bind.matrix(p + "ffn_up.weight", 2 * c.n_ff, c.n_embd);
    } else {
      L.w_gate = bind.matrix(p + "ffn_gate.weight", c.n_ff, c.n_embd);
      L.w_up = bind.matrix(p + "ffn_up.weight", c.n_ff, c.n_embd);
    }
    L.w_down = bind.matrix(p + "ffn_down.weight", c.n_embd, c.n_ff);
    if (lc.post_ffn_norm) L.post_ffn_norm = bind.vector(p + "post_ffw_norm.weight", c.n_embd);
  }
}

// RoPE tables for this chunk, per RoPE variant: at the window position of t for the window query
// and window keys, at p(t) for the sink query and sink keys (sink_cache.h). Usually the two are
// equal; then one copy of q serves.
void Decoder::prepare_positions(int64_t n, uint64_t t0, const SinkCache& cache, ForwardScratch& s) const {
  for (int64_t b = 0; b < n; ++b) {
    const uint64_t t = t0 + (uint64_t)b;
    s.separate_sink_query[(size_t)b] = cache.span(t).query_position != cache.window_position(t);
  }
  for (size_t r = 0; r < config_.ropes.size(); ++r) {
    const RopeConfig& rope = config_.ropes[r];
    ForwardScratch::RopeTables& tables = s.rope[r];
    const int64_t n_freq = rope.n_rot / 2;
    const float magnitude = (float)rope.attention_factor;
    for (int64_t b = 0; b < n; ++b) {
      const uint64_t t = t0 + (uint64_t)b;
      float* c = &tables.cos[(size_t)(b * n_freq)];
      float* si = &tables.sin[(size_t)(b * n_freq)];
      rope_cos_sin(cache.window_position(t), tables.thetas.data(), n_freq, c, si);
      float* cs = &tables.cos_sink[(size_t)(b * n_freq)];
      float* ss = &tables.sin_sink[(size_t)(b * n_freq)];
      if (s.separate_sink_query[(size_t)b]) rope_cos_sin(cache.span(t).query_position, tables.thetas.data(), n_freq, cs, ss);
      if (magnitude != 1.0f) {  // LongRoPE: cos and sin scaled, so q . k by magnitude^2
        for (int64_t i = 0; i < n_freq; ++i) {
          c[i] *= magnitude;
          si[i] *= magnitude;
          if (s.separate_sink_query[(size_t)b]) {
            cs[i] *= magnitude;
            ss[i] *= magnitude;
          }
        }
      }
    }
  }
}

namespace {
void add_bias(float* y, const std::vector<float>& bias, int64_t n) {
  if (bias.empty()) return;
  const int64_t d = (int64_t)bias.size();
  for (int64_t t = 0; t < n; ++t) add_inplace(y + t * d, bias.data(), d);
}
}  // namespace

void Decoder::attention_block(int64_t l, int64_t n, uint64_t t0, SinkCache& cache, ForwardScratch& s,
                              Backend& backend) const {
  const ModelConfig& c = config_;
  const LayerConfig& lc = c.layers[(size_t)l];
  const LayerWeights& L = layers_[(size_t)l];
  const int64_t hd = c.head_dim, q_dim = c.n_head * hd, kv_dim = c.n_head_kv * hd;

  // Projections: q (n, q_dim), k and v (n, kv_dim).
  if (c.fused_qkv) {
    const int64_t width = q_dim + 2 * kv_dim;
    backend.matmul(L.wqkv, s.h.data(), n, s.qkv.data());
    for (int64_t b = 0; b < n; ++b) {
      const float* row = s.qkv.data() + b * width;
      std::memcpy(s.q.data() + b * q_dim, row, (size_t)q_dim * sizeof(float));
      std::memcpy(s.k.data() + b * kv_dim, row + q_dim, (size_t)kv_dim * sizeof(float));
      std::memcpy(s.v.data() + b * kv_dim, row + q_dim + kv_dim, (size_t)kv_dim * sizeof(float));
    }
  } else {
    const WeightMatrix* ws[3] = {&L.wq, &L.wk, &L.wv};
    float* ys[3] = {s.q.data(), s.k.data(), s.v.data()};
    backend.matmul_shared_input(ws, ys, 3, s.h.data(), n);
  }
  add_bias(s.q.data(), L.bq, n);
  add_bias(s.k.data(), L.bk, n);
  add_bias(s.v.data(), L.bv, n);
  if (lc.qk_norm) {  // each head vector on its own, before RoPE
    backend.rms_norm(s.q.data(), L.q_norm.data(), n * c.n_head, hd, c.norm_eps, s.q.data());
    backend.rms_norm(s.k.data(), L.k_norm.data(), n * c.n_head_kv, hd, c.norm_eps, s.k.data());
  }

  // Keys rotated once, at their own position (a sink at its rank t = p(t)), and stored for good;
  // the query twice where the sinks need it at p(t) (sink_cache.h).
  const bool rotates = lc.rope >= 0;
  for (int64_t b = 0; b < n; ++b) {
    const uint64_t t = t0 + (uint64_t)b;
    float* k = s.k.data() + b * kv_dim;
    float* q = s.q.data() + b * q_dim;
    if (rotates) {
      const RopeConfig& rope = c.ropes[(size_t)lc.rope];
      const ForwardScratch::RopeTables& tables = s.rope[(size_t)lc.rope];
      const size_t at = (size_t)(b * (rope.n_rot / 2));
      const bool separate = s.separate_sink_query[(size_t)b];
      const bool sink_key = t < (uint64_t)cache.n_sink() && separate;
      backend.rope(k, c.n_head_kv, hd, rope.n_rot, rope.layout, (sink_key ? tables.cos_sink : tables.cos).data() + at,
                   (sink_key ? tables.sin_sink : tables.sin).data() + at);
      s.keys_rotated += 1;
      if (separate) {
        float* qs = s.q_sink.data() + b * q_dim;
        std::memcpy(qs, q, (size_t)q_dim * sizeof(float));
        backend.rope(qs, c.n_head, hd, rope.n_rot, rope.layout, tables.cos_sink.data() + at,
                     tables.sin_sink.data() + at);
      }
      backend.rope(q, c.n_head, hd, rope.n_rot, rope.layout, tables.cos.data() + at, tables.sin.data() + at);
    }
    cache.store(l, t, k, s.v.data() + b * kv_dim);  // written once, never rotated again
  }

  AttentionCall call;
  call.cache = &cache;
  call.layer = l;
  call.t0 = t0;
  call.n = n;
  call.n_head = c.n_head;
  call.q = s.q.data();
  call.q_sink = s.q_sink.data();
  call.separate_sink_query = rotates ? s.separate_sink_query.data() : nullptr;  // NoPE: no positions at all
  call.scale = lc.attention_scale;
  call.softcap = lc.attention_softcap;
  call.out = s.attn.data();
  backend.attention(call);
  backend.matmul(L.wo, s.attn.data(), n, s.h.data());
}

void Decoder::feed_forward_block(int64_t l, int64_t n, ForwardScratch& s, Backend& backend) const {
  const ModelConfig& c = config_;
  const LayerConfig& lc = c.layers[(size_t)l];
  const LayerWeights& L = layers_[(size_t)l];
  if (c.fused_gate_up) {  // one matmul: each row is [gate (n_ff), up (n_ff)]
    backend.matmul(L.w_up, s.h.data(), n, s.gate.data());
    backend.glu(lc.activation, s.gate.data(), s.gate.data() + c.n_ff, n, c.n_ff, 2 * c.n_ff, s.up.data());
    backend.matmul(L.w_down, s.up.data(), n, s.h.data());
  } else {
    const WeightMatrix* ws[2] = {&L.w_gate, &L.w_up};
    float* ys[2] = {s.gate.data(), s.up.data()};
    backend.matmul_shared_input(ws, ys, 2, s.h.data(), n);  // gate and up (n, n_ff)
    backend.glu(lc.activation, s.gate.data(), s.up.data(), n, c.n_ff, c.n_ff, s.gate.data());
    backend.matmul(L.w_down, s.gate.data(), n, s.h.data());
  }
}

// x += residual_scale * post_norm(h), the post-norm only where the layer has one (Gemma 2/3).
void Decoder::add_residual(const std::vector<float>& post_norm, int64_t n, ForwardScratch& s,
                           Backend& backend) const {
  const int64_t E = config_.n_embd;
  if (!post_norm.empty()) backend.rms_norm(s.h.data(), post_norm.data(), n, E, config_.norm_eps, s.h.data());
  backend.add(s.x.data(), s.h.data(), config_.residual_scale, n * E);
}

void Decoder::forward(const int32_t* tokens, int64_t n, uint64_t t0, SinkCache& cache, ForwardScratch& s,
                      Backend& backend, float* logits, bool all_logits) const {
  const ModelConfig& c = config_;
  SS_ASSERT(n >= 1 && n <= s.max_tokens);
  const int64_t E = c.n_embd;

  backend.embed(token_embd_, tokens, n, s.x.data());
  if (c.embedding_scale != 1.0f) backend.scale(s.x.data(), c.embedding_scale, n * E);
  prepare_positions(n, t0, cache, s);

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LayerWeights& L = layers_[(size_t)l];
    backend.rms_norm(s.x.data(), L.attn_norm.data(), n, E, c.norm_eps, s.h.data());
    attention_block(l, n, t0, cache, s, backend);
    add_residual(L.post_attention_norm, n, s, backend);
    backend.rms_norm(s.x.data(), L.ffn_norm.data(), n, E, c.norm_eps, s.h.data());
    feed_forward_block(l, n, s, backend);
    add_residual(L.post_ffn_norm, n, s, backend);
  }

  if (logits == nullptr) return;
  const int64_t rows = all_logits ? n : 1;
  const float* last = all_logits ? s.x.data() : s.x.data() + (n - 1) * E;
  backend.rms_norm(last, output_norm_.data(), rows, E, c.norm_eps, s.h.data());
  backend.matmul(output_, s.h.data(), rows, logits);
  if (c.logit_scale != 1.0f) backend.scale(logits, c.logit_scale, rows * c.n_vocab);
  if (c.final_logit_softcap > 0.0f) backend.soft_cap(logits, c.final_logit_softcap, rows * c.n_vocab);
}

}  // namespace sinkstream
