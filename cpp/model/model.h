// Model: weights bound from a GGUF file (left quantized in the map), immutable after load and shared
// by any number of Sessions. The forward pass (decoder.cc) is one, built from the per-layer
// configuration that a family file fills in (families.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf/gguf_file.h"
#include "kv/sink_cache.h"
#include "model/config.h"
#include "ops/backend.h"
#include "runtime/tokenizer.h"

namespace sinkstream {

// Where one forward pass's activations live, as the backend computes on them (Backend::bind_scratch):
// the ForwardScratch vectors below on the CPU, device buffers of the same shapes on a GPU. The
// decoder reads and writes activations only through these pointers, so it is one definition for
// every backend (docs/architectures.md, "Backends").
struct ForwardBuffers {
  float *x = nullptr, *h = nullptr, *qkv = nullptr, *q = nullptr, *q_sink = nullptr, *k = nullptr, *v = nullptr;
  float *attn = nullptr, *branch = nullptr, *gate = nullptr, *up = nullptr;
  struct Rope {
    float *cos = nullptr, *sin = nullptr, *cos_sink = nullptr, *sin_sink = nullptr;
  };
  std::vector<Rope> rope;  // per RoPE variant; the host computes the tables, upload() moves them
  // (max_tokens, n_vocab) logits in backend memory, downloaded into the caller's arrays; nullptr on
  // the CPU, whose matmul writes the caller's arrays directly.
  float* logits = nullptr;
};

// Per-session working memory of a forward pass over up to max_tokens tokens; allocated once when the
// session is created, so a stream allocates nothing per token.
struct ForwardScratch {
  int64_t max_tokens = 0;
  std::vector<float> x;         // (max_tokens, n_embd) residual stream
  std::vector<float> h;         // (max_tokens, max(n_embd, n_head*head_dim)) normed input / block output
  std::vector<float> qkv;       // (max_tokens, q_dim + 2 kv_dim) fused projection (phi3), else empty
  std::vector<float> q;         // (max_tokens, n_head*head_dim) queries rotated at t
  std::vector<float> q_sink;    // (max_tokens, n_head*head_dim) queries rotated at p(t), for sinks
  std::vector<float> k;         // (max_tokens, n_head_kv*head_dim)
  std::vector<float> v;         // (max_tokens, n_head_kv*head_dim)
  std::vector<float> attn;      // (max_tokens, n_head*head_dim) attention output
  std::vector<float> branch;    // (max_tokens, n_embd) the attention branch of a parallel residual
  std::vector<float> gate;      // (max_tokens, n_ff), or (max_tokens, 2 n_ff) with fused gate/up
  std::vector<float> up;        // (max_tokens, n_ff)
  // Mixture of experts (empty without): router logits, then the chosen experts' weights in each
  // row's first n_expert_used places; the chosen experts; one expert's tokens gathered, and its output.
  std::vector<float> router;            // (max_tokens, n_expert)
  std::vector<int32_t> expert_choice;   // (max_tokens, n_expert_used)
  std::vector<int32_t> expert_tokens;   // (max_tokens) rows of the chunk routed to one expert
  std::vector<float> expert_h;          // (max_tokens, n_embd) the feed-forward's input
  std::vector<float> expert_in;         // (max_tokens, n_embd)
  std::vector<float> expert_out;        // (max_tokens, n_embd)
  // Per RoPE variant r: the frequencies for this session's capacity (LongRoPE picks by it), and
  // cos/sin tables (max_tokens, n_rot/2) at the window position of each token and at p(t).
  struct RopeTables {
    std::vector<double> thetas;
    std::vector<float> cos, sin, cos_sink, sin_sink;
  };
  std::vector<RopeTables> rope;
  std::vector<uint8_t> separate_sink_query;  // (max_tokens) p(t) != window position of t
  // One layer's attention calls, one per segment of the pass, and the entries each read (reused
  // from layer to layer: no allocation per layer).
  std::vector<AttentionCall> attention_calls;
  std::vector<uint64_t> attention_entries;
  // Key rotations so far: one per key per layer with RoPE, never again (streaming.md invariant 3).
  uint64_t keys_rotated = 0;
  ForwardBuffers buf;  // set by Backend::bind_scratch at the start of every pass
};

// The ForwardBuffers of the vectors above (the CPU backend's bind_scratch).
ForwardBuffers host_buffers(ForwardScratch& s);

// One stream's part of a forward pass: tokens t0 .. t0+n-1 of the stream whose cache is `cache`.
// Several segments (of different sessions) run as one pass: every weight is read once for all
// their rows, while each segment's RoPE positions, keys and attention stay its own.
struct ForwardSegment {
  const int32_t* tokens = nullptr;
  int64_t n = 0;
  uint64_t t0 = 0;
  SinkCache* cache = nullptr;
  // The owning session's RoPE frequencies (LongRoPE chooses them by the session's capacity).
  const std::vector<ForwardScratch::RopeTables>* rope = nullptr;
  uint64_t* keys_rotated = nullptr;      // the owning session's count (streaming.md invariant 3)
  uint64_t* entries_attended = nullptr;  // adds the K/V rows its queries read; may be nullptr
  // Logits: all_logits ? (n, n_vocab) : (n_vocab) for the last token; nullptr: none. all_logits is
  // allowed for a single segment only.
  float* logits = nullptr;
  bool all_logits = false;
};

// A segment of `n` tokens from stream index t0 of the session owning `cache` and `owner` (its scratch:
// RoPE frequencies and key-rotation count).
inline ForwardSegment make_segment(const int32_t* tokens, int64_t n, uint64_t t0, SinkCache& cache,
                                   ForwardScratch& owner, float* logits) {
  ForwardSegment segment;
  segment.tokens = tokens;
  segment.n = n;
  segment.t0 = t0;
  segment.cache = &cache;
  segment.rope = &owner.rope;
  segment.keys_rotated = &owner.keys_rotated;
  segment.logits = logits;
  return segment;
}

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

