// libFuzzer target: Session::load on saved session states, over a fixed tiny model whose layers
// differ (Gemma 3: sliding-window and global layers, so each layer keeps its own rows).
//
// The model comes from $SINKSTREAM_FUZZ_STATE_MODEL (scripts/run_fuzz.sh writes it with
// fuzz/make_corpus.py). Four sessions are made once, one per mode (streaming f16, window f32, dense
// f16, recompute f32, small windows so states wrap); an input goes to the session of the mode its
// header names. The harness rewrites the input's trailing checksum (and, unless the input's last
// byte says otherwise, its total_bytes) before loading: a random mutation would otherwise stop at
// the checksum, and what lies behind it (fingerprints, ranges, sizes, token ids, the extras) is
// what must hold against a state someone built on purpose.
//
// Contract (session.h): load() either restores the state or throws ArgumentError with the session
// exactly as before, which the harness checks by comparing save() before and after. A loaded state
// must then evaluate (the rows it wrote are read by attention). Anything else is a finding.
//
// Seeds: with $SINKSTREAM_FUZZ_STATE_SEEDS=DIR the harness writes valid states of every session
// (several stream lengths, with and without extras) to DIR and exits (scripts/run_fuzz.sh).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hash.h"
#include "model/model.h"
#include "runtime/session.h"

using namespace sinkstream;

