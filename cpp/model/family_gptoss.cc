// gpt-oss (OpenAI 2025; llama.cpp's GGUF conventions, architecture "gpt-oss"): the sink the
// StreamingLLM paper (Xiao et al. 2024, section 3.3) proposes to train, shipped as a learned logit
// per head in every softmax (`attn_sinks`, ops.h ScoreBias); layers alternating between a 128-token
// sliding window (even layers) and full attention; NeoX RoPE with YaRN scaling; Q/K/V/O biases; and
// a mixture-of-experts feed-forward (router with bias, softmax over the top-k logits, experts with
// biases and the clamped SwiGLU, MXFP4 weights) fed by the `post_attention_norm` tensor, which
// llama.cpp's converter names so although it is the pre-FFN norm.
#include "core/error.h"
#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

void configure_gptoss(const GgufFile& f, ModelConfig& c) {
  const std::string p = c.architecture + ".";
  c.ropes[0].layout = RopeLayout::kNeox;
  c.ffn_norm_tensor = "post_attention_norm";
  if (c.n_expert <= 0)
    throw ModelError(cat(f.path(), ": gpt-oss needs metadata '", p, "expert_count' > 0 (a mixture of experts)"));
  c.n_expert_used = required_int(f, p + "expert_used_count");
  c.n_ff_expert = f.get_int(p + "expert_feed_forward_length").value_or(c.n_ff);
  const int64_t window = int_in_range(f, p + "attention.sliding_window", 128, 0, int64_t(1) << 32);
  for (size_t l = 0; l < c.layers.size(); ++l) {
    LayerConfig& layer = c.layers[l];
    layer.learned_sinks = true;
    layer.activation = FfnActivation::kSwiGluOai;
    if (l % 2 == 0) layer.sliding_window = window;  // layer 0 slides, layer 1 is full, ...
  }
}

}  // namespace sinkstream
