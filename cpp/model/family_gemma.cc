// Gemma 2 and Gemma 3 (Google): NeoX RoPE, embeddings multiplied by sqrt(n_embd), GeGLU
// feed-forward (gelu with the tanh approximation), a second RMSNorm on each block's output before
// the residual add, and layers that alternate between a sliding window and global attention.
// llama.cpp's converter stores Gemma's (1 + w) norm weights with the 1 already added, so every norm
// here is the plain RMSNorm.
#include <cmath>

#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

namespace {

// What Gemma 2 and 3 share. The 27B models scale queries by 1/sqrt(n_embd / n_head) (their
// query_pre_attn_scalar), the others by 1/sqrt(head_dim); GGUF has no key for it, so like
// llama.cpp we tell the 27B models by their layer count.
void configure_gemma_common(ModelConfig& c, int64_t layers_of_27b) {
  c.ropes[0].layout = RopeLayout::kNeox;
  c.embedding_scale = std::sqrt((float)c.n_embd);
  const float scale = c.n_layer == layers_of_27b ? 1.0f / std::sqrt((float)(c.n_embd / c.n_head))
                                                   : 1.0f / std::sqrt((float)c.head_dim);
  for (LayerConfig& layer : c.layers) {
    layer.activation = FfnActivation::kGeGlu;
    layer.post_attention_norm = true;
    layer.post_ffn_norm = true;
    layer.attention_scale = scale;
  }
}

int64_t sliding_window(const GgufFile& f, const ModelConfig& c, int64_t fallback) {
  return int_in_range(f, c.architecture + ".attention.sliding_window", fallback, 0, int64_t(1) << 32);
}

}  // namespace

// Gemma 2: even layers slide (window 4096), odd layers are global; attention scores and final
// logits are soft-capped (cap * tanh(x / cap); 50 and 30 in every Gemma 2, the defaults when a
// file lacks the keys, as in llama.cpp).
void configure_gemma2(const GgufFile& f, ModelConfig& c) {
  configure_gemma_common(c, 46);
  const int64_t window = sliding_window(f, c, 4096);
  const double attention_cap = float_in_range(f, "gemma2.attn_logit_softcapping", 50.0, 0.0, 1e6);
  c.final_logit_softcap = (float)float_in_range(f, "gemma2.final_logit_softcapping", 30.0, 0.0, 1e6);
  for (size_t l = 0; l < c.layers.size(); ++l) {
    if (l % 2 == 0) c.layers[l].sliding_window = window;
    c.layers[l].attention_softcap = (float)attention_cap;
  }
}

// Gemma 3: five sliding-window layers (window 512 on the 270M and 1B) to one global (a period of
// 6, or `attention.sliding_window_pattern`; 0 makes every layer slide, as in llama.cpp), QK-norm,
// and two RoPE variants: local layers base 10,000 (or `rope.freq_base_swa`) unscaled, global
// layers the file's base (1M) with its linear scaling (factor 8 on the 4B and larger).
void configure_gemma3(const GgufFile& f, ModelConfig& c) {
  configure_gemma_common(c, 62);
  const int64_t window = sliding_window(f, c, 0);
  const int64_t period = int_in_range(f, "gemma3.attention.sliding_window_pattern", 6, 0, 1 << 20);
  RopeConfig local = c.ropes[0];
  local.freq_base = float_in_range(f, "gemma3.rope.freq_base_swa", 10000.0, 1.0 + 1e-9, 1e12);
  local.linear_scale = 1.0;
  local.freq_factors.clear();
  c.ropes.push_back(local);
  for (size_t l = 0; l < c.layers.size(); ++l) {
    LayerConfig& layer = c.layers[l];
    layer.qk_norm = true;
    if (window > 0 && (period == 0 || (int64_t)(l + 1) % period != 0)) {
      layer.sliding_window = window;
      layer.rope = 1;
    }
  }
}

}  // namespace sinkstream
