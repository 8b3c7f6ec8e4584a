// The decoder every supported family runs: pre-norm transformer blocks whose details come from the
// per-layer configuration (config.h), with weights bound by llama.cpp's tensor names.
//
//   x = norm?(embed(tokens) * embedding_scale)
//   for each layer l (norm: RMSNorm or LayerNorm):
//     sequential:                              parallel (gpt-neox, falcon, phi2):
//       x += residual_scale * post_norm?(attention_l(norm1(x)))   x += attention_l(norm1(x))
//       x += residual_scale * post_norm?(feed_forward_l(norm2(x)))      + feed_forward_l(norm2(x))
//     attention_l: QK-norm, RoPE variant / none / ALiBi, A_l(t), soft-cap, learned sink logits;
//     feed_forward_l: SwiGLU, GeGLU or plain GELU, gate/up fused or not, or a mixture of experts
//     (router top-k, clamped SwiGLU); biases wherever the file has them
//   logits = soft_cap?(logit_scale * (W_out . norm(x) + b_out))
//
// Attention sets and positions come from the cache (sink_cache.h); this file knows no sinks.
#pragma once
#include <vector>

#include "model/model.h"
#include "ops/cpu/packed_weights.h"
#include "ops/ops.h"

namespace sinkstream {

class WeightBinder;

// A norm's weight and, for LayerNorm, its optional bias.
struct NormWeights {
  std::vector<float> weight;  // (d)
  std::vector<float> bias;    // (d) or empty
};

struct LayerWeights {
  NormWeights attn_norm;              // (n_embd)
  WeightMatrix wq;                    // (n_head*head_dim, n_embd)
  WeightMatrix wk;                    // (n_head_kv*head_dim, n_embd)
  WeightMatrix wv;                    // (n_head_kv*head_dim, n_embd)
  WeightMatrix wqkv;                  // (n_head*head_dim + 2*n_head_kv*head_dim, n_embd): fused (phi3)
  std::vector<float> bq, bk, bv;      // optional biases (qwen2); empty if absent
  std::vector<float> bqkv;            // optional bias of the fused projection
  std::vector<float> q_norm, k_norm;  // (head_dim) QK-norm weights, empty without QK-norm
  WeightMatrix wo;                    // (n_embd, n_head*head_dim)
  std::vector<float> bo;              // (n_embd) or empty
  std::vector<float> post_attention_norm;  // (n_embd), empty if the layer has none
  NormWeights ffn_norm;               // (n_embd); empty with a shared norm
  WeightMatrix w_gate;                // (n_ff, n_embd); unused when fused or plain
  WeightMatrix w_up;                  // (n_ff, n_embd), or (2*n_ff, n_embd) gate rows first when fused
  WeightMatrix w_down;                // (n_embd, n_ff)
  std::vector<float> b_gate, b_up, b_down;  // optional biases
  std::vector<float> post_ffn_norm;   // (n_embd), empty if the layer has none
  std::vector<float> attn_sinks;      // (n_head) learned sink logits (gpt-oss), empty without
  // Mixture of experts (gpt-oss; empty for a dense feed-forward): router (n_expert, n_embd) and its
  // bias; per expert e, gate/up (n_ff_expert, n_embd) and down (n_embd, n_ff_expert) left in the
  // mapped file, only the chosen experts' blocks read; biases (n_expert, width) row-major.
  WeightMatrix router;
  std::vector<float> router_bias;
  std::vector<WeightMatrix> expert_gate, expert_up, expert_down;
  std::vector<float> expert_b_gate, expert_b_up, expert_b_down;
};

class Decoder final : public Model {
 public:
  explicit Decoder(std::shared_ptr<GgufFile> file);

  void forward_segments(const ForwardSegment* segments, int64_t n_segments, ForwardScratch& scratch,
                        Backend& backend, float* logits_rows) const override;

 private:
  NormWeights bind_norm(const WeightBinder& bind, const std::string& name, NormKind kind) const;
  void norm(const NormWeights& w, NormKind kind, const float* x, int64_t rows, float* out, Backend& backend) const;
  // RoPE tables of one segment's rows, starting at scratch row `row`.
  void prepare_positions(const ForwardSegment& segment, int64_t row, ForwardScratch& s, Backend& backend) const;
  // h (n, n_embd) -> out (n, n_embd), n the segments' rows together; each segment's keys and values
  // go into its own cache and its queries attend there.
  void attention_block(int64_t layer, const ForwardSegment* segments, int64_t n_segments, int64_t n,
                       ForwardScratch& s, Backend& backend, float* out) const;
  void feed_forward_block(int64_t layer, int64_t n, ForwardScratch& s, Backend& backend) const;  // h -> h
  void bind_experts(const WeightBinder& bind, const std::string& prefix, LayerWeights& L) const;
  void experts_block(int64_t layer, int64_t n, ForwardScratch& s, Backend& backend) const;  // h -> h (MoE)
  void add_residual(const std::vector<float>& post_norm, int64_t n, ForwardScratch& s, Backend& backend) const;
  void pack_weights_for_cpu();

  WeightMatrix token_embd_;         // (n_vocab, n_embd)
  NormWeights token_embd_norm_;     // (n_embd), bloom only
  NormWeights output_norm_;         // (n_embd)
  WeightMatrix output_;             // (n_vocab, n_embd); token_embd_ when the head is tied
  std::vector<float> output_bias_;  // (n_vocab) or empty (phi2)
  std::vector<LayerWeights> layers_;
  PackedWeightStore packed_weights_;  // what the matrices above point at through `packed`
};

}  // namespace sinkstream
