// Hyper-parameters of a decoder, read from GGUF metadata (`<arch>.*` keys, GGUF spec "LLM").
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ops/ops.h"

namespace sinkstream {

class GgufFile;

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
  float rms_eps = 1e-5f;     // <arch>.attention.layer_norm_rms_epsilon
  // RoPE: theta_i = freq_base^(-2i / n_rot) / (freq_factor_i * linear_scale), i < n_rot / 2.
  int64_t n_rot = 0;         // <arch>.rope.dimension_count, default head_dim
  double rope_freq_base = 10000.0;
  double rope_linear_scale = 1.0;  // <arch>.rope.scaling.factor when rope.scaling.type == "linear"
  RopeLayout rope_layout = RopeLayout::kAdjacentPairs;
  std::vector<double> rope_freq_factors;  // from a `rope_freqs.weight` tensor (llama3-style), or empty

  // Reads and checks every hyper-parameter; ModelError names the key and the value.
  static ModelConfig from_gguf(const GgufFile& file);
  // The frequencies theta_i, i < n_rot/2, in double precision (streaming.md invariant 4).
  std::vector<double> rope_thetas() const;
};

}  // namespace sinkstream
