#include "runtime/session.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace sinkstream {

namespace {

constexpr int64_t kDefaultCapacity = 2048;  // streaming.md: default C, capped at the training context
constexpr uint32_t kStateMagic = 0x564B5353;  // "SSKV"
constexpr uint32_t kStateVersion = 1;

// Marks a session busy for the duration of a call: a second thread gets a clear error instead of
// corrupting the cache.
class BusyGuard {
 public:
  explicit BusyGuard(std::atomic<bool>& busy) : busy_(busy) {
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true))
      throw ArgumentError("this Session is already in use by another thread; use one Session per thread");
  }
  ~BusyGuard() { busy_.store(false); }

 private:
  std::atomic<bool>& busy_;
};

struct Geometry {
  int64_t n_sink, window;
};

Geometry resolve_geometry(const Model& model, const SessionOptions& o) {
  const int64_t n_ctx = model.config().n_ctx_train;
  SS_CHECK_ARG(o.n_sink >= 0, "n_sink must be >= 0, got ", o.n_sink);
  SS_CHECK_ARG(o.window == -1 || o.window >= 1, "window must be >= 1, got ", o.window);
  SS_CHECK_ARG(o.batch_size >= 1 && o.batch_size <= 65536, "batch_size must be in 1..65536, got ", o.batch_size);
  Geometry g{};
  switch (o.mode) {
    case AttentionMode::kStreaming:
      g.n_sink = o.n_sink;
      g.window = o.window != -1 ? o.window : std::max<int64_t>(1, std::min(kDefaultCapacity, n_ctx) - o.n_sink);
      break;
    case AttentionMode::kWindow:
    case AttentionMode::kRecompute:
      SS_CHECK_ARG(o.n_sink == 0, "mode '", mode_name(o.mode), "' keeps no attention sinks: n_sink must be 0, got ",
                   o.n_sink);
      g.n_sink = 0;
      g.window = o.window != -1 ? o.window : std::min(kDefaultCapacity, n_ctx);
      break;
    case AttentionMode::kDense:
      SS_CHECK_ARG(o.n_sink == 0, "mode 'dense' attends to everything: n_sink must be 0, got ", o.n_sink);
      g.n_sink = 0;
      g.window = o.window != -1 ? o.window : n_ctx;
      break;
  }
  const int64_t capacity = g.n_sink + g.window;
  SS_CHECK_ARG(capacity <= n_ctx || o.allow_beyond_training_context, "n_sink + window = ", capacity,
               " exceeds the model's training context ", n_ctx,
               " (positions past it were never trained; pass allow_beyond_training_context=True to force)");
  SS_CHECK_ARG(capacity <= (int64_t(1) << 24), "n_sink + window = ", capacity, " is too large");
  return g;
}

int64_t chunk_capacity(const SessionOptions& o) {
  // Dense and recompute caches never evict, so they need no ring slack.
  return o.mode == AttentionMode::kDense || o.mode == AttentionMode::kRecompute ? 1 : o.batch_size;
}

}  // namespace

AttentionMode parse_mode(const std::string& name) {
  if (name == "streaming") return AttentionMode::kStreaming;
  if (name == "window") return AttentionMode::kWindow;
  if (name == "dense") return AttentionMode::kDense;
  if (name == "recompute") return AttentionMode::kRecompute;
  throw ArgumentError(cat("mode must be one of streaming, window, dense, recompute; got '", name, "'"));
}

const char* mode_name(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::kStreaming: return "streaming";
    case AttentionMode::kWindow: return "window";
    case AttentionMode::kDense: return "dense";
    case AttentionMode::kRecompute: return "recompute";
  }
  return "?";
}

Session::Session(std::shared_ptr<const Model> model, const SessionOptions& options)
    : model_(std::move(model)),
      options_(options),
      n_sink_(resolve_geometry(*model_, options).n_sink),
      window_(resolve_geometry(*model_, options).window),
      pool_(options.n_threads > 0 ? options.n_threads : ThreadPool::default_thread_count()),
      cache_(model_->config().n_layer, model_->config().n_head_kv, model_->config().head_dim, n_sink_, window_,
             chunk_capacity(options), options.kv_type, options.position_offset),
      scratch_(model_->make_scratch(options.batch_size, n_sink_ + window_, pool_.n_threads())) {
  if (options_.mode == AttentionMode::kRecompute) history_.assign((size_t)capacity(), 0);
}