  // capacity: the session's n_sink + window (LongRoPE chooses its factors by it).
  ForwardScratch make_scratch(int64_t max_tokens, int64_t capacity) const;
  // Bytes make_scratch(max_tokens, capacity) allocates (memory estimates before a session exists).
  size_t scratch_bytes(int64_t max_tokens, int64_t capacity) const;

  // Identifies the model file for saved session states: a hash of the GGUF header, metadata and
  // tensor table plus samples of every tensor's bytes (its first, middle and last 256), computed
  // once at load. Cheap (no pass over the weights) yet different for two files of the same shapes
  // with other weights, other metadata or another tokenizer.
  uint64_t fingerprint() const { return fingerprint_; }

  // Runs tokens t0 .. t0+n-1 of a stream through the network (n <= scratch.max_tokens): their
  // keys/values go into `cache` (keys rotated at their absolute index), each query attends to its
  // own A_l(t) in every layer. Logits: all_logits ? (n, n_vocab) : (n_vocab) for the last token;
  // nullptr: none.
  void forward(const int32_t* tokens, int64_t n, uint64_t t0, SinkCache& cache, ForwardScratch& scratch,
               Backend& backend, float* logits, bool all_logits) const;

  // Runs several streams' segments as one pass (sum of n <= scratch.max_tokens; the segments'
  // caches distinct). Each segment's keys, values and logits are exactly those of forward() on it
  // alone: rows never mix except in the weight reads they share. `logits_rows` holds the gathered
  // last rows' logits when several segments want them: (count of such segments, n_vocab).
  virtual void forward_segments(const ForwardSegment* segments, int64_t n_segments, ForwardScratch& scratch,
                                Backend& backend, float* logits_rows) const = 0;

 protected:
  explicit Model(std::shared_ptr<GgufFile> file);

  std::shared_ptr<GgufFile> file_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  uint64_t fingerprint_ = 0;
};

}  // namespace sinkstream
