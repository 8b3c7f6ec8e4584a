// Phi-2 (Microsoft): one LayerNorm (with bias) feeding attention and MLP in parallel, Q/K/V with
// biases (separate or fused), RoPE on NeoX halves of the first 32 of 80 dims, plain GELU MLP with the
// tanh approximation ("gelu_new"), biases everywhere, and an output head with a bias.
#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

void configure_phi2(const GgufFile& f, ModelConfig& c) {
  use_layer_norm(f, c);
  c.ropes[0].layout = RopeLayout::kNeox;
  for (LayerConfig& layer : c.layers) {
    layer.activation = FfnActivation::kGeluTanh;
    layer.parallel_residual = true;
    layer.shared_norm = true;
  }
}

}  // namespace sinkstream
