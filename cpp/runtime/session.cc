#include "runtime/session.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <stdexcept>

#include "core/error.h"
#include "core/hash.h"
#ifdef SINKSTREAM_HAVE_CUDA
#include "ops/cuda/cuda_backend.h"
#endif

namespace sinkstream {

namespace {

constexpr int64_t kDefaultCapacity = 2048;  // streaming.md: default C, capped at the training context
constexpr uint32_t kStateMagic = 0x564B5353;  // "SSKV"
// 2: rows per layer's own window. 3: model and geometry fingerprints, the extras, a checksum.
constexpr uint32_t kStateVersion = 3;

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

uint64_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
  return pages > 0 && page_size > 0 ? (uint64_t)pages * (uint64_t)page_size : UINT64_MAX;
}

SessionMemory Session::memory_for(const Model& model, const SessionOptions& options) {
  return memory_for(model, options, resolve_geometry(model, options));
}

// The same arguments the constructor hands to SinkCache, CpuBackend and make_scratch.
SessionMemory Session::memory_for(const Model& model, const SessionOptions& o, Geometry g) {
  const ModelConfig& c = model.config();
  const int64_t capacity = g.n_sink + g.window;
  const int n_threads = o.n_threads > 0 ? o.n_threads : ThreadPool::default_thread_count();
  SessionMemory m;
  m.kv_cache = SinkCache::bytes_for(c.n_layer, c.n_head_kv, c.head_dim, g.n_sink, g.window, o.batch_size, o.kv_type,
                                    c.layer_windows(), evicts(o));
  m.scratch = model.scratch_bytes(o.batch_size, capacity);
  m.attention = CpuBackend::bytes_for(n_threads, capacity, c.n_head, c.n_head_kv, c.head_dim);
  if (o.mode == AttentionMode::kRecompute) m.history = 2 * (size_t)capacity * sizeof(int32_t);
  return m;
}

namespace {

std::string gib(uint64_t bytes) { return cat((double)bytes / (1 << 30), " GiB"); }

}  // namespace

Session::Geometry Session::checked_geometry(const Model& model, const SessionOptions& o) {
  const Geometry g = resolve_geometry(model, o);
  const SessionMemory m = memory_for(model, o, g);
  const uint64_t limit = o.max_bytes != 0 ? o.max_bytes : physical_memory_bytes();
  SS_CHECK_ARG(m.total() <= limit, "this session would allocate ", m.total(), " bytes (", gib(m.total()),
               ": K/V cache ", m.kv_cache, ", scratch ", m.scratch, " for batch_size ", o.batch_size, ", attention ",
               m.attention, ", history ", m.history, "), more than the limit of ", limit, " bytes (", gib(limit),
               o.max_bytes != 0 ? ", max_bytes" : ", this machine's memory",
               "); lower window or batch_size", o.kv_type == KvType::kF32 ? ", use kv_type='f16'" : "",
               " or raise max_bytes");
  return g;
}

Session::Session(std::shared_ptr<const Model> model, const SessionOptions& options)
    : Session(model, options, checked_geometry(*model, options)) {}

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
             evicts(options), options.device == Device::kCpu),  // a device keeps its entries itself
      scratch_(model_->make_scratch(options.batch_size, n_sink_ + window_)) {
  if (options_.mode == AttentionMode::kRecompute) history_.assign((size_t)capacity(), 0);
  if (options_.device == Device::kCuda) {
    // What the CUDA kernels do not have yet is refused here, never computed wrongly on the device.
    const ModelConfig& c = model_->config();
    SS_CHECK_ARG(c.n_expert == 0, "device='cuda': ", c.architecture,
                 " (a mixture of experts, routed on the host) does not run on the CUDA backend yet; use device='cpu'");
    SS_CHECK_ARG(options_.kv_type != KvType::kQ8_0,
                 "device='cuda': the CUDA backend keeps an f16 or f32 cache; kv_type 'q8_0' is CPU-only for now");
#ifdef SINKSTREAM_HAVE_CUDA
    device_backend_ = cuda::make_backend(model_, options_.batch_size, n_sink_ + window_);
#else
    throw std::runtime_error(
        "device='cuda': sinkstream was built without CUDA: reinstall with -C cmake.define.SINKSTREAM_CUDA=ON "
        "(e.g. pip install . -C cmake.define.SINKSTREAM_CUDA=ON, with the CUDA toolkit's nvcc on PATH)");
#endif
  }
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  throw ArgumentError(cat("device must be 'cpu' or 'cuda', got '", name, "'"));
}

