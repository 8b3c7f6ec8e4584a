// GPT-NeoX (EleutherAI: Pythia, the paper's Pythia-12B): LayerNorm with bias, Q/K/V fused in one
// `attn_qkv` with bias (llama.cpp's converter regroups NeoX's per-head q,k,v rows into q, k, v
// blocks), biases on every projection, RoPE on NeoX halves of the first 25% of each head, a plain
// GELU MLP (exact erf, Hugging Face's "gelu"), and the parallel residual
// x + attn(ln1(x)) + mlp(ln2(x)) when `use_parallel_residual` (every Pythia).
#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

void configure_gptneox(const GgufFile& f, ModelConfig& c) {
  use_layer_norm(f, c);
  c.ropes[0].layout = RopeLayout::kNeox;
  const bool parallel = bool_or(f, "gptneox.use_parallel_residual", true);
  for (LayerConfig& layer : c.layers) {
    layer.activation = FfnActivation::kGelu;
    layer.parallel_residual = parallel;
  }
}

}  // namespace sinkstream
