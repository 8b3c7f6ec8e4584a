// The decoder every supported family runs: pre-norm transformer blocks whose details come from the
// per-layer configuration (config.h), with weights bound by llama.cpp's tensor names.
//
//   x = embed(tokens) * embedding_scale
//   for each layer l:
//     h = attention_l(norm(x))           QK-norm, RoPE variant or none, A_l(t), soft-cap
//     x += residual_scale * post_norm?(h)
//     h = feed_forward_l(norm(x))        SwiGLU or GeGLU, gate/up fused or not
//     x += residual_scale * post_norm?(h)
//   logits = soft_cap?(logit_scale * W_out . norm(x))
//
// Attention sets and positions come from the cache (sink_cache.h); this file knows no sinks.
#pragma once
#include <vector>

#include "model/model.h"
#include "ops/ops.h"

namespace sinkstream {

struct LayerWeights {
  std::vector<float> attn_norm;       // (n_embd)
  WeightMatrix wq;                    // (n_head*head_dim, n_embd)
  WeightMatrix wk;                    // (n_head_kv*head_dim, n_embd)
  WeightMatrix wv;                    // (n_head_kv*head_dim, n_embd)
  WeightMatrix wqkv;                  // (n_head*head_dim + 2*n_head_kv*head_dim, n_embd): fused (phi3)
  std::vector<float> bq, bk, bv;      // optional biases (qwen2); empty if absent
  std::vector<float> q_norm, k_norm;  // (head_dim) QK-norm weights, empty without QK-norm
  WeightMatrix wo;                    // (n_embd, n_head*head_dim)
  std::vector<float> post_attention_norm;  // (n_embd), empty if the layer has none
  std::vector<float> ffn_norm;        // (n_embd)
  WeightMatrix w_gate;                // (n_ff, n_embd); unused when fused
  WeightMatrix w_up;                  // (n_ff, n_embd), or (2*n_ff, n_embd) gate rows first when fused
  WeightMatrix w_down;                // (n_embd, n_ff)
  std::vector<float> post_ffn_norm;   // (n_embd), empty if the layer has none
};

class Decoder final : public Model {
 public:
  explicit Decoder(std::shared_ptr<GgufFile> file);

  void forward(const int32_t* tokens, int64_t n, uint64_t t0, SinkCache& cache, ForwardScratch& scratch,
               Backend& backend, float* logits, bool all_logits) const override;

 private:
  void prepare_positions(int64_t n, uint64_t t0, const SinkCache& cache, ForwardScratch& s) const;
  void attention_block(int64_t layer, int64_t n, uint64_t t0, SinkCache& cache, ForwardScratch& s,
                       Backend& backend) const;
  void feed_forward_block(int64_t layer, int64_t n, ForwardScratch& s, Backend& backend) const;
  void add_residual(const std::vector<float>& post_norm, int64_t n, ForwardScratch& s, Backend& backend) const;

  WeightMatrix token_embd_;         // (n_vocab, n_embd)
  std::vector<float> output_norm_;  // (n_embd)
  WeightMatrix output_;             // (n_vocab, n_embd); token_embd_ when the head is tied
  std::vector<LayerWeights> layers_;
};

}  // namespace sinkstream