namespace {

constexpr size_t kChecksumBytes = 8;
constexpr size_t kTotalBytesOffset = 8;  // StateHeader::total_bytes (session.cc)
constexpr size_t kModeOffset = 40;       // StateHeader::mode

constexpr size_t kPrimedTokens = 9;  // past every session's window: rings wrap, recompute re-encodes

struct Fixture {
  std::shared_ptr<const Model> model;
  std::vector<std::unique_ptr<Session>> sessions;  // indexed by AttentionMode
  std::vector<std::vector<uint8_t>> primed;        // each session's state after kPrimedTokens tokens
};

std::vector<int32_t> tokens_for(const Model& model, size_t n, uint32_t salt) {
  std::vector<int32_t> tokens;
  for (size_t i = 0; i < n; ++i) tokens.push_back((int32_t)((i * 31 + salt) % (uint64_t)model.n_vocab()));
  return tokens;
}

std::unique_ptr<Session> make_session(const std::shared_ptr<const Model>& model, AttentionMode mode, KvType kv) {
  SessionOptions o;
  o.mode = mode;
  o.n_sink = mode == AttentionMode::kStreaming ? 2 : 0;
  o.window = mode == AttentionMode::kDense ? 12 : 6;
  o.batch_size = 3;
  o.n_threads = 1;
  o.kv_type = kv;
  o.allow_beyond_training_context = true;
  return std::make_unique<Session>(model, o);
}

Fixture& fixture() {
  static Fixture* f = [] {
    const char* path = std::getenv("SINKSTREAM_FUZZ_STATE_MODEL");
    if (path == nullptr) {
      std::fprintf(stderr, "fuzz_state_load: set SINKSTREAM_FUZZ_STATE_MODEL to a tiny GGUF model "
                           "(fuzz/make_corpus.py writes one; scripts/run_fuzz.sh sets it)\n");
      std::abort();
    }
    auto* made = new Fixture;
    made->model = Model::load(path);
    made->sessions.push_back(make_session(made->model, AttentionMode::kStreaming, KvType::kF16));
    made->sessions.push_back(make_session(made->model, AttentionMode::kWindow, KvType::kF32));
    made->sessions.push_back(make_session(made->model, AttentionMode::kDense, KvType::kF16));
    made->sessions.push_back(make_session(made->model, AttentionMode::kRecompute, KvType::kF32));
    // Each session holds a stream when an input arrives, so a refused state that wrote anything
    // would show in save().
    for (auto& s : made->sessions) {
      const std::vector<int32_t> tokens = tokens_for(*made->model, kPrimedTokens, 7);
      s->eval(tokens.data(), (int64_t)tokens.size(), false, nullptr);
      made->primed.push_back(s->save());
    }
    return made;
  }();
  return *f;
}

// Valid states of every session at several stream lengths (before, at and past the capacity), with
// and without extras, as seeds.
void write_seeds(const char* dir) {
  Fixture& f = fixture();
  int written = 0;
  for (size_t m = 0; m < f.sessions.size(); ++m) {
    Session& s = *f.sessions[m];
    for (size_t n : {0, 1, 4, 9, 12, 20}) {
      s.reset();
      if (s.mode() == AttentionMode::kDense && n > (size_t)s.capacity()) continue;
      const std::vector<int32_t> tokens = tokens_for(*f.model, n, (uint32_t)m);
      s.eval(tokens.data(), (int64_t)n, false, nullptr);
      StreamExtras extras;
      if (n % 2 == 1) {
        extras.pending = {(int32_t)(n % (size_t)f.model->n_vocab())};
        extras.has_logits = true;
        extras.logits_n_past = n;
        extras.logits.assign((size_t)f.model->n_vocab(), 0.5f);
        extras.app_data = R"({"chat_history": null, "chat_record": ["text", "6869", 1]})";
      }
      const std::vector<uint8_t> state = s.save(extras);
      const std::string path = std::string(dir) + "/" + mode_name(s.mode()) + "_" + std::to_string(n) + ".state";
      std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(state.data()), (std::streamsize)state.size());
      ++written;
    }
    s.reset();
    s.load(f.primed[m]);
  }
  std::printf("fuzz_state_load: wrote %d seed states to %s\n", written, dir);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("SINKSTREAM_FUZZ_STATE_SEEDS")) {
    write_seeds(dir);
    std::exit(0);
  }
  fixture();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& f = fixture();
  std::vector<uint8_t> state(data, data + size);
  // The checksum's bytes are overwritten below, so the input's last byte is free to steer the
  // harness: bit 0 refuses the extras after the engine's checks (as Python does with a malformed
  // chat record), bit 1 keeps the header's total_bytes as mutated (else it is set to the input's
  // size, so inserted or removed bytes reach the section checks).
  const uint8_t flags = size >= kChecksumBytes ? data[size - 1] : 0;
  const bool refuse_extras = (flags & 1) != 0;
  const uint64_t total_bytes = size;
  if ((flags & 2) == 0 && state.size() >= kTotalBytesOffset + sizeof(total_bytes))
    std::memcpy(state.data() + kTotalBytesOffset, &total_bytes, sizeof(total_bytes));
  if (state.size() >= kChecksumBytes) {
    const uint64_t checksum = hash64(state.data(), state.size() - kChecksumBytes);
    std::memcpy(state.data() + state.size() - kChecksumBytes, &checksum, kChecksumBytes);
  }
  uint32_t mode = 0;
  if (state.size() >= kModeOffset + sizeof(mode)) std::memcpy(&mode, state.data() + kModeOffset, sizeof(mode));
  const size_t which = mode < f.sessions.size() ? mode : 0;
  Session& s = *f.sessions[which];
  const std::vector<uint8_t>& before = f.primed[which];
  bool loaded = false;
  try {
    s.load(state.data(), state.size(), [&](StreamExtras& extras) {
      for (int32_t token : extras.pending)
        if (token < 0 || token >= f.model->n_vocab()) std::abort();  // load() promised to check these
      if (extras.has_logits && (int64_t)extras.logits.size() != f.model->n_vocab()) std::abort();
      if (refuse_extras) throw ArgumentError("extras refused by the harness");
    });
    loaded = true;
  } catch (const ArgumentError&) {
    if (s.save() != before) {
      std::fprintf(stderr, "fuzz_state_load: a refused state changed the session\n");
      std::abort();
    }
  }
  if (loaded) {
    // The restored rows are read by attention over the whole window (ASan checks the reads).
    const std::vector<int32_t> tokens = tokens_for(*f.model, 2, (uint32_t)size);
    std::vector<float> logits((size_t)f.model->n_vocab());
    try {
      s.eval(tokens.data(), 2, false, logits.data());
    } catch (const ArgumentError&) {
      // a full dense session refuses more tokens: fine
    }
    s.load(f.primed[which]);  // back to the stream the next input finds
  }
  return 0;
}