const char* device_name(Device device) { return device == Device::kCuda ? "cuda" : "cpu"; }

void Session::reset() {
  BusyGuard guard(busy_);
  before_step_.undoable = false;
  n_past_ = 0;  // the cache is overwritten before it is read again: no need to clear it
}

int64_t Session::n_cached_at(uint64_t n_past) const {
  if (options_.mode == AttentionMode::kDense) return (int64_t)n_past;
  return (int64_t)std::min<uint64_t>(n_past, (uint64_t)capacity());
}

size_t Session::kv_bytes() const { return cache_.bytes(); }

void Session::check_interrupt() {
  if (cancel_requested_.exchange(false)) throw Interrupted("evaluation cancelled by request_cancel()");
  if (interrupt_ != nullptr && *interrupt_ && (*interrupt_)()) throw Interrupted("evaluation interrupted");
}

void Session::check_tokens(const int32_t* tokens, int64_t n) const {
  SS_CHECK_ARG(n >= 0, "token count must be >= 0, got ", n);
  const int64_t n_vocab = model_->n_vocab();
  for (int64_t i = 0; i < n; ++i)
    SS_CHECK_ARG(tokens[i] >= 0 && tokens[i] < n_vocab, "token id ", tokens[i], " at index ", i,
                 " is outside the vocabulary (0..", n_vocab - 1, ")");
  if (options_.mode == AttentionMode::kDense)
    SS_CHECK_ARG(n_past_ + (uint64_t)n <= (uint64_t)capacity(), "dense mode holds at most ", capacity(),
                 " tokens: ", n_past_, " fed plus ", n, " more would exceed it (use mode='streaming')");
}

void Session::eval(const int32_t* tokens, int64_t n, bool all_logits, float* out,
                   const std::function<bool()>& interrupt) {
  BusyGuard guard(busy_);
  check_tokens(tokens, n);
  if (n == 0) return;
  before_step_.undoable = false;
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
    model_->forward(tokens + done, chunk, n_past_, cache_, scratch_, backend(), logits, all_logits);
    n_past_ += (uint64_t)chunk;
    done += chunk;
    if (!last_chunk) check_interrupt();
  }
}

ForwardSegment Session::begin_segment(const int32_t* tokens, int64_t n, float* logits) {
  SS_CHECK_ARG(options_.device == Device::kCpu, "a session on device='", device_name(options_.device),
               "' cannot join a batched step (BatchRunner runs on the CPU)");
  SS_CHECK_ARG(options_.mode != AttentionMode::kRecompute,
               "a recompute-mode session re-encodes its whole window for every token and cannot join a batch");
  SS_CHECK_ARG(n >= 1 && n <= options_.batch_size, "a session's part of a batched step must be 1..batch_size (",
               options_.batch_size, ") tokens, got ", n);
  bool expected = false;
  if (!busy_.compare_exchange_strong(expected, true))
    throw ArgumentError("this Session is already in use by another thread; use one Session per thread");
  try {
    check_tokens(tokens, n);
  } catch (...) {
    busy_.store(false);
    throw;
  }
  ForwardSegment segment = make_segment(tokens, n, n_past_, cache_, scratch_, logits);
  segment.entries_attended = &batched_entries_attended_;
  before_step_ = BeforeStep{false, n_past_, scratch_.keys_rotated, batched_entries_attended_};
  return segment;
}

