// Qwen 2 / 2.5 and Qwen 3: the llama block with RoPE on NeoX halves (x[i], x[i + n_rot/2]).
// Qwen 2 adds biases to Q, K and V (bound when present); Qwen 3 drops them and normalizes every
// query and key head (RMSNorm over head_dim) before RoPE.
#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

void configure_qwen2(const GgufFile&, ModelConfig& c) { c.ropes[0].layout = RopeLayout::kNeox; }

void configure_qwen3(const GgufFile&, ModelConfig& c) {
  c.ropes[0].layout = RopeLayout::kNeox;
  for (LayerConfig& layer : c.layers) layer.qk_norm = true;
}

}  // namespace sinkstream
