#include "model/config.h"

#include <cmath>

#include "core/error.h"
#include "gguf/gguf_file.h"

namespace sinkstream {

namespace {

// Architectures of the llama family this engine runs, and their RoPE layout (llama.cpp's
// LLAMA_ROPE_TYPE_NORM vs _NEOX per architecture).
struct FamilyInfo {
  const char* arch;
  RopeLayout layout;
};
constexpr FamilyInfo kLlamaFamily[] = {
    {"llama", RopeLayout::kAdjacentPairs},
    {"mistral", RopeLayout::kAdjacentPairs},
    {"granite", RopeLayout::kAdjacentPairs},
    {"qwen2", RopeLayout::kNeox},
};

int64_t required_int(const GgufFile& f, const std::string& key) {
  std::optional<int64_t> v = f.get_int(key);
  if (!v) throw ModelError(cat(f.path(), ": missing metadata key '", key, "'"));
  return *v;
}

void check_positive(const GgufFile& f, const char* key, int64_t value, int64_t limit = 1 << 24) {
  if (value <= 0 || value > limit)
    throw ModelError(cat(f.path(), ": metadata '", key, "' = ", value, " is out of range (1..", limit, ")"));
}

}  // namespace

ModelConfig ModelConfig::from_gguf(const GgufFile& f) {
  ModelConfig c;
  std::optional<std::string> arch = f.get_string("general.architecture");
  if (!arch) throw ModelError(cat(f.path(), ": missing metadata key 'general.architecture'"));
  c.architecture = *arch;
  c.name = f.get_string("general.name").value_or("");
  const FamilyInfo* family = nullptr;
  for (const auto& fam : kLlamaFamily)
    if (c.architecture == fam.arch) family = &fam;
  if (family == nullptr) {
    std::string known;
    for (const auto& fam : kLlamaFamily) known += cat(known.empty() ? "" : ", ", fam.arch);
    throw ModelError(cat(f.path(), ": architecture '", c.architecture, "' is not supported (supported: ", known, ")"));
  }
  c.rope_layout = family->layout;
  const std::string p = c.architecture + ".";

  c.n_layer = required_int(f, p + "block_count");
  c.n_embd = required_int(f, p + "embedding_length");
  c.n_ff = required_int(f, p + "feed_forward_length");
  c.n_head = required_int(f, p + "attention.head_count");
  c.n_head_kv = f.get_int(p + "attention.head_count_kv").value_or(c.n_head);
  c.n_ctx_train = required_int(f, p + "context_length");
  check_positive(f, "block_count", c.n_layer, 4096);
  check_positive(f, "embedding_length", c.n_embd, 1 << 20);
  check_positive(f, "feed_forward_length", c.n_ff, 1 << 22);
  check_positive(f, "attention.head_count", c.n_head, 4096);
  check_positive(f, "attention.head_count_kv", c.n_head_kv, 4096);
  check_positive(f, "context_length", c.n_ctx_train, int64_t(1) << 40);
  if (c.n_head % c.n_head_kv != 0)
    throw ModelError(cat(f.path(), ": head_count ", c.n_head, " is not a multiple of head_count_kv ", c.n_head_kv));
  c.head_dim = f.get_int(p + "attention.key_length").value_or(c.n_embd / c.n_head);
  check_positive(f, "attention.key_length", c.head_dim, 4096);
  const int64_t value_length = f.get_int(p + "attention.value_length").value_or(c.head_dim);
  if (value_length != c.head_dim)
    throw ModelError(cat(f.path(), ": attention.value_length ", value_length, " != key_length ", c.head_dim,
                         " is not supported"));
  c.rms_eps = (float)f.get_float(p + "attention.layer_norm_rms_epsilon").value_or(1e-5);
  if (!(c.rms_eps > 0.0f && c.rms_eps < 1.0f))
    throw ModelError(cat(f.path(), ": attention.layer_norm_rms_epsilon = ", c.rms_eps, " is out of range"));

  c.n_rot = f.get_int(p + "rope.dimension_count").value_or(c.head_dim);
  if (c.n_rot <= 0 || c.n_rot > c.head_dim || c.n_rot % 2 != 0)
    throw ModelError(cat(f.path(), ": rope.dimension_count ", c.n_rot, " must be even and in 2..head_dim (",
                         c.head_dim, ")"));
  c.rope_freq_base = f.get_float(p + "rope.freq_base").value_or(10000.0);
  if (!(c.rope_freq_base > 1.0) || !std::isfinite(c.rope_freq_base))
    throw ModelError(cat(f.path(), ": rope.freq_base = ", c.rope_freq_base, " is out of range"));
  const std::string scaling = f.get_string(p + "rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    c.rope_linear_scale = f.get_float(p + "rope.scaling.factor").value_or(1.0);
    if (!(c.rope_linear_scale > 0.0) || !std::isfinite(c.rope_linear_scale))
      throw ModelError(cat(f.path(), ": rope.scaling.factor = ", c.rope_linear_scale, " is out of range"));
  } else if (scaling != "none") {
    throw ModelError(cat(f.path(), ": rope.scaling.type '", scaling, "' is not supported (none, linear)"));
  }
  // llama3-style scaling is stored by converters as per-frequency divisors in `rope_freqs.weight`.
  if (const GgufTensorInfo* t = f.find_tensor("rope_freqs.weight")) {
    if ((int64_t)t->n_elements != c.n_rot / 2)
      throw ModelError(cat(f.path(), ": tensor 'rope_freqs.weight' has ", t->n_elements, " values, expected n_rot/2 = ",
                           c.n_rot / 2));
    for (float v : f.tensor_to_f32(*t)) {
      if (!(v > 0.0f) || !std::isfinite(v))
        throw ModelError(cat(f.path(), ": tensor 'rope_freqs.weight' holds a non-positive factor ", v));
      c.rope_freq_factors.push_back(v);
    }
  }
  return c;
}

std::vector<double> ModelConfig::rope_thetas() const {
  std::vector<double> thetas((size_t)(n_rot / 2));
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    double theta = std::pow(rope_freq_base, -2.0 * (double)i / (double)n_rot) / rope_linear_scale;
    if (!rope_freq_factors.empty()) theta /= rope_freq_factors[(size_t)i];
    thetas[(size_t)i] = theta;
  }
  return thetas;
}

}  // namespace sinkstream
