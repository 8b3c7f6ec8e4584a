#include "runtime/session.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace sinkstream {

namespace {

constexpr int64_t kDefaultCapacity = 2048;  // streaming.md: default C, capped at the training context
constexpr uint32_t kStateMagic = 0x564B5353;  // "SSKV"
constexpr uint32_t kStateVersion = 2;  // 2: rows per layer's own window

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

}  // namespace

// The session's n_sink and window after defaults (streaming.md "Parameters") and checks.
Session::Geometry Session::resolve_geometry(const Model& model, const SessionOptions& o) {
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

namespace {

// Dense and recompute caches never hold more than the capacity, so their global layers need no
// ring slack (sliding-window layers still slide).
bool evicts(const SessionOptions& o) {
  return o.mode == AttentionMode::kStreaming || o.mode == AttentionMode::kWindow;
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
    : Session(model, options, resolve_geometry(*model, options)) {}

Session::Session(std::shared_ptr<const Model> model, const SessionOptions& options, Geometry geometry)
    : model_(std::move(model)),
      options_(options),
      n_sink_(geometry.n_sink),
      window_(geometry.window),
      pool_(options.n_threads > 0 ? options.n_threads : ThreadPool::default_thread_count()),
      backend_(pool_, n_sink_ + window_, model_->config().n_head, model_->config().n_head_kv,
               model_->config().head_dim),
      cache_(model_->config().n_layer, model_->config().n_head_kv, model_->config().head_dim, n_sink_, window_,
             options.batch_size, options.kv_type, options.position_offset, model_->config().layer_windows(),
             evicts(options)),
      scratch_(model_->make_scratch(options.batch_size, n_sink_ + window_)) {
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

void Session::check_interrupt() {
  if (cancel_requested_.exchange(false)) throw Interrupted("evaluation cancelled by request_cancel()");
  if (interrupt_ != nullptr && *interrupt_ && (*interrupt_)()) throw Interrupted("evaluation interrupted");
}

void Session::eval(const int32_t* tokens, int64_t n, bool all_logits, float* out,
                   const std::function<bool()>& interrupt) {
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
  interrupt_ = &interrupt;
  struct ClearHook {
    const std::function<bool()>*& hook;
    ~ClearHook() { hook = nullptr; }
  } clear_hook{interrupt_};
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
    model_->forward(tokens + done, chunk, n_past_, cache_, scratch_, backend_, logits, all_logits);
    n_past_ += (uint64_t)chunk;
    done += chunk;
    if (!last_chunk) check_interrupt();
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
      model_->forward(tokens + i, 1, t, cache_, scratch_, backend_, logits, false);
    } else if (want) {
      window_tokens.resize((size_t)C);
      for (int64_t j = 0; j < C; ++j) window_tokens[(size_t)j] = history_[(size_t)((t - (uint64_t)C + 1 + (uint64_t)j) % (uint64_t)C)];
      for (int64_t done = 0; done < C;) {
        const int64_t chunk = std::min<int64_t>(options_.batch_size, C - done);
        const bool last = done + chunk == C;
        model_->forward(window_tokens.data() + done, chunk, (uint64_t)done, cache_, scratch_, backend_,
                        last ? logits : nullptr, false);
        done += chunk;
      }
    }
    n_past_ = t + 1;
    if (i + 1 < n) check_interrupt();
  }
}

// Saved state: a header that pins the model shape and session geometry, the recompute history,
// then per layer the K/V rows of exactly the tokens a future query can attend to there (sinks and
// the last window - 1 tokens, narrowed to the layer's own sliding window), in token order. Rows are
// stored by token, not by slot, so the layout of the ring (which depends on batch_size) does not
// matter.
namespace {

struct StateHeader {
  uint32_t magic, version, mode, kv_type;
  int64_t n_sink, window, n_layer, n_head_kv, head_dim, n_vocab;
  uint64_t position_offset, n_past;
  uint64_t sink_end, window_begin;  // entries [0, sink_end) and [window_begin, n_past)
  uint64_t n_history;               // recompute: the last n_history tokens
};

// The rows layer `layer` keeps for the next query (t = n_past): sinks [sink_begin, sink_end) and
// window [window_begin, n_past), from the session-wide ranges in the header.
struct LayerRows {
  uint64_t sink_begin, sink_end, window_begin;
  uint64_t count(uint64_t n_past) const { return (sink_end - sink_begin) + (n_past - window_begin); }
};
LayerRows layer_rows(const SinkCache& cache, int64_t layer, const StateHeader& h) {
  const uint64_t w = (uint64_t)cache.layer_window(layer);
  const uint64_t oldest = w != 0 && h.n_past + 1 > w ? h.n_past + 1 - w : 0;
  return {std::min(oldest, h.sink_end), h.sink_end, std::max(h.window_begin, oldest)};
}

void append(std::vector<uint8_t>& out, const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  out.insert(out.end(), p, p + n);
}

}  // namespace

std::vector<uint8_t> Session::save() const {
  StateHeader h{};
  h.magic = kStateMagic;
  h.version = kStateVersion;
  h.mode = (uint32_t)options_.mode;
  h.kv_type = (uint32_t)options_.kv_type;
  h.n_sink = n_sink_;
  h.window = window_;
  h.n_layer = cache_.n_layer();
  h.n_head_kv = cache_.n_head_kv();
  h.head_dim = cache_.head_dim();
  h.n_vocab = model_->n_vocab();
  h.position_offset = cache_.position_offset();
  h.n_past = n_past_;
  const uint64_t C = (uint64_t)capacity();
  const bool recompute = options_.mode == AttentionMode::kRecompute;
  h.sink_end = std::min<uint64_t>((uint64_t)n_sink_, n_past_);
  h.window_begin = std::max<uint64_t>(h.sink_end, n_past_ + 1 > (uint64_t)window_ ? n_past_ + 1 - (uint64_t)window_ : 0);
  if (recompute && n_past_ >= C) h.window_begin = n_past_;  // re-encoded from the history instead
  h.n_history = recompute ? std::min<uint64_t>(n_past_, C) : 0;

  std::vector<uint8_t> out;
  append(out, &h, sizeof(h));
  for (uint64_t j = n_past_ - h.n_history; j < n_past_; ++j) append(out, &history_[(size_t)(j % C)], sizeof(int32_t));
  const size_t row_bytes = (size_t)cache_.row_elements() * cache_.element_bytes();
  for (int64_t l = 0; l < cache_.n_layer(); ++l) {
    auto copy_rows = [&](uint64_t begin, uint64_t end) {
      for (uint64_t j = begin; j < end; ++j) {  // per token: its K row, then its V row (all heads)
        const size_t at = out.size();
        out.resize(at + 2 * row_bytes);
        cache_.copy_out(l, j, out.data() + at, out.data() + at + row_bytes);
      }
    };
    const LayerRows rows = layer_rows(cache_, l, h);
    copy_rows(rows.sink_begin, rows.sink_end);
    copy_rows(rows.window_begin, n_past_);
  }
  return out;
}

void Session::load(const std::vector<uint8_t>& state) {
  BusyGuard guard(busy_);
  StateHeader h{};
  SS_CHECK_ARG(state.size() >= sizeof(h), "session state is truncated (", state.size(), " bytes)");
  std::memcpy(&h, state.data(), sizeof(h));
  SS_CHECK_ARG(h.magic == kStateMagic, "not a sinkstream session state (bad magic)");
  SS_CHECK_ARG(h.version == kStateVersion, "session state version ", h.version, " is not supported (expected ",
               kStateVersion, ")");
  SS_CHECK_ARG(h.n_layer == cache_.n_layer() && h.n_head_kv == cache_.n_head_kv() && h.head_dim == cache_.head_dim() &&
                   h.n_vocab == model_->n_vocab(),
               "session state was saved from a different model (layers/heads/vocabulary differ)");
  SS_CHECK_ARG(h.mode == (uint32_t)options_.mode && h.n_sink == n_sink_ && h.window == window_ &&
                   h.kv_type == (uint32_t)options_.kv_type && h.position_offset == cache_.position_offset(),
               "session state was saved with other settings (mode ", mode_name((AttentionMode)std::min<uint32_t>(h.mode, 3)),
               ", n_sink ", h.n_sink, ", window ", h.window, "); create the session with the same ones");
  const uint64_t C = (uint64_t)capacity();
  const bool recompute = options_.mode == AttentionMode::kRecompute;
  SS_CHECK_ARG(h.sink_end <= h.window_begin && h.window_begin <= h.n_past && h.sink_end <= (uint64_t)n_sink_ &&
                   h.n_past - h.window_begin <= (uint64_t)window_ && h.n_history <= C &&
                   h.n_history == (recompute ? std::min<uint64_t>(h.n_past, C) : 0),
               "session state is corrupt (inconsistent ranges)");
  if (options_.mode == AttentionMode::kDense)
    SS_CHECK_ARG(h.n_past <= C, "session state holds ", h.n_past, " tokens, more than this dense session's ", C);
  const size_t row_bytes = (size_t)cache_.row_elements() * cache_.element_bytes();
  uint64_t n_rows = 0;
  for (int64_t l = 0; l < cache_.n_layer(); ++l) n_rows += layer_rows(cache_, l, h).count(h.n_past);
  const size_t expected = sizeof(h) + (size_t)h.n_history * sizeof(int32_t) + (size_t)(n_rows * 2) * row_bytes;
  SS_CHECK_ARG(state.size() == expected, "session state has ", state.size(), " bytes, expected ", expected);

  const uint8_t* p = state.data() + sizeof(h);
  for (uint64_t j = h.n_past - h.n_history; j < h.n_past; ++j, p += sizeof(int32_t)) {
    int32_t token;
    std::memcpy(&token, p, sizeof(token));
    SS_CHECK_ARG(token >= 0 && token < model_->n_vocab(), "session state holds token id ", token,
                 " outside the vocabulary");
    history_[(size_t)(j % C)] = token;
  }
  for (int64_t l = 0; l < cache_.n_layer(); ++l) {
    auto copy_rows = [&](uint64_t begin, uint64_t end) {
      for (uint64_t j = begin; j < end; ++j) {
        cache_.copy_in(l, j, p, p + row_bytes);
        p += 2 * row_bytes;
      }
    };
    const LayerRows rows = layer_rows(cache_, l, h);
    copy_rows(rows.sink_begin, rows.sink_end);
    copy_rows(rows.window_begin, h.n_past);
  }
  n_past_ = h.n_past;
}

}  // namespace sinkstream
