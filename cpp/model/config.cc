#include "model/config.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "gguf/gguf_file.h"
#include "model/families.h"

namespace sinkstream {

int64_t required_int(const GgufFile& f, const std::string& key) {
  std::optional<int64_t> v = f.get_int(key);
  if (!v) throw ModelError(cat(f.path(), ": missing metadata key '", key, "'"));
  return *v;
}

int64_t int_in_range(const GgufFile& f, const std::string& key, int64_t fallback, int64_t lo, int64_t hi) {
  const int64_t v = f.get_int(key).value_or(fallback);
  if (v < lo || v > hi)
    throw ModelError(cat(f.path(), ": metadata '", key, "' = ", v, " is out of range (", lo, "..", hi, ")"));
  return v;
}

bool bool_or(const GgufFile& f, const std::string& key, bool fallback) { return f.get_bool(key).value_or(fallback); }

void use_layer_norm(const GgufFile& f, ModelConfig& c) {
  c.norm_eps = (float)float_in_range(f, c.architecture + ".attention.layer_norm_epsilon", 1e-5, 1e-12, 0.5);
  for (LayerConfig& layer : c.layers) layer.norm = NormKind::kLayerNorm;
}

std::vector<float> alibi_slopes(int64_t n_head, double max_bias) {
  int64_t m = 1;
  while (m * 2 <= n_head) m *= 2;
  std::vector<float> slopes;
  for (int64_t h = 0; h < n_head; ++h) {
    const double exponent = h < m ? max_bias * (double)(h + 1) / (double)m
                                  : max_bias * (double)(2 * (h - m) + 1) / (double)(2 * m);
    slopes.push_back((float)std::pow(2.0, -exponent));
  }
  return slopes;
}

double float_in_range(const GgufFile& f, const std::string& key, double fallback, double lo, double hi) {
  const double v = f.get_float(key).value_or(fallback);
  if (!(v >= lo && v <= hi))  // also refuses NaN
    throw ModelError(cat(f.path(), ": metadata '", key, "' = ", v, " is out of range (", lo, "..", hi, ")"));
  return v;
}

std::vector<double> rope_factor_tensor(const GgufFile& f, const std::string& name, int64_t n_rot) {
  std::vector<double> factors;
  const GgufTensorInfo* t = f.find_tensor(name);
  if (t == nullptr) return factors;
  if ((int64_t)t->n_elements != n_rot / 2)
    throw ModelError(cat(f.path(), ": tensor '", name, "' has ", t->n_elements, " values, expected n_rot/2 = ", n_rot / 2));
  for (float v : f.tensor_to_f32(*t)) {
    if (!(v > 0.0f) || !std::isfinite(v))
      throw ModelError(cat(f.path(), ": tensor '", name, "' holds a non-positive factor ", v));
    factors.push_back(v);
  }
  return factors;
}

namespace {

void check_positive(const GgufFile& f, const std::string& key, int64_t value, int64_t limit) {
  if (value <= 0 || value > limit)
    throw ModelError(cat(f.path(), ": metadata '", key, "' = ", value, " is out of range (1..", limit, ")"));
}

// What every family reads the same way: sizes, norm epsilon and the first RoPE variant.
void read_common(const GgufFile& f, ModelConfig& c) {
  const std::string p = c.architecture + ".";
  c.n_layer = required_int(f, p + "block_count");
  c.n_embd = required_int(f, p + "embedding_length");
  c.n_ff = required_int(f, p + "feed_forward_length");
  c.n_head = required_int(f, p + "attention.head_count");
  c.n_head_kv = f.get_int(p + "attention.head_count_kv").value_or(c.n_head);
  c.n_ctx_train = required_int(f, p + "context_length");
  check_positive(f, p + "block_count", c.n_layer, 4096);
  check_positive(f, p + "embedding_length", c.n_embd, 1 << 20);
  check_positive(f, p + "feed_forward_length", c.n_ff, 1 << 22);
  check_positive(f, p + "attention.head_count", c.n_head, 4096);
  check_positive(f, p + "attention.head_count_kv", c.n_head_kv, 4096);
  check_positive(f, p + "context_length", c.n_ctx_train, int64_t(1) << 40);
  if (c.n_head % c.n_head_kv != 0)
    throw ModelError(cat(f.path(), ": head_count ", c.n_head, " is not a multiple of head_count_kv ", c.n_head_kv));
  c.head_dim = f.get_int(p + "attention.key_length").value_or(c.n_embd / c.n_head);
  check_positive(f, p + "attention.key_length", c.head_dim, 4096);
  const int64_t value_length = f.get_int(p + "attention.value_length").value_or(c.head_dim);
  if (value_length != c.head_dim)
    throw ModelError(cat(f.path(), ": attention.value_length ", value_length, " != key_length ", c.head_dim,
                         " is not supported"));
  c.norm_eps = (float)float_in_range(f, p + "attention.layer_norm_rms_epsilon", 1e-5, 1e-12, 0.5);
  // Mixtures of experts are read here and refused after the family's configure unless it runs
  // them (check_layers); state-space layers need blocks this engine does not have: refuse them
  // here, by name, rather than fail later on a missing tensor.
  c.n_expert = f.get_int(p + "expert_count").value_or(0);
  if (f.get_int(p + "ssm.state_size") || f.get_int(p + "ssm.conv_kernel"))
    throw ModelError(cat(f.path(), ": state-space (recurrent) layers (", p, "ssm.*) are not supported"));

  RopeConfig rope;
  rope.n_rot = f.get_int(p + "rope.dimension_count").value_or(c.head_dim);
  rope.freq_base = float_in_range(f, p + "rope.freq_base", 10000.0, 1.0 + 1e-9, 1e12);
  const std::string scaling = f.get_string(p + "rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    rope.linear_scale = float_in_range(f, p + "rope.scaling.factor", 1.0, 1e-6, 1e6);
  } else if (scaling == "yarn") {
    rope.yarn_factor = float_in_range(f, p + "rope.scaling.factor", 1.0, 1.0, 1e6);
    rope.original_context = int_in_range(f, p + "rope.scaling.original_context_length", c.n_ctx_train, 1,
                                         int64_t(1) << 40);
    rope.yarn_beta_fast = float_in_range(f, p + "rope.scaling.yarn_beta_fast", 32.0, 1e-6, 1e6);
    rope.yarn_beta_slow = float_in_range(f, p + "rope.scaling.yarn_beta_slow", 1.0, 1e-6, 1e6);
    rope.attention_factor = rope.yarn_factor > 1.0 ? 0.1 * std::log(rope.yarn_factor) + 1.0 : 1.0;
  } else if (scaling != "none" && scaling != "longrope") {  // longrope: phi3 reads its factor tensors
    throw ModelError(cat(f.path(), ": rope.scaling.type '", scaling,
                         "' is not supported (none, linear, yarn, longrope)"));
  }
  // llama3-style scaling is stored by converters as per-frequency divisors in `rope_freqs.weight`.
  rope.freq_factors = rope_factor_tensor(f, "rope_freqs.weight", rope.n_rot);
  c.ropes = {rope};

  // Q/K/V as one `attn_qkv` weight (rows q, k, v) wherever the converter wrote it so.
  c.fused_qkv = f.find_tensor("blk.0.attn_qkv.weight") != nullptr;

  LayerConfig layer;
  layer.attention_scale = 1.0f / std::sqrt((float)c.head_dim);
  c.layers.assign((size_t)c.n_layer, layer);
}

// Whatever a family file set, the forward pass can trust it.
void check_layers(const GgufFile& f, const ModelConfig& c, const Family& family) {
  const std::string p = c.architecture + ".";
  if (c.n_expert > 0 && !family.experts)
    throw ModelError(cat(f.path(), ": a mixture of experts (", p, "expert_count = ", c.n_expert,
                         ") is not supported for architecture '", c.architecture, "'"));
  if (c.n_expert < 0 || c.n_expert > 4096)
    throw ModelError(cat(f.path(), ": metadata '", p, "expert_count' = ", c.n_expert, " is out of range (0..4096)"));
  if (c.n_expert > 0 && (c.n_expert_used < 1 || c.n_expert_used > c.n_expert || c.n_expert_used > kMaxExpertsUsed))
    throw ModelError(cat(f.path(), ": metadata '", p, "expert_used_count' = ", c.n_expert_used,
                         " must be in 1..expert_count (", c.n_expert, ") and at most ", kMaxExpertsUsed));
  if (c.n_expert > 0 && (c.n_ff_expert <= 0 || c.n_ff_expert > (1 << 22)))
    throw ModelError(cat(f.path(), ": metadata '", p, "expert_feed_forward_length' = ", c.n_ff_expert,
                         " is out of range (1..", 1 << 22, ")"));
  if (c.ropes.empty()) throw ModelError(cat(f.path(), ": no RoPE configuration"));
  for (const RopeConfig& r : c.ropes)
    if (r.n_rot <= 0 || r.n_rot > c.head_dim || r.n_rot % 2 != 0)
      throw ModelError(cat(f.path(), ": rope.dimension_count ", r.n_rot, " must be even and in 2..head_dim (",
                           c.head_dim, ")"));
  if ((int64_t)c.layers.size() != c.n_layer) throw ModelError(cat(f.path(), ": per-layer configuration incomplete"));
  for (size_t l = 0; l < c.layers.size(); ++l) {
    const LayerConfig& L = c.layers[l];
    if (L.rope < -1 || L.rope >= (int)c.ropes.size())
      throw ModelError(cat(f.path(), ": layer ", l, " names RoPE variant ", L.rope, " of ", c.ropes.size()));
    if (L.sliding_window < 0 || L.sliding_window > (int64_t(1) << 32))
      throw ModelError(cat(f.path(), ": layer ", l, " has sliding window ", L.sliding_window));
    if (L.alibi && (int64_t)c.alibi_slopes.size() != c.n_head)
      throw ModelError(cat(f.path(), ": layer ", l, " uses ALiBi without ", c.n_head, " slopes"));
    if (!(L.attention_scale > 0.0f) || !std::isfinite(L.attention_scale) || !(L.attention_softcap >= 0.0f) ||
        !(L.clamp_qkv >= 0.0f))
      throw ModelError(cat(f.path(), ": layer ", l, " has attention scale ", L.attention_scale, " / soft-cap ",
                           L.attention_softcap));
  }
}

}  // namespace

ModelConfig ModelConfig::from_gguf(const GgufFile& f) {
  ModelConfig c;
  std::optional<std::string> arch = f.get_string("general.architecture");
  if (!arch) throw ModelError(cat(f.path(), ": missing metadata key 'general.architecture'"));
  c.architecture = *arch;
  c.name = f.get_string("general.name").value_or("");
  const Family& family = find_family(f.path(), c.architecture);  // ModelError when none
  read_common(f, c);
  family.configure(f, c);
  check_layers(f, c, family);
  return c;
}

std::vector<int64_t> ModelConfig::layer_windows() const {
  std::vector<int64_t> windows;
  for (const LayerConfig& L : layers) windows.push_back(L.sliding_window);
  return windows;
}

int64_t ModelConfig::max_rot() const {
  int64_t n = 0;
  for (const RopeConfig& r : ropes) n = std::max(n, r.n_rot);
  return n;
}

std::vector<double> RopeConfig::thetas(int64_t capacity) const {
  const bool long_context = !long_freq_factors.empty() && capacity > original_context;
  const std::vector<double>& factors = long_context ? long_freq_factors : freq_factors;
  std::vector<double> out((size_t)(n_rot / 2));
  // YaRN's correction range (YaRN paper eq. 17-18): the dimension d(r) whose wavelength makes r
  // rotations in the original context, d(r) = n_rot ln(L / (2 pi r)) / (2 ln base), floor and ceil,
  // within 0 .. n_rot - 1; between them the blend of extrapolation and interpolation ramps linearly.
  double low = 0.0, high = 0.0;
  if (yarn_factor > 0.0) {
    const auto dim_of = [&](double rotations) {
      return (double)n_rot * std::log((double)original_context / (rotations * 2.0 * 3.14159265358979323846)) / (2.0 * std::log(freq_base));
    };
    low = std::max(std::floor(dim_of(yarn_beta_fast)), 0.0);
    high = std::min(std::ceil(dim_of(yarn_beta_slow)), (double)(n_rot - 1));
    if (low == high) high += 0.001;  // no singularity (as Hugging Face's linear_ramp_factor)
  }
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    double theta = std::pow(freq_base, -2.0 * (double)i / (double)n_rot) / linear_scale;
    if (!factors.empty()) theta /= factors[(size_t)i];
    if (yarn_factor > 0.0) {
      const double ramp = std::min(1.0, std::max(0.0, ((double)i - low) / (high - low)));
      const double extrapolation = 1.0 - ramp;  // 1: the original theta (high frequencies)
      theta = theta / yarn_factor * (1.0 - extrapolation) + theta * extrapolation;
    }
    out[(size_t)i] = theta;
  }
  return out;
}

}  // namespace sinkstream