void Session::end_segment(int64_t n) {
  n_past_ += (uint64_t)n;
  before_step_.undoable = n == 1;
  busy_.store(false);
}

void Session::undo_last_token() {
  BusyGuard guard(busy_);
  SS_CHECK_ARG(before_step_.undoable && n_past_ == before_step_.n_past + 1,
               "undo_last_token: the session's last change was not a one-token batched step");
  n_past_ = before_step_.n_past;
  scratch_.keys_rotated = before_step_.keys_rotated;
  batched_entries_attended_ = before_step_.entries_attended;
  before_step_.undoable = false;
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
      model_->forward(tokens + i, 1, t, cache_, scratch_, backend(), logits, false);
    } else if (want) {
      window_tokens.resize((size_t)C);
      for (int64_t j = 0; j < C; ++j) window_tokens[(size_t)j] = history_[(size_t)((t - (uint64_t)C + 1 + (uint64_t)j) % (uint64_t)C)];
      for (int64_t done = 0; done < C;) {
        const int64_t chunk = std::min<int64_t>(options_.batch_size, C - done);
        const bool last = done + chunk == C;
        model_->forward(window_tokens.data() + done, chunk, (uint64_t)done, cache_, scratch_, backend(),
                        last ? logits : nullptr, false);
        done += chunk;
      }
    }
    n_past_ = t + 1;
    if (i + 1 < n) check_interrupt();
  }
}

// Saved state, version 3, in host byte order (little-endian on every supported platform):
//
//   StateHeader (160 bytes)
//   history   int32 x n_history   recompute: the last n_history tokens, oldest first
//   pending   int32 x n_pending   StreamExtras::pending
//   logits    f32 x n_logits      StreamExtras::logits (0 or n_vocab values)
//   app data  app_bytes           StreamExtras::app_data
//   rows      per layer, the K then V row (all heads, stored type) of each token a future query
//             can attend to there: sinks, then the last window - 1 tokens, narrowed to the layer's
//             own sliding window (layer_rows), in token order
//   checksum  uint64: hash64 of every byte before it
//
// Rows are stored by token, not by slot, so the ring's layout (which depends on batch_size) does
// not matter. The model fingerprint ties a state to one model file and the geometry fingerprint to
// the settings that decide what the rows mean; load() checks the checksum first (a corrupted
// state is reported as corrupted, not as "other settings"), then everything else, and only then
// changes the session.
namespace {

struct StateHeader {
  uint32_t magic, version;
  uint64_t total_bytes;  // the whole state, checksum included
  uint64_t model_fingerprint, geometry_fingerprint;
  uint32_t mode, kv_type;
  int64_t n_sink, window, n_layer, n_head_kv, head_dim, n_vocab;
  uint64_t position_offset, n_past;
  uint64_t sink_end, window_begin;  // entries [0, sink_end) and [window_begin, n_past)
  uint64_t n_history;               // recompute: the last n_history tokens
  uint64_t n_pending, n_logits, logits_n_past, app_bytes;
};
static_assert(sizeof(StateHeader) == 160, "StateHeader has no padding: its bytes are the format");
constexpr size_t kChecksumBytes = sizeof(uint64_t);

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
  if (n == 0) return;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  out.insert(out.end(), p, p + n);
}

