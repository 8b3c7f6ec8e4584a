// Hyper-parameters of a decoder, read once from GGUF metadata (`<arch>.*` keys, GGUF spec "LLM"):
// what every layer shares (ModelConfig) and what a layer may do its own way (LayerConfig, one per
// layer: sliding window, RoPE, QK-norm, post-norms, activation, soft-capping). The family files
// (family_*.cc) fill in what their architecture does differently; the forward pass reads only this.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ops/ops.h"

namespace sinkstream {

class GgufFile;

// One RoPE variant; a model has one or two (Gemma 3: local base 10k, global base 1M).
// theta_i = freq_base^(-2i / n_rot) / (factor_i * linear_scale), i < n_rot / 2.
struct RopeConfig {
  int64_t n_rot = 0;  // rotated dims at the start of each head (partial rotary: < head_dim)
  RopeLayout layout = RopeLayout::kAdjacentPairs;
  double freq_base = 10000.0;
  double linear_scale = 1.0;          // rope.scaling.type "linear": positions divided by the factor
  std::vector<double> freq_factors;   // per-frequency divisors (llama3 `rope_freqs`, LongRoPE short)
  // LongRoPE (phi3): other divisors once the cache holds more than original_context tokens, as
  // Hugging Face picks them from the sequence length; empty otherwise.
  std::vector<double> long_freq_factors;
  int64_t original_context = 0;
  double attention_factor = 1.0;      // cos and sin are multiplied by it (LongRoPE/YaRN magnitude)
  // YaRN (Peng et al. 2023, "YaRN: Efficient Context Window Extension", section 3.2 "NTK-by-parts"):
  // yarn_factor > 0 blends theta_i / factor (interpolation) and theta_i (extrapolation) with a linear
  // ramp over the dimensions between the correction dims of beta_fast and beta_slow rotations in
  // original_context tokens (floor/ceil of them: GGUF carries no `truncate`, and llama.cpp and
  // Hugging Face's default truncate). attention_factor = 0.1 ln(factor) + 1 (section 3.4).
  double yarn_factor = 0.0;
  double yarn_beta_fast = 32.0;
  double yarn_beta_slow = 1.0;

  // The frequencies theta_i, i < n_rot/2, in double precision (streaming.md invariant 4), for a
  // cache of `capacity` entries.
  std::vector<double> thetas(int64_t capacity) const;
};

enum class NormKind {
  kRms,        // x / sqrt(mean(x^2) + eps) * w
  kLayerNorm,  // (x - mean) / sqrt(var + eps) * w + b (b when the file has it)
};

struct LayerConfig {
  NormKind norm = NormKind::kRms;
  int64_t sliding_window = 0;  // 0: global; else the layer attends to its last w tokens only
  int rope = 0;                // index into ModelConfig::ropes; -1: no rotation (NoPE, ALiBi)
  bool alibi = false;          // ALiBi biases (ModelConfig::alibi_slopes) on the scores
  // Parallel residual (GPT-J style: gpt-neox, falcon, phi2): x += attn(norm1(x)) + ffn(norm2(x));
  // shared_norm: one norm feeds both branches (falcon 7B, phi2).
  bool parallel_residual = false;
  bool shared_norm = false;
  float clamp_qkv = 0.0f;      // > 0: q, k, v clipped to [-c, c] after the projection (MPT clip_qkv)
  bool qk_norm = false;        // RMS norm of every query and key head before RoPE (Qwen3, Gemma 3)
  bool post_attention_norm = false;  // norm of the attention output before the residual (Gemma 2/3)
  bool post_ffn_norm = false;        // same for the feed-forward output
  FfnActivation activation = FfnActivation::kSwiGlu;
  float attention_scale = 1.0f;      // multiplies q . k (1/sqrt(head_dim) unless the family says)
  float attention_softcap = 0.0f;    // > 0: scores -> cap * tanh(scores / cap) (Gemma 2)
  bool learned_sinks = false;        // a learned sink logit per head in the softmax (gpt-oss attn_sinks)
};

constexpr int64_t kMaxExpertsUsed = 64;  // experts a token may use (gpt-oss: 4)

struct ModelConfig {
  std::string architecture;  // general.architecture
  std::string name;          // general.name
  int64_t n_layer = 0;       // <arch>.block_count
  int64_t n_embd = 0;        // <arch>.embedding_length
  int64_t n_ff = 0;          // <arch>.feed_forward_length
  int64_t n_head = 0;        // <arch>.attention.head_count
  int64_t n_head_kv = 0;     // <arch>.attention.head_count_kv (GQA; defaults to n_head)
  int64_t head_dim = 0;      // <arch>.attention.key_length, default n_embd / n_head
  int64_t n_ctx_train = 0;   // <arch>.context_length
  int64_t n_vocab = 0;       // rows of token_embd
  float norm_eps = 1e-5f;    // <arch>.attention.layer_norm_rms_epsilon (or layer_norm_epsilon)

