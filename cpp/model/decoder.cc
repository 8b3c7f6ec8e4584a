#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "core/error.h"
#include "model/weights.h"
#include "ops/cpu/cpu_features.h"

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
  const NormKind final_norm = c.layers.empty() ? NormKind::kRms : c.layers.back().norm;
  token_embd_ = bind.matrix("token_embd.weight", c.n_vocab, c.n_embd);
  if (c.embedding_norm) token_embd_norm_ = bind_norm(bind, "token_embd_norm", final_norm);
  output_norm_ = bind_norm(bind, "output_norm", final_norm);
  output_ = file_->find_tensor("output.weight") ? bind.matrix("output.weight", c.n_vocab, c.n_embd) : token_embd_;
  output_bias_ = bind.optional_vector("output.bias", c.n_vocab);
  if (tokenizer_ && tokenizer_->n_vocab() > c.n_vocab)
    throw ModelError(cat(file_->path(), ": the tokenizer has ", tokenizer_->n_vocab(),
                         " tokens but token_embd.weight only ", c.n_vocab, " rows"));

  layers_.resize((size_t)c.n_layer);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const LayerConfig& lc = c.layers[(size_t)i];
    LayerWeights& L = layers_[(size_t)i];
    const std::string p = cat("blk.", i, ".");
    L.attn_norm = bind_norm(bind, p + c.attn_norm_tensor, lc.norm);
    if (c.fused_qkv) {
      L.wqkv = bind.matrix(p + "attn_qkv.weight", q_dim + 2 * kv_dim, c.n_embd);
      L.bqkv = bind.optional_vector(p + "attn_qkv.bias", q_dim + 2 * kv_dim);
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
    L.bo = bind.optional_vector(p + "attn_output.bias", c.n_embd);
    if (lc.post_attention_norm) L.post_attention_norm = bind.vector(p + "post_attention_norm.weight", c.n_embd);
    if (lc.learned_sinks) L.attn_sinks = bind.vector(p + "attn_sinks.weight", c.n_head);
    if (!lc.shared_norm) L.ffn_norm = bind_norm(bind, p + c.ffn_norm_tensor, lc.norm);
    if (c.n_expert > 0) {
      bind_experts(bind, p, L);
    } else if (!is_gated(lc.activation)) {
      L.w_up = bind.matrix(p + "ffn_up.weight", c.n_ff, c.n_embd);
    } else if (c.fused_gate_up) {
      L.w_up = bind.matrix(p + "ffn_up.weight", 2 * c.n_ff, c.n_embd);
    } else {
      L.w_gate = bind.matrix(p + "ffn_gate.weight", c.n_ff, c.n_embd);
      L.w_up = bind.matrix(p + "ffn_up.weight", c.n_ff, c.n_embd);
      L.b_gate = bind.optional_vector(p + "ffn_gate.bias", c.n_ff);
    }
    if (c.n_expert == 0) {
      if (!c.fused_gate_up) L.b_up = bind.optional_vector(p + "ffn_up.bias", c.n_ff);
      L.w_down = bind.matrix(p + "ffn_down.weight", c.n_embd, c.n_ff);
      L.b_down = bind.optional_vector(p + "ffn_down.bias", c.n_embd);
    }
    if (lc.post_ffn_norm) L.post_ffn_norm = bind.vector(p + "post_ffw_norm.weight", c.n_embd);
  }
  pack_weights_for_cpu();
}

