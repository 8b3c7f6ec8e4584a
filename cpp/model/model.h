// Model: weights bound from a GGUF file (left quantized in the map), immutable after load and shared
// by any number of Sessions. One subclass per architecture family (llama.cc, ...).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "gguf/gguf_file.h"
#include "kv/sink_cache.h"
#include "model/config.h"
#include "runtime/tokenizer.h"

namespace sinkstream {

// Per-session working memory of a forward pass over up to max_tokens tokens; allocated once when the
// session is created, so a stream allocates nothing per token.
struct ForwardScratch {
  int64_t max_tokens = 0;
  std::vector<float> x;         // (max_tokens, n_embd) residual stream
  std::vector<float> h;         // (max_tokens, max(n_embd, n_head*head_dim)) normed input / projections
  std::vector<float> q;         // (max_tokens, n_head*head_dim) queries rotated at t
  std::vector<float> q_sink;    // (max_tokens, n_head*head_dim) queries rotated at p(t), for sinks
  std::vector<float> k;         // (max_tokens, n_head_kv*head_dim)
  std::vector<float> v;         // (max_tokens, n_head_kv*head_dim)
  std::vector<float> attn;      // (max_tokens, n_head*head_dim) attention output
  std::vector<float> gate;      // (max_tokens, n_ff)
  std::vector<float> up;        // (max_tokens, n_ff)
  std::vector<float> rope_cos;  // (max_tokens, n_rot/2) at t
  std::vector<float> rope_sin;
  std::vector<float> rope_cos_sink;  // (max_tokens, n_rot/2) at p(t)
  std::vector<float> rope_sin_sink;
  std::vector<uint8_t> separate_sink_query;  // (max_tokens) p(t) != window position of t
  std::vector<float> scores;    // (n_threads, capacity) attention scores
  int64_t scores_stride = 0;
  // One token's attention spread over the threads (decode): scores (n_head, capacity) and the
  // partial sums (n_head_kv, pieces of kAttendChunkRows rows, group * head_dim).
  std::vector<float> spread_scores;
  std::vector<float> spread_partials;
  // Work done so far, counted where it is done: key rotations (one per key per layer, never
  // again: streaming.md invariant 3) and cache entries read by attention (|A(t)| per head and layer).
  uint64_t keys_rotated = 0;
  uint64_t entries_attended = 0;
};

class Model {
 public:
  // Maps the file, reads the config and tokenizer, binds and checks every weight.
  // Throws GgufError / ModelError naming the file, tensor, expected and actual shape.
  static std::shared_ptr<const Model> load(const std::string& path);
  virtual ~Model() = default;

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const GgufFile& file() const { return *file_; }
  int64_t n_vocab() const { return config_.n_vocab; }

  ForwardScratch make_scratch(int64_t max_tokens, int64_t capacity, int n_threads) const;

  // Runs tokens t0 .. t0+n-1 of a stream through the network (n <= scratch.max_tokens): their
  // keys/values go into `cache` (keys rotated at their absolute index), each query attends to its
  // own A(t). Logits: all_logits ? (n, n_vocab) : (n_vocab) for the last token; nullptr: none.
  virtual void forward(const int32_t* tokens, int64_t n, uint64_t t0, SinkCache& cache, ForwardScratch& scratch,
                       ThreadPool& pool, float* logits, bool all_logits) const = 0;

 protected:
  explicit Model(std::shared_ptr<GgufFile> file);

  std::shared_ptr<GgufFile> file_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<double> rope_thetas_;  // n_rot/2 frequencies, double precision
};

}  // namespace sinkstream
