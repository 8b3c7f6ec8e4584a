// StableLM (Stability AI; StableLM-3B-4E1T, StableLM 2 1.6B): the llama block with LayerNorm (with
// bias), RoPE on NeoX halves of the first 25% of each head, optional Q/K/V biases (StableLM 2),
// SwiGLU MLP. A file without `ffn_norm` runs attention and MLP in parallel on the one input norm
// (StableLM 2 12B's layout, as llama.cpp reads it); the 12B's per-head LayerNorm of queries and keys
// is refused by name.
#include "core/error.h"
#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

void configure_stablelm(const GgufFile& f, ModelConfig& c) {
  if (f.find_tensor("blk.0.attn_q_norm.weight") != nullptr)
    throw ModelError(cat(f.path(), ": StableLM 2 12B's per-head LayerNorm of queries and keys (attn_q_norm) is "
                                   "not supported"));
  use_layer_norm(f, c);
  c.ropes[0].layout = RopeLayout::kNeox;
  const bool parallel = f.find_tensor("blk.0.ffn_norm.weight") == nullptr;
  for (LayerConfig& layer : c.layers) {
    layer.parallel_residual = parallel;
    layer.shared_norm = parallel;
  }
}

}  // namespace sinkstream
