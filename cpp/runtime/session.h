// Session: one stream over a shared Model. Owns its SinkCache, scratch memory, thread pool and the
// 64-bit stream counter; feeding tokens in any chunking gives the same logits (streaming.md).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kv/sink_cache.h"
#include "model/model.h"
#include "ops/cpu/cpu_backend.h"

namespace sinkstream {

enum class AttentionMode {
  kStreaming,  // sinks + rolling window, positions within the cache (the paper's method)
  kWindow,     // rolling window only (n_sink = 0): the paper's failing baseline
  kDense,      // everything, absolute positions; t >= capacity is an error
  kRecompute,  // re-encode the last C tokens from scratch per token (exact, O(C^2) per token)
};

AttentionMode parse_mode(const std::string& name);  // ArgumentError for an unknown name
const char* mode_name(AttentionMode mode);

// Where a session computes. kCuda needs a build with SINKSTREAM_CUDA and a usable device; its cache
// and activations live on the GPU (ops/cuda/cuda_backend.h), the decoder is the same one.
enum class Device { kCpu, kCuda };
Device parse_device(const std::string& name);  // "cpu" | "cuda"; ArgumentError otherwise
const char* device_name(Device device);

struct SessionOptions {
  AttentionMode mode = AttentionMode::kStreaming;
  int64_t n_sink = 4;
  int64_t window = -1;        // -1: capacity 2048 (capped at the training context) minus n_sink
  int64_t batch_size = 256;   // tokens per forward chunk
  KvType kv_type = KvType::kF16;
  int n_threads = 0;          // 0: physical cores
  bool allow_beyond_training_context = false;
  // Absolute index of the stream's first token (RoPE angles of window keys and queries start
  // here). 0 for a fresh stream; a large value checks that nothing drifts (streaming.md inv. 4).
  uint64_t position_offset = 0;
  // The most bytes the session may allocate (K/V cache, scratch, attention buffers), checked before
  // anything is allocated; 0: the machine's physical memory.
  uint64_t max_bytes = 0;
  Device device = Device::kCpu;
};

// What a session of some options will allocate, computed from the same layouts the constructor
// uses (Session::memory_for): so a caller learns the cost before paying it.
struct SessionMemory {
  size_t kv_cache = 0;   // SinkCache keys and values (sinks + each layer's ring)
  size_t scratch = 0;    // forward activations for batch_size tokens
  size_t attention = 0;  // per-thread attention scores and partial sums over the capacity
  size_t history = 0;    // recompute: the last C tokens and their re-encoding buffer
  size_t total() const { return kv_cache + scratch + attention + history; }
};

// Physical memory of this machine in bytes (the default SessionOptions::max_bytes).
uint64_t physical_memory_bytes();

// What the layers above the engine keep with a stream (Python's generation and chat state). It
// travels in the same checksummed state as the cache and is checked before anything is restored.
struct StreamExtras {
  std::vector<int32_t> pending;  // sampled tokens not fed yet: ids checked against the vocabulary
  bool has_logits = false;
  uint64_t logits_n_past = 0;    // n_past when the logits were computed: <= the state's n_past
  std::vector<float> logits;     // (n_vocab) when has_logits
  std::string app_data;          // opaque to the engine (Python: the chat record as JSON)
};

class Session {
 public:
  // Throws ArgumentError before allocating anything when the options are invalid or the session
  // would need more than options.max_bytes.
  Session(std::shared_ptr<const Model> model, const SessionOptions& options);

  // The memory a session of these options would allocate (ArgumentError for invalid options).
  static SessionMemory memory_for(const Model& model, const SessionOptions& options);

  // Feeds n tokens. all_logits: out is (n, n_vocab); else out is (n_vocab) for the last token.
  // out may be nullptr (no logits wanted). Validates every token id before touching any state.
  // Between chunks, `interrupt` (if given) is asked whether to stop; stopping, or a request_cancel()
  // from another thread, throws Interrupted with every finished chunk kept (n_past counts them).
  void eval(const int32_t* tokens, int64_t n, bool all_logits, float* out,
            const std::function<bool()>& interrupt = nullptr);

  void reset();
  uint64_t n_past() const { return n_past_; }
  int64_t n_cached() const { return n_cached_at(n_past_); }  // K/V entries the next query attends over
  int64_t n_cached_at(uint64_t n_past) const;  // the same for a stream of n_past tokens (<= capacity)
  size_t kv_bytes() const;
  int64_t capacity() const { return n_sink_ + window_; }
  int64_t n_sink() const { return n_sink_; }
  int64_t window() const { return window_; }
  AttentionMode mode() const { return options_.mode; }
  const SessionOptions& options() const { return options_; }
  const Model& model() const { return *model_; }
  int n_threads() const { return pool_.n_threads(); }
  uint64_t keys_rotated() const { return scratch_.keys_rotated; }
  uint64_t entries_attended() const { return backend().entries_attended() + batched_entries_attended_; }
  Device device() const { return options_.device; }