  // Tensor layout: Phi-3 stores Q/K/V as one `attn_qkv` and gate/up as one `ffn_up` (gate first).
  bool fused_qkv = false;
  bool fused_gate_up = false;
  // The norms feeding attention and the FFN (falcon 40B: `attn_norm_2` and `attn_norm`).
  std::string attn_norm_tensor = "attn_norm";
  std::string ffn_norm_tensor = "ffn_norm";
  bool embedding_norm = false;  // a norm of the embeddings before the first layer (bloom)

  // Scalings (1 and 0 mean none): Gemma multiplies the embeddings by sqrt(n_embd); Granite scales
  // embeddings, residual branches and logits; Gemma 2 soft-caps the final logits.
  float embedding_scale = 1.0f;
  float residual_scale = 1.0f;
  float logit_scale = 1.0f;       // logits are multiplied by it (Granite: 1 / granite.logit_scale)
  float final_logit_softcap = 0.0f;

  std::vector<float> alibi_slopes;  // (n_head) for layers with ALiBi

  // Mixture of experts (gpt-oss): every layer's feed-forward is n_expert experts of width
  // n_ff_expert, a router picks n_expert_used per token (0: a dense feed-forward).
  int64_t n_expert = 0;       // <arch>.expert_count
  int64_t n_expert_used = 0;  // <arch>.expert_used_count, at most kMaxExpertsUsed
  int64_t n_ff_expert = 0;    // <arch>.expert_feed_forward_length (default feed_forward_length)

  std::vector<RopeConfig> ropes;    // at least one
  std::vector<LayerConfig> layers;  // n_layer

  // Reads and checks every hyper-parameter; ModelError names the file, the key and the value.
  // Architectures without a family file are refused with the list of those that run.
  static ModelConfig from_gguf(const GgufFile& file);

  // Sliding windows per layer (0: global), as the cache wants them.
  std::vector<int64_t> layer_windows() const;
  int64_t max_rot() const;  // the largest n_rot of the RoPE variants (scratch sizes)
};

// Readers shared by the family files: a missing key or a value out of range is a ModelError
// naming the file and the key.
int64_t required_int(const GgufFile& f, const std::string& key);
int64_t int_in_range(const GgufFile& f, const std::string& key, int64_t fallback, int64_t lo, int64_t hi);
bool bool_or(const GgufFile& f, const std::string& key, bool fallback);
double float_in_range(const GgufFile& f, const std::string& key, double fallback, double lo, double hi);
std::vector<double> rope_factor_tensor(const GgufFile& f, const std::string& name, int64_t n_rot);  // empty if absent

// What the LayerNorm families (gpt-neox, falcon, mpt, bloom, stablelm, phi2) share: LayerNorm with
// eps from <arch>.attention.layer_norm_epsilon.
void use_layer_norm(const GgufFile& f, ModelConfig& c);

// ALiBi slopes for n_head heads (Press et al. 2022, as Bloom's and MPT's code compute them): with
// m the largest power of two <= n_head, slope_h = 2^(-max_bias (h+1) / m) for h < m, and for the
// rest every other slope of 2m heads: 2^(-max_bias (2(h-m)+1) / (2m)).
std::vector<float> alibi_slopes(int64_t n_head, double max_bias);

}  // namespace sinkstream
