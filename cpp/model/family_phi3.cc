// Phi-3 / Phi-3.5 / Phi-4-mini (Microsoft): the llama block with NeoX RoPE, Q/K/V fused into one
// `attn_qkv` weight and gate/up into one `ffn_up` (gate rows first), an optional sliding window on
// every layer, partial rotary (Phi-4-mini rotates 3/4 of each head), and LongRoPE: per-frequency
// divisors `rope_factors_short` / `rope_factors_long` (the long ones once the cache is longer than
// the original training context) with cos and sin scaled by `rope.scaling.attn_factor`.
#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

void configure_phi3(const GgufFile& f, ModelConfig& c) {
  const std::string p = c.architecture + ".";
  c.fused_gate_up = f.find_tensor("blk.0.ffn_gate.weight") == nullptr;
  RopeConfig& rope = c.ropes[0];
  rope.layout = RopeLayout::kNeox;
  rope.freq_factors = rope_factor_tensor(f, "rope_factors_short.weight", rope.n_rot);
  rope.long_freq_factors = rope_factor_tensor(f, "rope_factors_long.weight", rope.n_rot);
  rope.original_context = int_in_range(f, p + "rope.scaling.original_context_length", c.n_ctx_train, 1,
                                       int64_t(1) << 40);
  rope.attention_factor = float_in_range(f, p + "rope.scaling.attn_factor", 1.0, 1e-3, 1e3);
  const int64_t window = int_in_range(f, p + "attention.sliding_window", 0, 0, int64_t(1) << 32);
  for (LayerConfig& layer : c.layers) layer.sliding_window = window;
}

}  // namespace sinkstream
