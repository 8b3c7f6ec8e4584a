// Falcon (TII; the paper's Falcon-7B/40B): attention and MLP in parallel on the same input, no
// biases, multi-query attention (one K/V head on the 7B), RoPE on NeoX halves, plain GELU MLP (exact
// erf, as Hugging Face's Falcon; llama.cpp uses the tanh approximation). The 7B layout has one
// LayerNorm feeding both branches; the "new decoder architecture" (40B, 180B) has two: llama.cpp's
// converter stores ln_attn as `attn_norm_2` and ln_mlp as `attn_norm`.
#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

void configure_falcon(const GgufFile& f, ModelConfig& c) {
  use_layer_norm(f, c);
  c.ropes[0].layout = RopeLayout::kNeox;
  const bool two_norms = f.find_tensor("blk.0.attn_norm_2.weight") != nullptr;
  if (two_norms) {
    c.attn_norm_tensor = "attn_norm_2";
    c.ffn_norm_tensor = "attn_norm";
  }
  for (LayerConfig& layer : c.layers) {
    layer.activation = FfnActivation::kGelu;
    layer.parallel_residual = true;
    layer.shared_norm = !two_norms;
  }
}

}  // namespace sinkstream