  // Exact snapshot of the stream (cache contents, counter, recompute history, `extras`) in a
  // versioned container with the model's fingerprint, the session geometry's fingerprint and a
  // checksum over everything (format: session.cc, "Saved state"). The same bytes from a device
  // session (its cache copied out of the device first), so a state restores on either device.
  std::vector<uint8_t> save(const StreamExtras& extras = {}) const;
  // Restores a state from save(), all or nothing: the checksum, the fingerprints, every range and
  // size, every token id (history and pending) are checked first, then `accept` (if given) sees the
  // decoded extras and may still refuse them by throwing; only then does anything change. On any
  // error (ArgumentError naming the problem, or whatever `accept` throws) the session is exactly as
  // before.
  void load(const uint8_t* state, size_t size, const std::function<void(StreamExtras&)>& accept = nullptr);
  void load(const std::vector<uint8_t>& state) { load(state.data(), state.size()); }

  // Takes back the token of the last batched step (BatchRunner) this session took part in, when that
  // was one token and nothing has changed the stream since: n_past and the counters return to what
  // they were before it. Its K/V rows stay in their slot, which no query reads before the next
  // token is written there (the ring holds at least the window plus the token being written), so
  // the stream is exactly as if that step had never run. A BatchScheduler runs a generating
  // session's drawn token ahead of its consumer and takes it back this way when the consumer stops
  // (batching.py). ArgumentError when there is no such step to take back.
  void undo_last_token();

  // Asks a running eval (in another thread) to stop after its current chunk.
  void request_cancel() { cancel_requested_.store(true); }

 private:
  friend class BatchRunner;  // runs this session's tokens as one segment of a batched pass (batch.h)

  // For BatchRunner: checks that n tokens can join a batched pass (not recompute mode, n within the
  // ring's slack, ids in the vocabulary, dense capacity) and marks the session busy; throws
  // ArgumentError naming the problem and leaves the session untouched otherwise.
  ForwardSegment begin_segment(const int32_t* tokens, int64_t n, float* logits);
  // After the pass: the stream advanced by the segment's n tokens; the session is free again.
  void end_segment(int64_t n);
  void release_segment() { busy_.store(false); }  // the pass did not run
  struct Geometry {
    int64_t n_sink, window;
  };
  static Geometry resolve_geometry(const Model& model, const SessionOptions& options);
  static SessionMemory memory_for(const Model& model, const SessionOptions& options, Geometry geometry);
  // resolve_geometry, then the memory cap: runs before any member is allocated.
  static Geometry checked_geometry(const Model& model, const SessionOptions& options);
  uint64_t geometry_fingerprint() const;
  SinkCache host_twin() const;  // a device session's cache, copied to the host (save())
  Session(std::shared_ptr<const Model> model, const SessionOptions& options, Geometry geometry);

  void check_tokens(const int32_t* tokens, int64_t n) const;  // ids, and dense mode's capacity
  void eval_cached(const int32_t* tokens, int64_t n, bool all_logits, float* out);
  void eval_recompute(const int32_t* tokens, int64_t n, bool all_logits, float* out);
  void check_interrupt();

  std::shared_ptr<const Model> model_;
  SessionOptions options_;
  int64_t n_sink_ = 0;
  int64_t window_ = 0;
  ThreadPool pool_;
  CpuBackend backend_;
  // device != cpu: the device's backend (the CPU path never looks at it: backend() is backend_).
  std::unique_ptr<Backend> device_backend_;
  Backend& backend() { return device_backend_ ? *device_backend_ : static_cast<Backend&>(backend_); }
  const Backend& backend() const {
    return device_backend_ ? *device_backend_ : static_cast<const Backend&>(backend_);
  }
  SinkCache cache_;
  ForwardScratch scratch_;
  uint64_t n_past_ = 0;
  uint64_t batched_entries_attended_ = 0;  // K/V rows attended in batched passes
  // What undo_last_token() restores: the counters before the last batched step, while it can.
  struct BeforeStep {
    bool undoable = false;
    uint64_t n_past = 0, keys_rotated = 0, entries_attended = 0;
  } before_step_;
  // recompute mode: the last C tokens (a ring indexed by stream position) and the logits buffer.
  std::vector<int32_t> history_;
  std::vector<int32_t> scratch_recompute_tokens_;  // (C) tokens re-encoded for one prediction
  std::atomic<bool> busy_{false};
  std::atomic<bool> cancel_requested_{false};
  const std::function<bool()>* interrupt_ = nullptr;  // set for the duration of one eval
};

}  // namespace sinkstream
