#include "model/model.h"

#include <algorithm>

#include "core/error.h"
#include "model/decoder.h"

namespace sinkstream {

Model::Model(std::shared_ptr<GgufFile> file) : file_(std::move(file)) {
  config_ = ModelConfig::from_gguf(*file_);
  tokenizer_ = Tokenizer::from_gguf(*file_);
}

std::shared_ptr<const Model> Model::load(const std::string& path) {
  std::shared_ptr<GgufFile> file = GgufFile::open(path);
  return std::make_shared<Decoder>(std::move(file));
}

ForwardScratch Model::make_scratch(int64_t max_tokens, int64_t capacity) const {
  const ModelConfig& c = config_;
  const int64_t q_dim = c.n_head * c.head_dim;
  const int64_t kv_dim = c.n_head_kv * c.head_dim;
  const auto rows = [&](int64_t width) { return std::vector<float>((size_t)(max_tokens * width)); };
  ForwardScratch s;
  s.max_tokens = max_tokens;
  s.x = rows(c.n_embd);
  s.h = rows(std::max(c.n_embd, q_dim));
  if (c.fused_qkv) s.qkv = rows(q_dim + 2 * kv_dim);
  s.q = rows(q_dim);
  s.q_sink = rows(q_dim);
  s.k = rows(kv_dim);
  s.v = rows(kv_dim);
  s.attn = rows(q_dim);
  bool parallel = false;
  for (const LayerConfig& L : c.layers) parallel = parallel || L.parallel_residual;
  if (parallel) s.branch = rows(c.n_embd);
  s.gate = rows(c.fused_gate_up ? 2 * c.n_ff : c.n_ff);
  s.up = rows(c.n_ff);
  for (const RopeConfig& r : c.ropes) {
    ForwardScratch::RopeTables t;
    t.thetas = r.thetas(capacity);
    t.cos = t.sin = t.cos_sink = t.sin_sink = rows(r.n_rot / 2);
    s.rope.push_back(std::move(t));
  }
  s.separate_sink_query.assign((size_t)max_tokens, 0);
  return s;
}

}  // namespace sinkstream