// A bounded reader over the state: every take() is checked against what is left.
class StateReader {
 public:
  StateReader(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  const uint8_t* take(uint64_t count, size_t element_bytes, const char* what) {
    SS_CHECK_ARG(count <= (uint64_t)(end_ - p_) / element_bytes, "session state is corrupt: its ", what,
                 " run past the end of the state");
    const uint8_t* at = p_;
    p_ += (size_t)count * element_bytes;
    return at;
  }
  size_t left() const { return (size_t)(end_ - p_); }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

int32_t read_token(const uint8_t* p, uint64_t i) {
  int32_t token;
  std::memcpy(&token, p + i * sizeof(int32_t), sizeof(token));
  return token;
}

}  // namespace

// What decides the meaning of the saved rows besides the model: the architecture, mode, sinks,
// window, storage type, position offset, shapes and every layer's own window. batch_size is not in
// it (rows are stored by token).
uint64_t Session::geometry_fingerprint() const {
  std::vector<int64_t> fields = {(int64_t)options_.mode, (int64_t)options_.kv_type, n_sink_, window_,
                                 (int64_t)cache_.position_offset(), cache_.n_layer(), cache_.n_head_kv(),
                                 cache_.head_dim(), model_->n_vocab()};
  for (int64_t l = 0; l < cache_.n_layer(); ++l) fields.push_back(cache_.layer_window(l));
  const std::string& arch = model_->config().architecture;
  return hash64(fields.data(), fields.size() * sizeof(int64_t), hash64(arch.data(), arch.size()));
}

// A device session's cache lives in its backend (the host SinkCache holds the geometry alone):
// save() reads it through a host twin, load() fills one and sends it over whole. The state's bytes
// are a CPU session's, so a state moves between devices.
SinkCache Session::host_twin() const {
  SinkCache twin = cache_.with_host_storage();
  device_backend_->download_cache(cache_, twin.key_storage(), twin.value_storage());
  return twin;
}

std::vector<uint8_t> Session::save(const StreamExtras& extras) const {
  std::optional<SinkCache> twin;
  if (!cache_.has_host_storage()) twin.emplace(host_twin());
  const SinkCache& cache = twin ? *twin : cache_;
  SS_CHECK_ARG(!extras.has_logits || (int64_t)extras.logits.size() == model_->n_vocab(), "saved logits have ",
               extras.logits.size(), " values, expected n_vocab = ", model_->n_vocab());
  StateHeader h{};
  h.magic = kStateMagic;
  h.version = kStateVersion;
  h.model_fingerprint = model_->fingerprint();
  h.geometry_fingerprint = geometry_fingerprint();
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
  h.n_pending = extras.pending.size();
  h.n_logits = extras.has_logits ? extras.logits.size() : 0;
  h.logits_n_past = extras.has_logits ? extras.logits_n_past : 0;
  h.app_bytes = extras.app_data.size();

  const size_t row_bytes = cache_.token_row_bytes();
  uint64_t n_rows = 0;
  for (int64_t l = 0; l < cache_.n_layer(); ++l) n_rows += layer_rows(cache_, l, h).count(n_past_);
  h.total_bytes = sizeof(h) + (h.n_history + h.n_pending + h.n_logits) * 4 + h.app_bytes + n_rows * 2 * row_bytes +
                  kChecksumBytes;

  std::vector<uint8_t> out;
  out.reserve((size_t)h.total_bytes);
  append(out, &h, sizeof(h));
  for (uint64_t j = n_past_ - h.n_history; j < n_past_; ++j) append(out, &history_[(size_t)(j % C)], sizeof(int32_t));
  append(out, extras.pending.data(), extras.pending.size() * sizeof(int32_t));
  if (extras.has_logits) append(out, extras.logits.data(), extras.logits.size() * sizeof(float));
  append(out, extras.app_data.data(), extras.app_data.size());
  for (int64_t l = 0; l < cache_.n_layer(); ++l) {
    auto copy_rows = [&](uint64_t begin, uint64_t end) {
      for (uint64_t j = begin; j < end; ++j) {  // per token: its K row, then its V row (all heads)
        const size_t at = out.size();
        out.resize(at + 2 * row_bytes);
        cache.copy_out(l, j, out.data() + at, out.data() + at + row_bytes);
      }
    };
    const LayerRows rows = layer_rows(cache_, l, h);
    copy_rows(rows.sink_begin, rows.sink_end);
    copy_rows(rows.window_begin, n_past_);
  }
  const uint64_t checksum = hash64(out.data(), out.size());
  append(out, &checksum, sizeof(checksum));
  SS_ASSERT(out.size() == h.total_bytes);
  return out;
}

void Session::load(const uint8_t* state, size_t size, const std::function<void(StreamExtras&)>& accept) {
  BusyGuard guard(busy_);
  // 1. The container: magic, version, length, checksum.
  uint32_t magic_version[2] = {0, 0};
  SS_CHECK_ARG(size >= sizeof(magic_version), "session state is truncated (", size, " bytes)");
  std::memcpy(magic_version, state, sizeof(magic_version));
  SS_CHECK_ARG(magic_version[0] == kStateMagic, "not a sinkstream session state (bad magic)");
  SS_CHECK_ARG(magic_version[1] == kStateVersion, "session state version ", magic_version[1],
               " is not supported (this build reads version ", kStateVersion,
               magic_version[1] < kStateVersion ? "; older states carry no checksum or fingerprint: save again" : "",
               ")");
  StateHeader h{};
  SS_CHECK_ARG(size >= sizeof(h) + kChecksumBytes, "session state is truncated (", size, " bytes)");
  std::memcpy(&h, state, sizeof(h));
  SS_CHECK_ARG(h.total_bytes == size, "session state has ", size, " bytes but its header says ", h.total_bytes,
               " (truncated or extended)");
  uint64_t stored_checksum;
  std::memcpy(&stored_checksum, state + size - kChecksumBytes, kChecksumBytes);
  const uint64_t checksum = hash64(state, size - kChecksumBytes);
  SS_CHECK_ARG(checksum == stored_checksum, "session state is corrupt: checksum mismatch (stored ", stored_checksum,
               ", computed ", checksum, ")");

  // 2. Does it belong to this model and these settings?
  SS_CHECK_ARG(h.n_layer == cache_.n_layer() && h.n_head_kv == cache_.n_head_kv() && h.head_dim == cache_.head_dim() &&
                   h.n_vocab == model_->n_vocab(),
               "session state was saved from a different model (layers/heads/vocabulary differ)");
  SS_CHECK_ARG(h.model_fingerprint == model_->fingerprint(), "session state was saved from a different model file ",
               "(model fingerprint ", h.model_fingerprint, ", this model's ", model_->fingerprint(),
               "): same shapes, but other weights, metadata or tokenizer");
  SS_CHECK_ARG(h.mode == (uint32_t)options_.mode && h.n_sink == n_sink_ && h.window == window_ &&
                   h.kv_type == (uint32_t)options_.kv_type && h.position_offset == cache_.position_offset(),
               "session state was saved with other settings (mode ", mode_name((AttentionMode)std::min<uint32_t>(h.mode, 3)),
               ", n_sink ", h.n_sink, ", window ", h.window, ", kv_type ",
               h.kv_type <= (uint32_t)KvType::kQ8_0 ? kv_type_name((KvType)h.kv_type) : "?",
               ", position_offset ", h.position_offset, "); create the session with the same ones");
  SS_CHECK_ARG(h.geometry_fingerprint == geometry_fingerprint(),
               "session state was saved with another session geometry (architecture or per-layer windows differ)");

  // 3. The ranges must be exactly those save() writes for n_past: any other rows would leave part
  // of the next query's attention set with another stream's entries.
  const uint64_t C = (uint64_t)capacity();
  const bool recompute = options_.mode == AttentionMode::kRecompute;
  if (options_.mode == AttentionMode::kDense)
    SS_CHECK_ARG(h.n_past <= C, "session state holds ", h.n_past, " tokens, more than this dense session's ", C);
  const uint64_t sink_end = std::min<uint64_t>((uint64_t)n_sink_, h.n_past);
  uint64_t window_begin =
      std::max<uint64_t>(sink_end, h.n_past + 1 > (uint64_t)window_ ? h.n_past + 1 - (uint64_t)window_ : 0);
  if (recompute && h.n_past >= C) window_begin = h.n_past;
  SS_CHECK_ARG(h.sink_end == sink_end && h.window_begin == window_begin && h.n_past - window_begin <= (uint64_t)window_ &&
                   h.n_history == (recompute ? std::min<uint64_t>(h.n_past, C) : 0),
               "session state is corrupt (inconsistent ranges for n_past ", h.n_past, ")");
  SS_CHECK_ARG(h.n_logits == 0 || h.n_logits == (uint64_t)model_->n_vocab(), "session state is corrupt: it holds ",
               h.n_logits, " logits, this model has ", model_->n_vocab(), " tokens");
  SS_CHECK_ARG(h.logits_n_past <= h.n_past, "session state is corrupt: its logits are from token ", h.logits_n_past,
               ", past its ", h.n_past, " tokens");

  StateReader reader(state + sizeof(h), size - sizeof(h) - kChecksumBytes);
  const uint8_t* history = reader.take(h.n_history, sizeof(int32_t), "history tokens");
  const uint8_t* pending = reader.take(h.n_pending, sizeof(int32_t), "pending tokens");
  const uint8_t* logits = reader.take(h.n_logits, sizeof(float), "logits");
  const uint8_t* app_data = reader.take(h.app_bytes, 1, "application data");
  const size_t row_bytes = cache_.token_row_bytes();
  uint64_t n_rows = 0;  // at most n_layer * capacity: the ranges are checked
  for (int64_t l = 0; l < cache_.n_layer(); ++l) n_rows += layer_rows(cache_, l, h).count(h.n_past);
  const uint8_t* rows = reader.take(n_rows * 2, row_bytes, "cache rows");
  SS_CHECK_ARG(reader.left() == 0, "session state is corrupt: ", reader.left(), " bytes left over");

  // 4. Every token id, history and pending, before anything is written.
  const int64_t n_vocab = model_->n_vocab();
  for (uint64_t i = 0; i < h.n_history; ++i) {
    const int32_t token = read_token(history, i);
    SS_CHECK_ARG(token >= 0 && token < n_vocab, "session state is corrupt: history token ", i, " is id ", token,
                 ", outside the vocabulary (0..", n_vocab - 1, ")");
  }
  StreamExtras extras;
  extras.pending.resize((size_t)h.n_pending);
  for (uint64_t i = 0; i < h.n_pending; ++i) {
    const int32_t token = read_token(pending, i);
    SS_CHECK_ARG(token >= 0 && token < n_vocab, "session state is corrupt: pending token ", i, " is id ", token,
                 ", outside the vocabulary (0..", n_vocab - 1, ")");
    extras.pending[(size_t)i] = token;
  }
  extras.has_logits = h.n_logits != 0;
  extras.logits_n_past = h.logits_n_past;
  extras.logits.resize((size_t)h.n_logits);
  if (h.n_logits != 0) std::memcpy(extras.logits.data(), logits, (size_t)h.n_logits * sizeof(float));
  extras.app_data.assign(reinterpret_cast<const char*>(app_data), (size_t)h.app_bytes);
  if (accept) accept(extras);

  // 5. Everything checked: restore. Only a device session's copy to its device can fail, and it
  // goes first, before anything of the session changes.
  std::optional<SinkCache> twin;
  if (!cache_.has_host_storage()) twin.emplace(cache_.with_host_storage());
  SinkCache& cache = twin ? *twin : cache_;
  const uint8_t* p = rows;
  for (int64_t l = 0; l < cache.n_layer(); ++l) {
    auto copy_rows = [&](uint64_t begin, uint64_t end) {
      for (uint64_t j = begin; j < end; ++j) {
        cache.copy_in(l, j, p, p + row_bytes);
        p += 2 * row_bytes;
      }
    };
    const LayerRows layer = layer_rows(cache, l, h);
    copy_rows(layer.sink_begin, layer.sink_end);
    copy_rows(layer.window_begin, h.n_past);
  }
  if (twin) device_backend_->upload_cache(cache_, twin->key_storage(), twin->value_storage());
  for (uint64_t j = h.n_past - h.n_history, i = 0; j < h.n_past; ++j, ++i) history_[(size_t)(j % C)] = read_token(history, i);
  n_past_ = h.n_past;
  before_step_.undoable = false;
}

}  // namespace sinkstream
