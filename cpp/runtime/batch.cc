#include "runtime/batch.h"

#include <algorithm>

#include "core/error.h"

namespace sinkstream {

BatchRunner::BatchRunner(std::shared_ptr<const Model> model, int n_threads, int64_t max_tokens, int64_t max_sessions)
    : model_(std::move(model)),
      max_sessions_(max_sessions),
      pool_(n_threads > 0 ? n_threads : ThreadPool::default_thread_count()),
      scratch_(model_->make_scratch(max_tokens, model_->config().n_ctx_train)) {
  SS_CHECK_ARG(max_tokens >= 1 && max_tokens <= 65536, "max_tokens must be in 1..65536, got ", max_tokens);
  SS_CHECK_ARG(max_sessions >= 1 && max_sessions <= max_tokens, "max_sessions must be in 1..max_tokens (",
               max_tokens, "), got ", max_sessions);
  logits_rows_.resize((size_t)(max_sessions * model_->n_vocab()));
  segments_.reserve((size_t)max_sessions);
}

void BatchRunner::step(const Item* items, int64_t count) {
  SS_CHECK_ARG(count >= 1 && count <= max_sessions_, "a batched step takes 1..", max_sessions_,
               " sessions, got ", count);
  int64_t rows = 0, capacity = 0;
  for (int64_t i = 0; i < count; ++i) {
    const Session* s = items[i].session;
    SS_CHECK_ARG(s != nullptr, "batch item ", i, " has no session");
    SS_CHECK_ARG(&s->model() == model_.get(), "batch item ", i, "'s session belongs to another model");
    for (int64_t j = 0; j < i; ++j)
      SS_CHECK_ARG(items[j].session != s, "batch items ", j, " and ", i, " are the same session");
    rows += items[i].n;
    capacity = std::max(capacity, s->capacity());
  }
  SS_CHECK_ARG(rows <= scratch_.max_tokens, "a batched step holds at most ", scratch_.max_tokens, " tokens, got ",
               rows);

  // Claim every session (checks included) before anything runs; give them all back on any error.
  // Where each item's logits go: its own array, or for a sampler alone the row of the runner's
  // gathered logits it is computed into (forward_segments gathers the rows that want logits in
  // item order, and copies a row onto itself as a no-op).
  const int64_t n_vocab = model_->n_vocab();
  sample_from_.assign((size_t)count, nullptr);
  for (int64_t i = 0, gathered = 0; i < count; ++i) {
    float* logits = items[i].logits;
    if (logits == nullptr && items[i].sampler != nullptr) logits = logits_rows_.data() + gathered * n_vocab;
    if (logits != nullptr) ++gathered;
    sample_from_[(size_t)i] = logits;
  }
  segments_.clear();
  try {
    for (int64_t i = 0; i < count; ++i)
      segments_.push_back(items[i].session->begin_segment(items[i].tokens, items[i].n, sample_from_[(size_t)i]));
  } catch (...) {
    for (size_t i = 0; i < segments_.size(); ++i) items[i].session->release_segment();
    throw;
  }
  struct Release {  // on an exception during the pass
    const Item* items;
    int64_t count;
    bool done = false;
    ~Release() {
      if (!done)
        for (int64_t i = 0; i < count; ++i) items[i].session->release_segment();
    }
  } release{items, count};

  if (capacity > backend_capacity_) {
    const ModelConfig& c = model_->config();
    backend_ = std::make_unique<CpuBackend>(pool_, capacity, c.n_head, c.n_head_kv, c.head_dim);
    backend_capacity_ = capacity;
  }
  model_->forward_segments(segments_.data(), count, scratch_, *backend_, logits_rows_.data());
  release.done = true;
  for (int64_t i = 0; i < count; ++i) items[i].session->end_segment(items[i].n);
}

void BatchRunner::sample_tokens(const Item* items, int64_t count, int32_t* tokens, std::vector<std::string>& errors) {
  SS_CHECK_ARG(count == (int64_t)sample_from_.size(), "sample_tokens: ", count, " items, the step had ",
               sample_from_.size());
  errors.assign((size_t)count, std::string());
  const int32_t n_vocab = (int32_t)model_->n_vocab();
  pool_.run(count, [&](int64_t i, int) {
    tokens[i] = -1;
    if (items[i].sampler == nullptr) return;
    try {
      tokens[i] = items[i].sampler->sample(sample_from_[(size_t)i], n_vocab);
      items[i].sampler->accept(tokens[i]);
    } catch (const std::exception& e) {  // never out of a pool thread
      tokens[i] = -1;
      errors[(size_t)i] = e.what();
    }
  });
}

}  // namespace sinkstream
