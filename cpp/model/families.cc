#include "model/families.h"

#include "core/error.h"

namespace sinkstream {

const std::vector<Family>& supported_families() {
  static const std::vector<Family> families = {
      {"llama", "Llama 1/2/3 (llama3 RoPE factors), SmolLM2, Mistral with a sliding window", configure_llama},
      {"mistral", "as llama", configure_llama},
      {"granite", "llama with embedding, residual, attention and logit multipliers", configure_granite},
      {"smollm3", "llama with no RoPE (NoPE) on every 4th layer", configure_smollm3},
      {"qwen2", "NeoX RoPE, Q/K/V biases", configure_qwen2},
      {"qwen3", "NeoX RoPE, QK-norm", configure_qwen3},
      {"gemma2", "sliding-window and global layers, attention and final logit soft-capping, post-norms, GeGLU",
       configure_gemma2},
      {"gemma3", "5 sliding-window : 1 global layers, two RoPE bases, QK-norm, post-norms, GeGLU", configure_gemma3},
      {"phi3", "fused QKV and gate/up, LongRoPE, partial rotary, sliding window", configure_phi3},
      {"gptneox", "LayerNorm, parallel residual, partial NeoX rotary, GELU MLP, biases (Pythia)", configure_gptneox},
      {"falcon", "parallel attention + MLP, multi-query attention, one or two LayerNorms", configure_falcon},
      {"mpt", "ALiBi, LayerNorm without biases, clip_qkv", configure_mpt},
      {"bloom", "ALiBi, LayerNorm on the embeddings, GELU MLP, biases", configure_bloom},
      {"stablelm", "LayerNorm, partial NeoX rotary, SwiGLU", configure_stablelm},
      {"phi2", "parallel residual with one LayerNorm, partial NeoX rotary, GELU MLP, output bias", configure_phi2},
      {"gpt-oss", "learned attention sinks, alternating sliding-window and full layers, MXFP4 mixture of experts "
                  "(router top-k, clamped SwiGLU), YaRN RoPE, attention biases", configure_gptoss, true},
  };
  return families;
}

namespace {

// Architectures people meet that need more than a family file: say what is missing.
struct Unsupported {
  const char* architecture;
  const char* needs;
};
constexpr Unsupported kUnsupported[] = {
    {"mamba", "a recurrent state-space model (no attention, so no attention sinks)"},
    {"mamba2", "a recurrent state-space model (no attention, so no attention sinks)"},
    {"rwkv6", "a recurrent model (no attention, so no attention sinks)"},
    {"rwkv7", "a recurrent model (no attention, so no attention sinks)"},
    {"jamba", "a hybrid of recurrent (Mamba) and attention layers, and mixture-of-experts blocks"},
    {"falcon-h1", "a hybrid of recurrent (Mamba) and attention layers"},
    {"granitehybrid", "a hybrid of recurrent (Mamba) and attention layers"},
    {"lfm2", "a hybrid of short convolution and attention layers"},
    {"qwen3next", "a hybrid of linear-attention (gated delta net) and attention layers, mixture of experts"},
    {"nemotron_h", "a hybrid of recurrent (Mamba) and attention layers"},
    {"plamo2", "a hybrid of recurrent (Mamba) and attention layers"},
    {"qwen2moe", "mixture-of-experts feed-forward blocks"},
    {"qwen3moe", "mixture-of-experts feed-forward blocks"},
    {"mixtral", "mixture-of-experts feed-forward blocks"},
    {"bert", "an encoder (bidirectional attention): there is no stream to generate"},
    {"nomic-bert", "an encoder (bidirectional attention): there is no stream to generate"},
    {"t5", "an encoder-decoder"},
    {"gemma3n", "per-layer embeddings, AltUp and LAuReL blocks"},
    {"gpt2", "learned absolute position embeddings, which cannot be re-assigned within a cache"},
    {"starcoder", "learned absolute position embeddings, which cannot be re-assigned within a cache"},
};

}  // namespace

const Family& find_family(const std::string& path, const std::string& architecture) {
  for (const Family& family : supported_families())
    if (architecture == family.architecture) return family;
  std::string known;
  for (const Family& family : supported_families()) known += cat(known.empty() ? "" : ", ", family.architecture);
  for (const Unsupported& u : kUnsupported)
    if (architecture == u.architecture)
      throw ModelError(cat(path, ": architecture '", architecture, "' is not supported: it is ", u.needs,
                           ", which sinkstream does not implement (supported: ", known, ")"));
  throw ModelError(cat(path, ": architecture '", architecture, "' is not supported (supported: ", known, ")"));
}

}  // namespace sinkstream
