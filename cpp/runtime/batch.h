// BatchRunner: one forward pass for several sessions' tokens at once (continuous batching's step).
//
// Decode reads every weight once per token; N streams decoding one token each would read them N
// times. A batched step reads them once for all N rows (the matmuls become small matrix-matrix
// products), while each session keeps its own stream: its own cache, mode, geometry, positions
// and attention set (model.h, ForwardSegment). A session's logits from a batched step are exactly
// those of Session::eval on it alone (chunking never changes a stream: streaming.md invariant 2).
//
// The runner owns the pass's thread pool and scratch; the sessions lend their caches for the step.
// Which tokens run in which step (decode first, long prompts in chunks between) is the scheduler's
// choice (python/sinkstream/batching.py).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "model/model.h"
#include "ops/cpu/cpu_backend.h"
#include "runtime/sampler.h"
#include "runtime/session.h"

namespace sinkstream {

class BatchRunner {
 public:
  // max_tokens: the most rows of one step (all sessions' tokens together); max_sessions: the most
  // sessions per step (sizes the gathered logits).
  BatchRunner(std::shared_ptr<const Model> model, int n_threads, int64_t max_tokens, int64_t max_sessions);

  struct Item {
    Session* session = nullptr;
    const int32_t* tokens = nullptr;
    int64_t n = 0;           // 1 .. the session's batch_size
    float* logits = nullptr;  // (n_vocab) of the last token, or nullptr for none
    // Sampling in the step (sample_tokens): the next token is drawn from the last token's logits
    // (in `logits` when given, else in the runner's scratch) with `sampler`, which accepts it.
    Sampler* sampler = nullptr;
  };

  // Runs every item's tokens as one pass. Everything is checked first (same model, distinct
  // sessions, not recompute mode, sizes, token ids, no session busy elsewhere): on an error nothing
  // has changed. Afterwards each session's stream has advanced by its n tokens.
  void step(const Item* items, int64_t count);

  // After step() on the same items: for each item with a sampler, tokens[i] = the token drawn from
  // its logits (accepted by the sampler), spread over the step's threads; items without one get -1.
  // A sampler's error (say, every logit -inf) is kept for its item alone in errors[i] (empty: none),
  // since the step itself has already advanced every session. The caller keeps each sampler to
  // this call (no other thread uses it meanwhile).
  void sample_tokens(const Item* items, int64_t count, int32_t* tokens, std::vector<std::string>& errors);

  int n_threads() const { return pool_.n_threads(); }
  int64_t max_tokens() const { return scratch_.max_tokens; }
  int64_t max_sessions() const { return max_sessions_; }

 private:
  std::shared_ptr<const Model> model_;
  int64_t max_sessions_;
  ThreadPool pool_;
  // Attention scratch is sized by the largest cache it has served; a larger session joining
  // replaces it (between steps, never per token).
  std::unique_ptr<CpuBackend> backend_;
  int64_t backend_capacity_ = 0;
  ForwardScratch scratch_;
  std::vector<float> logits_rows_;  // (max_sessions, n_vocab): the gathered rows (model.h)
  std::vector<float*> sample_from_;        // per item of the last step: the logits its sampler reads
  std::vector<ForwardSegment> segments_;
};

}  // namespace sinkstream
