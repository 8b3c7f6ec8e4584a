// The ALiBi families (Press et al. 2022), no rotary embedding at all: attention scores get
// -slope_h * distance, with distances within the cache under streaming (streaming.md; the paper
// shows ALiBi MPT streaming): nothing is stored rotated, so nothing moves as the window slides.
//
// MPT (MosaicML): LayerNorm without biases, no biases anywhere, fused `attn_qkv`, optional clipping
// of q, k, v (`attention.clamp_kqv`), plain GELU MLP (exact erf), ALiBi with max bias
// `attention.max_alibi_bias` (8 in every MPT; absent or 0: no ALiBi, as llama.cpp reads it).
// Bloom (BigScience): LayerNorm with bias, also on the embeddings (`token_embd_norm`), biases
// everywhere, fused `attn_qkv`, plain GELU MLP (tanh approximation, bloom_gelu), ALiBi with max
// bias 8.
#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

namespace {
void use_alibi(ModelConfig& c, double max_bias) {
  if (max_bias > 0.0) c.alibi_slopes = alibi_slopes(c.n_head, max_bias);
  for (LayerConfig& layer : c.layers) {
    layer.alibi = max_bias > 0.0;
    layer.rope = -1;
  }
}
}  // namespace

void configure_mpt(const GgufFile& f, ModelConfig& c) {
  use_layer_norm(f, c);
  use_alibi(c, float_in_range(f, "mpt.attention.max_alibi_bias", 0.0, 0.0, 1e3));
  const double clamp = float_in_range(f, "mpt.attention.clamp_kqv", 0.0, 0.0, 1e9);
  for (LayerConfig& layer : c.layers) {
    layer.activation = FfnActivation::kGelu;
    layer.clamp_qkv = (float)clamp;
  }
}

void configure_bloom(const GgufFile& f, ModelConfig& c) {
  use_layer_norm(f, c);
  use_alibi(c, 8.0);  // fixed in Bloom's code; its files carry no key for it
  c.embedding_norm = true;
  for (LayerConfig& layer : c.layers) layer.activation = FfnActivation::kGeluTanh;
}

}  // namespace sinkstream