// The matrices the CPU multiplies by, regrouped for this CPU's interleaved-row kernels where it has
// them (ops/cpu/packed_weights.h); the token embedding stays as mapped (get_row reads single rows;
// a tied head gets its own packed copy through output_). Experts stay in the map: a token reads
// only the few it is routed to.
// The file's pages of each packed slice of rows are released as soon as it is packed (so the load
// never holds both copies of a large matrix): the CPU reads only the copy, and a CUDA session (which
// uploads the file's blocks) reads them from the file again. A head tied to the embedding also
// serves get_row from its packed copy (unpack_row), so embedding lookups do not bring the file's
// pages back either.
void Decoder::pack_weights_for_cpu() {
  const bool tied = output_.data == token_embd_.data;
  std::vector<WeightMatrix*> matrices;
  for (LayerWeights& L : layers_)
    for (WeightMatrix* w : {&L.wq, &L.wk, &L.wv, &L.wqkv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) matrices.push_back(w);
  matrices.push_back(&output_);
  packed_weights_.pack(matrices, active_isa(),
                       [&](const uint8_t* data, int64_t bytes) { file_->release_pages(data, (uint64_t)bytes); });
  if (tied) {
    token_embd_.packed = output_.packed;
    token_embd_.packed_isa = output_.packed_isa;
  }
}

// The experts' weights stay in the mapped file: a token reads only its n_expert_used experts'
// blocks (the page cache loads what is touched), no copy at load. Biases are small: float32 copies.
void Decoder::bind_experts(const WeightBinder& bind, const std::string& p, LayerWeights& L) const {
  const ModelConfig& c = config_;
  const int64_t E = c.n_expert, F = c.n_ff_expert;
  L.router = bind.matrix(p + "ffn_gate_inp.weight", E, c.n_embd);
  L.router_bias = bind.optional_vector(p + "ffn_gate_inp.bias", E);
  L.expert_gate = bind.matrix_stack(p + "ffn_gate_exps.weight", E, F, c.n_embd);
  L.expert_up = bind.matrix_stack(p + "ffn_up_exps.weight", E, F, c.n_embd);
  L.expert_down = bind.matrix_stack(p + "ffn_down_exps.weight", E, c.n_embd, F);
  const auto bias = [&](const std::string& name, int64_t width) {
    return file_->find_tensor(name) ? bind.table(name, E, width) : std::vector<float>();
  };
  L.expert_b_gate = bias(p + "ffn_gate_exps.bias", F);
  L.expert_b_up = bias(p + "ffn_up_exps.bias", F);
  L.expert_b_down = bias(p + "ffn_down_exps.bias", c.n_embd);
}

NormWeights Decoder::bind_norm(const WeightBinder& bind, const std::string& name, NormKind kind) const {
  NormWeights w;
  w.weight = bind.vector(name + ".weight", config_.n_embd);
  if (kind == NormKind::kLayerNorm) w.bias = bind.optional_vector(name + ".bias", config_.n_embd);
  return w;
}

void Decoder::norm(const NormWeights& w, NormKind kind, const float* x, int64_t rows, float* out,
                   Backend& backend) const {
  if (kind == NormKind::kRms)
    backend.rms_norm(x, w.weight.data(), rows, config_.n_embd, config_.norm_eps, out);
  else
    backend.layer_norm(x, w.weight.data(), w.bias.empty() ? nullptr : w.bias.data(), rows, config_.n_embd,
                       config_.norm_eps, out);
}

// RoPE tables for one segment's rows (from `row`), per RoPE variant: at the window position of t for
// the window query and window keys, at p(t) for the sink query and sink keys (sink_cache.h).
// Usually the two are equal; then one copy of q serves. The frequencies are the segment's own.
void Decoder::prepare_positions(const ForwardSegment& seg, int64_t row, ForwardScratch& s, Backend& backend) const {
  const SinkCache& cache = *seg.cache;
  for (int64_t b = 0; b < seg.n; ++b) {
    const uint64_t t = seg.t0 + (uint64_t)b;
    s.separate_sink_query[(size_t)(row + b)] = cache.span(t).query_position != cache.window_position(t);
  }
  for (size_t r = 0; r < config_.ropes.size(); ++r) {
    const RopeConfig& rope = config_.ropes[r];
    ForwardScratch::RopeTables& tables = s.rope[r];
    const double* thetas = (*seg.rope)[r].thetas.data();
    const int64_t n_freq = rope.n_rot / 2;
    const float magnitude = (float)rope.attention_factor;
    for (int64_t b = 0; b < seg.n; ++b) {
      const uint64_t t = seg.t0 + (uint64_t)b;
      const size_t at = (size_t)((row + b) * n_freq);
      const bool separate = s.separate_sink_query[(size_t)(row + b)];
      float* c = &tables.cos[at];
      float* si = &tables.sin[at];
      rope_cos_sin(cache.window_position(t), thetas, n_freq, c, si);
      float* cs = &tables.cos_sink[at];
      float* ss = &tables.sin_sink[at];
      if (separate) rope_cos_sin(cache.span(t).query_position, thetas, n_freq, cs, ss);
      if (magnitude != 1.0f) {  // LongRoPE: cos and sin scaled, so q . k by magnitude^2
        for (int64_t i = 0; i < n_freq; ++i) {
          c[i] *= magnitude;
          si[i] *= magnitude;
          if (separate) {
            cs[i] *= magnitude;
            ss[i] *= magnitude;
          }
        }
      }
    }
    // The tables are computed here on the host; a device backend copies them over (the CPU: no-op).
    const ForwardBuffers::Rope& dst = s.buf.rope[r];
    const size_t at = (size_t)(row * n_freq);
    const int64_t count = seg.n * n_freq;
    backend.upload(dst.cos + at, &tables.cos[at], count);
    backend.upload(dst.sin + at, &tables.sin[at], count);
    backend.upload(dst.cos_sink + at, &tables.cos_sink[at], count);
    backend.upload(dst.sin_sink + at, &tables.sin_sink[at], count);
  }
}

namespace {
// y (n rows of bias.size()) += bias, where the file has one.
void add_bias(Backend& backend, float* y, const std::vector<float>& bias, int64_t n) {
  if (!bias.empty()) backend.add_bias(y, bias.data(), n, (int64_t)bias.size());
}
}  // namespace

void Decoder::attention_block(int64_t l, const ForwardSegment* segments, int64_t n_segments, int64_t n,
                              ForwardScratch& s, Backend& backend, float* out) const {
  const ModelConfig& c = config_;
  const LayerConfig& lc = c.layers[(size_t)l];
  const LayerWeights& L = layers_[(size_t)l];
  const int64_t hd = c.head_dim, q_dim = c.n_head * hd, kv_dim = c.n_head_kv * hd;

  // Projections: q (n, q_dim), k and v (n, kv_dim).
  if (c.fused_qkv) {
    const int64_t width = q_dim + 2 * kv_dim;
    backend.matmul(L.wqkv, s.buf.h, n, s.buf.qkv);
    add_bias(backend, s.buf.qkv, L.bqkv, n);
    backend.copy_rows(s.buf.q, q_dim, s.buf.qkv, width, n, q_dim);
    backend.copy_rows(s.buf.k, kv_dim, s.buf.qkv + q_dim, width, n, kv_dim);
    backend.copy_rows(s.buf.v, kv_dim, s.buf.qkv + q_dim + kv_dim, width, n, kv_dim);
  } else {
    const WeightMatrix* ws[3] = {&L.wq, &L.wk, &L.wv};
    float* ys[3] = {s.buf.q, s.buf.k, s.buf.v};
    backend.matmul_shared_input(ws, ys, 3, s.buf.h, n);
  }
  add_bias(backend, s.buf.q, L.bq, n);
  add_bias(backend, s.buf.k, L.bk, n);
  add_bias(backend, s.buf.v, L.bv, n);
  if (lc.clamp_qkv > 0.0f) {  // MPT's clip_qkv
    backend.clamp(s.buf.q, lc.clamp_qkv, n * q_dim);
    backend.clamp(s.buf.k, lc.clamp_qkv, n * kv_dim);
    backend.clamp(s.buf.v, lc.clamp_qkv, n * kv_dim);
  }
  if (lc.qk_norm) {  // each head vector on its own, before RoPE
    backend.rms_norm(s.buf.q, L.q_norm.data(), n * c.n_head, hd, c.norm_eps, s.buf.q);
    backend.rms_norm(s.buf.k, L.k_norm.data(), n * c.n_head_kv, hd, c.norm_eps, s.buf.k);
  }

  // Keys rotated once, at their own position (a sink at its rank t = p(t)), and stored for good;
  // the query twice where the sinks need it at p(t) (sink_cache.h). Each segment's rows in its own
  // cache, in runs of rows that use the same tables (one backend call per run: a GPU launches once
  // per run, the CPU loops over the rows exactly as before); then each segment's queries attend
  // over their own A_l(t).
  const bool rotates = lc.rope >= 0;
  std::vector<AttentionCall>& calls = s.attention_calls;
  calls.clear();
  int64_t row = 0;
  for (int64_t i = 0; i < n_segments; ++i) {
    const ForwardSegment& seg = segments[i];
    SinkCache& cache = *seg.cache;
    if (rotates) {
      const RopeConfig& rope = c.ropes[(size_t)lc.rope];
      const ForwardBuffers::Rope& tables = s.buf.rope[(size_t)lc.rope];
      const int64_t n_freq = rope.n_rot / 2;
      const auto separate = [&](int64_t b) { return s.separate_sink_query[(size_t)b] != 0; };
      const auto sink_key = [&](int64_t b) { return seg.t0 + (uint64_t)(b - row) < (uint64_t)cache.n_sink() && separate(b); };
      // Calls fn(first row, rows, flag) for each maximal run of rows of this segment with one flag.
      const auto runs = [&](const auto& flag, const auto& fn) {
        for (int64_t b = row; b < row + seg.n;) {
          const bool f = flag(b);
          int64_t e = b + 1;
          while (e < row + seg.n && flag(e) == f) ++e;
          fn(b, e - b, f);
          b = e;
        }
      };
      runs(sink_key, [&](int64_t b, int64_t rows, bool sink) {
        backend.rope_rows(s.buf.k + b * kv_dim, rows, kv_dim, c.n_head_kv, hd, rope.n_rot, rope.layout,
                          (sink ? tables.cos_sink : tables.cos) + b * n_freq,
                          (sink ? tables.sin_sink : tables.sin) + b * n_freq);
      });
      *seg.keys_rotated += (uint64_t)seg.n;
      runs(separate, [&](int64_t b, int64_t rows, bool sep) {  // the sink copy, from q before its rotation
        if (!sep) return;
        float* qs = s.buf.q_sink + b * q_dim;
        backend.copy_rows(qs, q_dim, s.buf.q + b * q_dim, q_dim, rows, q_dim);
        backend.rope_rows(qs, rows, q_dim, c.n_head, hd, rope.n_rot, rope.layout, tables.cos_sink + b * n_freq,
                          tables.sin_sink + b * n_freq);
      });
      backend.rope_rows(s.buf.q + row * q_dim, seg.n, q_dim, c.n_head, hd, rope.n_rot, rope.layout,
                        tables.cos + row * n_freq, tables.sin + row * n_freq);
    }
    // Written once, never rotated again.
    backend.store_kv_rows(cache, l, seg.t0, seg.n, s.buf.k + row * kv_dim, s.buf.v + row * kv_dim);

    AttentionCall call;
    call.cache = &cache;
    call.layer = l;
    call.t0 = seg.t0;
    call.n = seg.n;
    call.n_head = c.n_head;
    call.q = s.buf.q + row * q_dim;
    call.q_sink = s.buf.q_sink + row * q_dim;
    // NoPE: no positions at all, so one query serves sinks and window alike.
    call.separate_sink_query = rotates ? s.separate_sink_query.data() + row : nullptr;
    call.scale = lc.attention_scale;
    call.softcap = lc.attention_softcap;
    call.alibi_slopes = lc.alibi ? c.alibi_slopes.data() : nullptr;
    call.sink_logits = lc.learned_sinks ? L.attn_sinks.data() : nullptr;
    call.out = s.buf.attn + row * q_dim;
    calls.push_back(call);
    row += seg.n;
  }
  // Every segment's keys are stored: their attention goes as one batch (each over its own cache).
  std::vector<uint64_t>& entries = s.attention_entries;
  entries.resize((size_t)n_segments);
  backend.attention_calls(calls.data(), n_segments, entries.data());
  for (int64_t i = 0; i < n_segments; ++i)
    if (segments[i].entries_attended != nullptr) *segments[i].entries_attended += entries[(size_t)i];
  backend.matmul(L.wo, s.buf.attn, n, out);
  add_bias(backend, out, L.bo, n);
}

void Decoder::feed_forward_block(int64_t l, int64_t n, ForwardScratch& s, Backend& backend) const {
  const ModelConfig& c = config_;
  const LayerConfig& lc = c.layers[(size_t)l];
  const LayerWeights& L = layers_[(size_t)l];
  if (c.n_expert > 0) return experts_block(l, n, s, backend);
  if (!is_gated(lc.activation)) {  // plain MLP: down(act(up(h)))
    backend.matmul(L.w_up, s.buf.h, n, s.buf.up);
    add_bias(backend, s.buf.up, L.b_up, n);
    backend.activate(lc.activation, s.buf.up, n * c.n_ff);
    backend.matmul(L.w_down, s.buf.up, n, s.buf.h);
  } else if (c.fused_gate_up) {  // one matmul: each row is [gate (n_ff), up (n_ff)]
    backend.matmul(L.w_up, s.buf.h, n, s.buf.gate);
    backend.glu(lc.activation, s.buf.gate, s.buf.gate + c.n_ff, n, c.n_ff, 2 * c.n_ff, s.buf.up);
    backend.matmul(L.w_down, s.buf.up, n, s.buf.h);
  } else {
    const WeightMatrix* ws[2] = {&L.w_gate, &L.w_up};
    float* ys[2] = {s.buf.gate, s.buf.up};
    backend.matmul_shared_input(ws, ys, 2, s.buf.h, n);  // gate and up (n, n_ff)
    add_bias(backend, s.buf.gate, L.b_gate, n);
    add_bias(backend, s.buf.up, L.b_up, n);
    backend.glu(lc.activation, s.buf.gate, s.buf.up, n, c.n_ff, c.n_ff, s.buf.gate);
    backend.matmul(L.w_down, s.buf.gate, n, s.buf.h);
  }
  add_bias(backend, s.buf.h, L.b_down, n);
}

// A mixture of experts (gpt-oss; Shazeer et al. 2017's sparsely-gated layer with a top-k router):
// logits = W_r h + b_r; the n_expert_used largest (ties: the lower index) are softmaxed among
// themselves; h -> sum_k w_k (down_k(act(gate_k h + b, up_k h + b)) + b_down_k). The chunk's rows
// are gathered per expert, so each chosen expert's weights are read once per call and the others
// not at all; each row adds its experts' outputs in ascending expert order, whatever the chunk, so
// a chunk gives the bits of token-by-token. The routing runs on the host, over host activations:
// the CUDA backend refuses mixtures of experts (session.cc).
void Decoder::experts_block(int64_t l, int64_t n, ForwardScratch& s, Backend& backend) const {
  const ModelConfig& c = config_;
  const LayerConfig& lc = c.layers[(size_t)l];
  const LayerWeights& L = layers_[(size_t)l];
  const int64_t E = c.n_expert, K = c.n_expert_used, F = c.n_ff_expert, D = c.n_embd;
  backend.matmul(L.router, s.buf.h, n, s.router.data());
  add_bias(backend, s.router.data(), L.router_bias, n);
  for (int64_t b = 0; b < n; ++b) {  // top-k by selection (k is small), then softmax over the k
    float* logits = s.router.data() + b * E;
    int32_t* chosen = s.expert_choice.data() + b * K;
    float picked[kMaxExpertsUsed];  // config.cc checks K
    for (int64_t k = 0; k < K; ++k) {
      int32_t best = -1;
      for (int32_t e = 0; e < (int32_t)E; ++e) {
        bool taken = false;
        for (int64_t j = 0; j < k; ++j) taken = taken || chosen[j] == e;
        if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
      }
      chosen[k] = best;
      picked[k] = logits[best];
    }
    const float max_logit = picked[0];  // chosen in descending order
    float sum = 0.0f;
    for (int64_t k = 0; k < K; ++k) sum += (picked[k] = std::exp(picked[k] - max_logit));
    for (int64_t k = 0; k < K; ++k) logits[k] = picked[k] / sum;  // the weights, in choice order
  }
  std::memcpy(s.expert_h.data(), s.buf.h, (size_t)(n * D) * sizeof(float));
  std::fill(s.buf.h, s.buf.h + n * D, 0.0f);  // the sum of the chosen experts' outputs
  for (int32_t e = 0; e < (int32_t)E; ++e) {
    int64_t m = 0;  // the rows routed to e, as (row * K + choice)
    for (int64_t slot = 0; slot < n * K; ++slot)
      if (s.expert_choice[(size_t)slot] == e) s.expert_tokens[(size_t)m++] = (int32_t)slot;
    if (m == 0) continue;  // not chosen: its blocks are not read
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(s.expert_in.data() + i * D, s.expert_h.data() + s.expert_tokens[(size_t)i] / K * D,
                  (size_t)D * sizeof(float));
    const WeightMatrix* ws[2] = {&L.expert_gate[(size_t)e], &L.expert_up[(size_t)e]};
    float* ys[2] = {s.buf.gate, s.buf.up};
    backend.matmul_shared_input(ws, ys, 2, s.expert_in.data(), m);
    for (int64_t i = 0; i < m; ++i) {
      if (!L.expert_b_gate.empty()) backend.add(s.buf.gate + i * F, L.expert_b_gate.data() + e * F, 1.0f, F);
      if (!L.expert_b_up.empty()) backend.add(s.buf.up + i * F, L.expert_b_up.data() + e * F, 1.0f, F);
    }
    backend.glu(lc.activation, s.buf.gate, s.buf.up, m, F, F, s.buf.gate);
    backend.matmul(L.expert_down[(size_t)e], s.buf.gate, m, s.expert_out.data());
    for (int64_t i = 0; i < m; ++i) {
      float* y = s.expert_out.data() + i * D;
      const int64_t slot = s.expert_tokens[(size_t)i], row = slot / K;
      if (!L.expert_b_down.empty()) backend.add(y, L.expert_b_down.data() + e * D, 1.0f, D);
      backend.scale(y, s.router[(size_t)(row * E + slot % K)], D);
      backend.add(s.buf.h + row * D, y, 1.0f, D);
    }
  }
}

// x += residual_scale * post_norm(h), the post-norm only where the layer has one (Gemma 2/3).
void Decoder::add_residual(const std::vector<float>& post_norm, int64_t n, ForwardScratch& s,
                           Backend& backend) const {
  const int64_t E = config_.n_embd;
  if (!post_norm.empty()) backend.rms_norm(s.buf.h, post_norm.data(), n, E, config_.norm_eps, s.buf.h);
  backend.add(s.buf.x, s.buf.h, config_.residual_scale, n * E);
}

void Decoder::forward_segments(const ForwardSegment* segments, int64_t n_segments, ForwardScratch& s,
                               Backend& backend, float* logits_rows) const {
  const ModelConfig& c = config_;
  const int64_t E = c.n_embd;
  SS_ASSERT(n_segments >= 1);
  backend.bind_scratch(s);
  int64_t n = 0;  // rows of the whole pass
  for (int64_t i = 0; i < n_segments; ++i) {
    const ForwardSegment& seg = segments[i];
    SS_ASSERT(seg.n >= 1 && seg.rope != nullptr && seg.keys_rotated != nullptr);
    SS_ASSERT(!seg.all_logits || n_segments == 1);
    backend.embed(token_embd_, seg.tokens, seg.n, s.buf.x + n * E);
    prepare_positions(seg, n, s, backend);
    n += seg.n;
  }
  SS_ASSERT(n <= s.max_tokens);
  if (c.embedding_scale != 1.0f) backend.scale(s.buf.x, c.embedding_scale, n * E);
  const NormKind final_norm = c.layers.back().norm;
  if (c.embedding_norm) norm(token_embd_norm_, final_norm, s.buf.x, n, s.buf.x, backend);

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LayerConfig& lc = c.layers[(size_t)l];
    const LayerWeights& L = layers_[(size_t)l];
    norm(L.attn_norm, lc.norm, s.buf.x, n, s.buf.h, backend);
    if (lc.parallel_residual) {  // both branches read x before either is added
      attention_block(l, segments, n_segments, n, s, backend, s.buf.branch);
      if (!lc.shared_norm) norm(L.ffn_norm, lc.norm, s.buf.x, n, s.buf.h, backend);
      feed_forward_block(l, n, s, backend);
      backend.add(s.buf.x, s.buf.branch, c.residual_scale, n * E);
      backend.add(s.buf.x, s.buf.h, c.residual_scale, n * E);
      continue;
    }
    attention_block(l, segments, n_segments, n, s, backend, s.buf.h);
    add_residual(L.post_attention_norm, n, s, backend);
    norm(L.ffn_norm, lc.norm, s.buf.x, n, s.buf.h, backend);
    feed_forward_block(l, n, s, backend);
    add_residual(L.post_ffn_norm, n, s, backend);
  }

  // The rows that want logits, normed into h: a single segment's last (or every) row, or the last
  // row of each segment that wants logits, gathered so the output matrix is read once.
  int64_t rows = 0;
  float* out = nullptr;
  if (n_segments == 1) {
    const ForwardSegment& seg = segments[0];
    if (seg.logits == nullptr) return;
    rows = seg.all_logits ? n : 1;
    norm(output_norm_, final_norm, seg.all_logits ? s.buf.x : s.buf.x + (n - 1) * E, rows, s.buf.h, backend);
    out = s.buf.logits != nullptr ? s.buf.logits : seg.logits;
  } else {
    int64_t end = 0;
    for (int64_t i = 0; i < n_segments; ++i) {
      end += segments[i].n;
      if (segments[i].logits == nullptr) continue;
      norm(output_norm_, final_norm, s.buf.x + (end - 1) * E, 1, s.buf.h + rows * E, backend);
      ++rows;
    }
    if (rows == 0) return;
    SS_ASSERT(logits_rows != nullptr);
    out = s.buf.logits != nullptr ? s.buf.logits : logits_rows;
  }
  backend.matmul(output_, s.buf.h, rows, out);
  add_bias(backend, out, output_bias_, rows);
  if (c.logit_scale != 1.0f) backend.scale(out, c.logit_scale, rows * c.n_vocab);
  if (c.final_logit_softcap > 0.0f) backend.soft_cap(out, c.final_logit_softcap, rows * c.n_vocab);
  // Out of backend memory into the callers' arrays (the CPU wrote them in place).
  if (n_segments == 1) {
    backend.download(segments[0].logits, out, rows * c.n_vocab);
    return;
  }
  int64_t j = 0;
  for (int64_t i = 0; i < n_segments; ++i) {
    if (segments[i].logits == nullptr) continue;
    backend.download(segments[i].logits, out + j * c.n_vocab, c.n_vocab);
    ++j;
  }
}

}  // namespace sinkstream
