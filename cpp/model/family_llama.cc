// The llama family: pre-norm blocks with RMSNorm, RoPE on adjacent pairs (GGUF stores Q/K rows
// permuted for it), grouped-query attention, SwiGLU. The defaults of config.cc are this block;
// the variants below change only what their model cards say.
#include <cmath>

#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

namespace {
// Mistral 7B v0.1 (and llama.cpp files of other llama models trained so) attend to the last
// `attention.sliding_window` tokens in every layer.
void every_layer_slides(const GgufFile& f, ModelConfig& c) {
  const int64_t window = int_in_range(f, c.architecture + ".attention.sliding_window", 0, 0, int64_t(1) << 32);
  for (LayerConfig& layer : c.layers) layer.sliding_window = window;
}
}  // namespace

void configure_llama(const GgufFile& f, ModelConfig& c) { every_layer_slides(f, c); }

// Granite (IBM): multipliers from its config, stored as granite.* keys by llama.cpp's converter.
// embeddings * embedding_scale; each block's output * residual_scale before the residual add;
// scores use attention.scale instead of 1/sqrt(head_dim); logits / logit_scale.
void configure_granite(const GgufFile& f, ModelConfig& c) {
  const std::string p = c.architecture + ".";
  c.embedding_scale = (float)float_in_range(f, p + "embedding_scale", 1.0, 1e-6, 1e6);
  c.residual_scale = (float)float_in_range(f, p + "residual_scale", 1.0, 1e-6, 1e6);
  c.logit_scale = (float)(1.0 / float_in_range(f, p + "logit_scale", 1.0, 1e-6, 1e6));
  const double attention_scale = float_in_range(f, p + "attention.scale", 0.0, 0.0, 1e6);
  for (LayerConfig& layer : c.layers)
    if (attention_scale > 0.0) layer.attention_scale = (float)attention_scale;
}

// SmolLM3: every 4th layer ((il + 1) % 4 == 0) has no positional encoding at all (NoPE).
void configure_smollm3(const GgufFile&, ModelConfig& c) {
  for (size_t l = 0; l < c.layers.size(); ++l)
    if ((l + 1) % 4 == 0) c.layers[l].rope = -1;
}

}  // namespace sinkstream
