#include "model/model.h"

#include <algorithm>

#include "core/error.h"
#include "core/hash.h"
#include "model/decoder.h"

namespace sinkstream {

namespace {

// Model::fingerprint(): the header, metadata and tensor table as they are in the file, then 256
// bytes at the start, middle and end of every tensor (all of a smaller one): a few KiB per tensor
// read once, never the whole weights, yet two fine-tunes of one base model differ.
uint64_t fingerprint_of(const GgufFile& file) {
  constexpr size_t kSample = 256;
  std::vector<uint64_t> parts;
  parts.push_back(hash64(file.image(), (size_t)std::min(file.data_offset(), file.file_size())));
  for (const GgufTensorInfo& t : file.tensors()) {
    const size_t n = (size_t)t.n_bytes;
    if (t.data == nullptr) continue;
    if (n <= 3 * kSample) {
      parts.push_back(hash64(t.data, n));
    } else {
      for (size_t at : {size_t(0), n / 2 - kSample / 2, n - kSample}) parts.push_back(hash64(t.data + at, kSample));
    }
  }
  return hash64(parts.data(), parts.size() * sizeof(uint64_t), 0x53494E4Bull);
}

}  // namespace

Model::Model(std::shared_ptr<GgufFile> file) : file_(std::move(file)) {
  config_ = ModelConfig::from_gguf(*file_);
  tokenizer_ = Tokenizer::from_gguf(*file_);
  fingerprint_ = fingerprint_of(*file_);
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
  const int64_t n_ff = std::max(c.n_ff, c.n_ff_expert);
  s.gate = rows(c.fused_gate_up ? 2 * n_ff : n_ff);
  s.up = rows(n_ff);
  if (c.n_expert > 0) {
    s.router = rows(c.n_expert);
    s.expert_choice.assign((size_t)(max_tokens * c.n_expert_used), 0);
    s.expert_tokens.assign((size_t)max_tokens, 0);
    s.expert_h = rows(c.n_embd);
    s.expert_in = rows(c.n_embd);
    s.expert_out = rows(c.n_embd);
  }
  for (const RopeConfig& r : c.ropes) {
    ForwardScratch::RopeTables t;
    t.thetas = r.thetas(capacity);
    t.cos = t.sin = t.cos_sink = t.sin_sink = rows(r.n_rot / 2);
    s.rope.push_back(std::move(t));
  }
  s.separate_sink_query.assign((size_t)max_tokens, 0);
  return s;
}

void Model::forward(const int32_t* tokens, int64_t n, uint64_t t0, SinkCache& cache, ForwardScratch& scratch,
                    Backend& backend, float* logits, bool all_logits) const {
  ForwardSegment segment;
  segment.tokens = tokens;
  segment.n = n;
  segment.t0 = t0;
  segment.cache = &cache;
  segment.rope = &scratch.rope;
  segment.keys_rotated = &scratch.keys_rotated;
  segment.logits = logits;
  segment.all_logits = all_logits;
  forward_segments(&segment, 1, scratch, backend, nullptr);
}

size_t Model::scratch_bytes(int64_t max_tokens, int64_t capacity) const {
  // One token's scratch, scaled: every buffer is max_tokens rows except the RoPE frequencies, so
  // the estimate follows make_scratch wherever it changes.
  const ForwardScratch one = make_scratch(1, capacity);
  size_t per_token = one.separate_sink_query.size() + (one.expert_choice.size() + one.expert_tokens.size()) * 4;
  for (const std::vector<float>* rows : {&one.x, &one.h, &one.qkv, &one.q, &one.q_sink, &one.k, &one.v, &one.attn,
                                         &one.branch, &one.gate, &one.up, &one.router, &one.expert_h, &one.expert_in,
                                         &one.expert_out})
    per_token += rows->size() * sizeof(float);
  size_t fixed = 0;
  for (const ForwardScratch::RopeTables& t : one.rope) {
    per_token += (t.cos.size() + t.sin.size() + t.cos_sink.size() + t.sin_sink.size()) * sizeof(float);
    fixed += t.thetas.size() * sizeof(double);
  }
  return per_token * (size_t)max_tokens + fixed;
}

}  // namespace sinkstream
