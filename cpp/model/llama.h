// The llama family: llama, mistral, granite (adjacent-pair RoPE) and qwen2 (NeoX RoPE, Q/K/V biases).
// Pre-norm blocks: x += Wo . attn(rope(Wq h), rope(Wk h), Wv h), h = rmsnorm(x); then
// x += Wdown . (silu(Wgate h) * Wup h), h = rmsnorm(x); logits = Wout . rmsnorm(x).
#pragma once
#include <vector>

#include "model/model.h"
#include "ops/ops.h"

namespace sinkstream {

struct LlamaLayer {
  std::vector<float> attn_norm;  // (n_embd)
  WeightMatrix wq;               // (n_head*head_dim, n_embd)
  WeightMatrix wk;               // (n_head_kv*head_dim, n_embd)
  WeightMatrix wv;               // (n_head_kv*head_dim, n_embd)
  std::vector<float> bq, bk, bv; // optional biases (n_head*head_dim), (n_head_kv*head_dim) x 2; empty if absent
  WeightMatrix wo;               // (n_embd, n_head*head_dim)
  std::vector<float> ffn_norm;   // (n_embd)
  WeightMatrix w_gate;           // (n_ff, n_embd)
  WeightMatrix w_up;             // (n_ff, n_embd)
  WeightMatrix w_down;           // (n_embd, n_ff)
};

class LlamaModel final : public Model {
 public:
  explicit LlamaModel(std::shared_ptr<GgufFile> file);

  void forward(const int32_t* tokens, int64_t n, uint64_t t0, SinkCache& cache, ForwardScratch& scratch,
               ThreadPool& pool, float* logits, bool all_logits) const override;

 private:
  WeightMatrix token_embd_;       // (n_vocab, n_embd)
  std::vector<float> output_norm_;  // (n_embd)
  WeightMatrix output_;           // (n_vocab, n_embd); token_embd_ when the head is tied
  std::vector<LlamaLayer> layers_;
};

}  // namespace sinkstream
