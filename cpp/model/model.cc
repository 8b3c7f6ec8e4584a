#include "model/model.h"

#include <algorithm>

#include "core/error.h"
#include "model/llama.h"

namespace sinkstream {

Model::Model(std::shared_ptr<GgufFile> file) : file_(std::move(file)) {
  config_ = ModelConfig::from_gguf(*file_);
  tokenizer_ = Tokenizer::from_gguf(*file_);
  rope_thetas_ = config_.rope_thetas();
}

std::shared_ptr<const Model> Model::load(const std::string& path) {
  std::shared_ptr<GgufFile> file = GgufFile::open(path);
  // Every architecture the config accepts is of the llama family for now (config.cc).
  return std::make_shared<LlamaModel>(std::move(file));
}

ForwardScratch Model::make_scratch(int64_t max_tokens, int64_t capacity, int n_threads) const {
  const ModelConfig& c = config_;
  const int64_t q_dim = c.n_head * c.head_dim;
  const int64_t kv_dim = c.n_head_kv * c.head_dim;
  const auto rows = [&](int64_t width) { return std::vector<float>((size_t)(max_tokens * width)); };
  ForwardScratch s;
  s.max_tokens = max_tokens;
  s.x = rows(c.n_embd);
  s.h = rows(std::max(c.n_embd, q_dim));
  s.q = rows(q_dim);
  s.q_sink = rows(q_dim);
  s.k = rows(kv_dim);
  s.v = rows(kv_dim);
  s.attn = rows(q_dim);
  s.gate = rows(c.n_ff);
  s.up = rows(c.n_ff);
  s.rope_cos = rows(c.n_rot / 2);
  s.rope_sin = rows(c.n_rot / 2);
  s.rope_cos_sink = rows(c.n_rot / 2);
  s.rope_sin_sink = rows(c.n_rot / 2);
  s.separate_sink_query.assign((size_t)max_tokens, 0);
  s.scores_stride = capacity * (c.n_head / c.n_head_kv);  // one GQA group's scores
  s.scores.assign((size_t)(s.scores_stride * n_threads), 0.0f);
  const int64_t pieces = (capacity + kAttendChunkRows - 1) / kAttendChunkRows;
  s.spread_scores.assign((size_t)(c.n_head * capacity), 0.0f);
  s.spread_partials.assign((size_t)(c.n_head * c.head_dim * pieces), 0.0f);
  return s;
}

}  // namespace sinkstream