void Session::reset() {
  BusyGuard guard(busy_);
  n_past_ = 0;  // the cache is overwritten before it is read again: no need to clear it
}

int64_t Session::n_cached() const {
  if (options_.mode == AttentionMode::kDense) return (int64_t)n_past_;
  return (int64_t)std::min<uint64_t>(n_past_, (uint64_t)capacity());
}

size_t Session::kv_bytes() const { return cache_.bytes(); }

void Session::check_cancel() {
  if (cancel_requested_.exchange(false)) throw std::runtime_error("evaluation cancelled");
}

void Session::eval(const int32_t* tokens, int64_t n, bool all_logits, float* out) {
  BusyGuard guard(busy_);
  SS_CHECK_ARG(n >= 0, "token count must be >= 0, got ", n);
  const int64_t n_vocab = model_->n_vocab();
  for (int64_t i = 0; i < n; ++i)
    SS_CHECK_ARG(tokens[i] >= 0 && tokens[i] < n_vocab, "token id ", tokens[i], " at index ", i,
                 " is outside the vocabulary (0..", n_vocab - 1, ")");
  if (options_.mode == AttentionMode::kDense)
    SS_CHECK_ARG(n_past_ + (uint64_t)n <= (uint64_t)capacity(), "dense mode holds at most ", capacity(),
                 " tokens: ", n_past_, " fed plus ", n, " more would exceed it (use mode='streaming')");
  if (n == 0) return;
  cancel_requested_.store(false);
  if (options_.mode == AttentionMode::kRecompute)
    eval_recompute(tokens, n, all_logits, out);
  else
    eval_cached(tokens, n, all_logits, out);
}

void Session::eval_cached(const int32_t* tokens, int64_t n, bool all_logits, float* out) {
  const int64_t n_vocab = model_->n_vocab();
  for (int64_t done = 0; done < n;) {
    const int64_t chunk = std::min<int64_t>(options_.batch_size, n - done);
    const bool last_chunk = done + chunk == n;
    float* logits = out == nullptr ? nullptr : all_logits ? out + done * n_vocab : last_chunk ? out : nullptr;
    model_->forward(tokens + done, chunk, n_past_, cache_, scratch_, pool_, logits, all_logits);
    n_past_ += (uint64_t)chunk;
    done += chunk;
    if (!last_chunk) check_cancel();
  }
}

// The paper's "sliding window with re-computation": token t (t >= C) is predicted from the last C
// tokens re-encoded from scratch at positions 0..C-1; nothing of an earlier step is reused.
// While t < C that re-encoding is exactly the dense pass over tokens 0..t, so the cache is extended
// incrementally there (same numbers, and the cache holds exactly those tokens).
void Session::eval_recompute(const int32_t* tokens, int64_t n, bool all_logits, float* out) {
  const int64_t n_vocab = model_->n_vocab();
  const int64_t C = capacity();
  std::vector<int32_t>& window_tokens = scratch_recompute_tokens_;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t t = n_past_;
    history_[(size_t)(t % (uint64_t)C)] = tokens[i];
    const bool want = out != nullptr && (all_logits || i == n - 1);
    float* logits = !want ? nullptr : all_logits ? out + i * n_vocab : out;
    if (t < (uint64_t)C) {
      model_->forward(tokens + i, 1, t, cache_, scratch_, pool_, logits, false);
    } else if (want) {
      window_tokens.resize((size_t)C);
      for (int64_t j = 0; j < C; ++j) window_tokens[(size_t)j] = history_[(size_t)((t - (uint64_t)C + 1 + (uint64_t)j) % (uint64_t)C)];
      for (int64_t done = 0; done < C;) {
        const int64_t chunk = std::min<int64_t>(options_.batch_size, C - done);
        const bool last = done + chunk == C;
        model_->forward(window_tokens.data() + done, chunk, (uint64_t)done, cache_, scratch_, pool_,
                        last ? logits : nullptr, false);
        done += chunk;
      }
    }
    n_past_ = t + 1;
    if (i + 1 < n) check_cancel();
  }
}

std::vector<uint8_t> Session::save() const {
  (void)kStateMagic;
  (void)kStateVersion;
  throw ArgumentError("Session.save is not implemented yet");
}

void Session::load(const std::vector<uint8_t>&) { throw ArgumentError("Session.load is not implemented yet"); }

}  // namespace sinkstream
