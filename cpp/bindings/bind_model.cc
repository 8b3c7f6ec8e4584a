// Python view of Model and Session. Compute releases the GIL; logits come back as NumPy arrays
// that own their memory (a fresh array per call, so later evals never change earlier results).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <vector>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "bindings/bindings.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/thread_pool.h"
#include "model/families.h"
#include "model/model.h"
#include "runtime/batch.h"
#include "runtime/session.h"

namespace nb = nanobind;

namespace sinkstream::bindings {

namespace {

using AnyTokenArray = nb::ndarray<nb::ndim<1>, nb::device::cpu>;

// Session.eval takes int32 ids as they are: letting nanobind convert an int64 array would wrap
// 2**32 + 5 to 5 silently (sinkstream.Session.eval checks the ids and converts before calling).
const int32_t* int32_tokens(const AnyTokenArray& a) {
  const nb::dlpack::dtype t = a.dtype();
  if (t != nb::dtype<int32_t>()) {
    const char* kind = t.code == (uint8_t)nb::dlpack::dtype_code::Int     ? "int"
                       : t.code == (uint8_t)nb::dlpack::dtype_code::UInt  ? "uint"
                       : t.code == (uint8_t)nb::dlpack::dtype_code::Float ? "float"
                       : t.code == (uint8_t)nb::dlpack::dtype_code::Bool  ? "bool"
                                                                           : "other";
    throw nb::type_error(cat("tokens must be an int32 array (sinkstream.Session.eval checks and converts ids), got ",
                             kind, (int)t.bits).c_str());
  }
  if (a.shape(0) > 1 && a.stride(0) != 1)
    throw nb::type_error("tokens must be a C-contiguous int32 array (sinkstream.Session.eval converts)");
  return static_cast<const int32_t*>(a.data());
}

template <typename T>
nb::ndarray<nb::numpy, T> owned_array(std::unique_ptr<std::vector<T>> data, std::vector<size_t> shape) {
  std::vector<T>* raw = data.release();
  nb::capsule owner(raw, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(raw->data(), shape.size(), shape.data(), owner);
}

// An array for the forward pass to fill: new T[] leaves the values uninitialized, where a vector
// would first zero them (a Gemma 3 row of logits is 1 MB: zeroing it cost about 0.1 ms a token, 0.5%
// of a decode step, and pulled the buffer through the caches once more).
template <typename T>
nb::ndarray<nb::numpy, T> uninitialized_array(std::vector<size_t> shape) {
  size_t n = 1;
  for (size_t d : shape) n *= d;
  T* raw = new T[n];
  nb::capsule owner(raw, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return nb::ndarray<nb::numpy, T>(raw, shape.size(), shape.data(), owner);
}

SessionOptions session_options(const std::string& mode, int64_t n_sink, int64_t window, int64_t batch_size,
                               const std::string& kv_type, int n_threads, bool allow_beyond_training_context,
                               uint64_t position_offset, uint64_t max_bytes, const std::string& device = "cpu") {
  SessionOptions o;
  o.device = parse_device(device);
  o.mode = parse_mode(mode);
  o.n_sink = n_sink;
  o.window = window;
  o.batch_size = batch_size;
  o.kv_type = parse_kv_type(kv_type);
  SS_CHECK_ARG(n_threads >= 0 && n_threads <= 1024, "n_threads must be in 0..1024, got ", n_threads);
  o.n_threads = n_threads;
  o.allow_beyond_training_context = allow_beyond_training_context;
  o.position_offset = position_offset;
  o.max_bytes = max_bytes;
  return o;
}

}  // namespace

void bind_model(nb::module_& m) {
  nb::class_<Model>(m, "Model", "A loaded model (weights mapped once; share it between sessions).")
      .def_static("load", &Model::load, nb::arg("path"), nb::call_guard<nb::gil_scoped_release>())
      .def_prop_ro("n_vocab", &Model::n_vocab)
      .def_prop_ro("n_ctx_train", [](const Model& m) { return m.config().n_ctx_train; })
      .def_prop_ro("n_layer", [](const Model& m) { return m.config().n_layer; })
      .def_prop_ro("n_embd", [](const Model& m) { return m.config().n_embd; })
      .def_prop_ro("n_head", [](const Model& m) { return m.config().n_head; })
      .def_prop_ro("n_head_kv", [](const Model& m) { return m.config().n_head_kv; })
      .def_prop_ro("head_dim", [](const Model& m) { return m.config().head_dim; })
      .def_prop_ro("architecture", [](const Model& m) { return m.config().architecture; })
      .def_prop_ro(
          "layers",
          [](const Model& m) {
            const ModelConfig& c = m.config();
            nb::list layers;
            for (const LayerConfig& L : c.layers) {
              nb::dict d;
              d["sliding_window"] = L.sliding_window;
              if (L.rope >= 0) {
                const RopeConfig& r = c.ropes[(size_t)L.rope];
                nb::dict rope;
                rope["n_rot"] = r.n_rot;
                rope["freq_base"] = r.freq_base;
                rope["linear_scale"] = r.linear_scale;
                rope["layout"] = r.layout == RopeLayout::kNeox ? "neox" : "adjacent";
                rope["freq_factors"] = !r.freq_factors.empty();
                rope["long_freq_factors"] = !r.long_freq_factors.empty();
                rope["attention_factor"] = r.attention_factor;
                rope["yarn_factor"] = r.yarn_factor;
                d["rope"] = rope;
              } else {
                d["rope"] = nb::none();
              }
              d["qk_norm"] = L.qk_norm;
              d["post_norms"] = L.post_attention_norm || L.post_ffn_norm;
              switch (L.activation) {
                case FfnActivation::kSwiGlu: d["activation"] = "swiglu"; break;
                case FfnActivation::kGeGlu: d["activation"] = "geglu"; break;
                case FfnActivation::kGelu: d["activation"] = "gelu"; break;
                case FfnActivation::kGeluTanh: d["activation"] = "gelu_tanh"; break;
                case FfnActivation::kSwiGluOai: d["activation"] = "swiglu_oai"; break;
              }
              d["learned_sinks"] = L.learned_sinks;
              d["experts"] = c.n_expert > 0 ? nb::cast(nb::make_tuple(c.n_expert_used, c.n_expert)) : nb::none();
              d["attention_scale"] = L.attention_scale;
              d["attention_softcap"] = L.attention_softcap;
              layers.append(d);
            }
            return layers;
          },
          "Per-layer configuration as read from the GGUF file: sliding_window (0: global), rope (None: NoPE),\n"
          "qk_norm, post_norms, activation, attention_scale, attention_softcap.")
      .def_prop_ro("final_logit_softcap", [](const Model& m) { return m.config().final_logit_softcap; })
      .def_prop_ro("embedding_scale", [](const Model& m) { return m.config().embedding_scale; })
      .def_prop_ro("path", [](const Model& m) { return m.file().path(); })
      .def_prop_ro("fingerprint", &Model::fingerprint,
                   "Hash of the GGUF header, metadata, tensor table and samples of every tensor: saved session "
                   "states carry it and load only into the same model.")
      .def_prop_ro(
          "tokenizer", [](const Model& m) -> const Tokenizer& { return m.tokenizer(); }, nb::rv_policy::reference_internal,
          "The model's tokenizer (built from the GGUF tokenizer.ggml.* metadata).");

  m.def(
      "heap_bytes_in_use",
      []() -> int64_t {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
        return (int64_t)mallinfo2().uordblks;
#else
        return -1;
#endif
      },
      "Bytes the C heap has handed out now (glibc; -1 elsewhere): lets tests check that a stream allocates "
      "nothing per token.");
  m.def(
      "heap_and_mmap_bytes_in_use",
      []() -> int64_t {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
        const struct mallinfo2 info = mallinfo2();
        return (int64_t)(info.uordblks + info.hblkhd);
#else
        return -1;
#endif
      },
      "Bytes malloc has handed out now, large (mmap'ed) blocks included (glibc; -1 elsewhere): lets tests "
      "compare a session's real allocation with its estimate.");
  m.def(
      "supported_architectures",
      []() {
        nb::list out;
        for (const Family& f : supported_families()) out.append(nb::make_tuple(f.architecture, f.features));
        return out;
      },
      "The GGUF architectures (general.architecture) this build runs, each with what it adds to the\n"
      "llama block: a list of (architecture, features).");
  m.def(
      "session_memory",
      [](const Model& model, const std::string& mode, int64_t n_sink, int64_t window, int64_t batch_size,
         const std::string& kv_type, int n_threads, bool allow_beyond_training_context) {
        const SessionMemory mem = Session::memory_for(
            model, session_options(mode, n_sink, window, batch_size, kv_type, n_threads, allow_beyond_training_context,
                                   0, 0));
        nb::dict d;
        d["kv_cache"] = mem.kv_cache;
        d["scratch"] = mem.scratch;
        d["attention"] = mem.attention;
        d["history"] = mem.history;
        d["total"] = mem.total();
        return d;
      },
      nb::arg("model"), nb::arg("mode") = "streaming", nb::arg("n_sink") = 4, nb::arg("window") = -1,
      nb::arg("batch_size") = 256, nb::arg("kv_type") = "f16", nb::arg("n_threads") = 0,
      nb::arg("allow_beyond_training_context") = false,
      "Bytes a Session of these options would allocate, by part (kv_cache, scratch, attention, history) and in "
      "total, computed without allocating.");
  m.def("physical_memory_bytes", &physical_memory_bytes,
        "This machine's physical memory: the default limit on one session's allocation.");
  m.def(
      "state_checksum",
      [](nb::bytes data) -> uint64_t {
        SS_CHECK_ARG(data.size() >= 8, "a session state has at least 8 bytes");
        return hash64(data.c_str(), data.size() - 8);
      },
      nb::arg("state"),
      "The checksum a saved session state must end with (hash64 of all but its last 8 bytes); for tests "
      "that build states with one deliberate fault.");
  m.def("default_thread_count", &ThreadPool::default_thread_count,
        "Threads a session uses by default: the physical cores.");

  nb::class_<Session>(m, "Session", "One stream over a Model (see streaming.md for the modes).")
      .def(
          "__init__",
          [](Session* self, std::shared_ptr<const Model> model, const std::string& mode, int64_t n_sink, int64_t window,
             int64_t batch_size, const std::string& kv_type, int n_threads, bool allow_beyond_training_context,
             uint64_t position_offset, uint64_t max_bytes, const std::string& device) {
            const SessionOptions o = session_options(mode, n_sink, window, batch_size, kv_type, n_threads,
                                                     allow_beyond_training_context, position_offset, max_bytes, device);
            new (self) Session(std::move(model), o);
          },
          nb::arg("model"), nb::arg("mode") = "streaming", nb::arg("n_sink") = 4, nb::arg("window") = -1,
          nb::arg("batch_size") = 256, nb::arg("kv_type") = "f16", nb::arg("n_threads") = 0,
          nb::arg("allow_beyond_training_context") = false, nb::arg("position_offset") = 0, nb::arg("max_bytes") = 0,
          nb::arg("device") = "cpu",
          "device: 'cpu', or 'cuda' (a CUDA build and a usable GPU; RuntimeError saying which is missing "
          "otherwise).")
      .def(
          "eval",
          [](Session& s, AnyTokenArray any_tokens, bool all_logits, bool want_logits) {
            const int32_t* tokens = int32_tokens(any_tokens);
            const int64_t n = (int64_t)any_tokens.shape(0);
            const int64_t n_vocab = s.model().n_vocab();
            std::optional<nb::ndarray<nb::numpy, float>> out;
            if (want_logits)
              out = uninitialized_array<float>(all_logits ? std::vector<size_t>{(size_t)n, (size_t)n_vocab}
                                                          : std::vector<size_t>{(size_t)n_vocab});
            // Between chunks, take the GIL for a moment to let Python handle Ctrl-C (and other
            // signals); a pending KeyboardInterrupt stops the eval with finished chunks kept.
            const std::function<bool()> python_signals = [] {
              nb::gil_scoped_acquire acquire;
              return PyErr_CheckSignals() != 0;
            };
            try {
              nb::gil_scoped_release release;
              s.eval(tokens, n, all_logits, out ? out->data() : nullptr, python_signals);
            } catch (const Interrupted& e) {
              if (PyErr_Occurred()) throw nb::python_error();
              throw;
            }
            if (!out) return nb::object(nb::none());
            if (n == 0) std::fill(out->data(), out->data() + out->size(), 0.0f);  // nothing to fill it from
            return nb::cast(*out);
          },
          nb::arg("tokens").noconvert(), nb::arg("all_logits") = false, nb::arg("want_logits") = true,
          "Feeds int32 token ids (a C-contiguous int32 array; no implicit conversion); returns (n_vocab,) logits of the last token, (n, n_vocab) with all_logits, "
          "or None with want_logits=False.")
      .def("reset", &Session::reset, nb::call_guard<nb::gil_scoped_release>())
      .def(
          "save",
          [](const Session& s, std::vector<int32_t> pending, nb::object logits, uint64_t logits_n_past,
             nb::bytes app_data) {
            StreamExtras extras;
            extras.pending = std::move(pending);
            if (!logits.is_none()) {
              const auto array = nb::cast<nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>>(logits);
              extras.has_logits = true;
              extras.logits.assign(array.data(), array.data() + array.shape(0));
              extras.logits_n_past = logits_n_past;
            }
            extras.app_data.assign(app_data.c_str(), app_data.size());
            std::vector<uint8_t> state;
            {
              nb::gil_scoped_release release;
              state = s.save(extras);
            }
            return nb::bytes(reinterpret_cast<const char*>(state.data()), state.size());
          },
          nb::arg("pending") = std::vector<int32_t>{}, nb::arg("logits") = nb::none(), nb::arg("logits_n_past") = 0,
          nb::arg("app_data") = nb::bytes(""),
          "The stream's exact state as bytes (sinks, window K/V, counter) with the given extras, fingerprinted "
          "and checksummed.")
      .def(
          "load",
          [](Session& s, nb::bytes data, nb::object accept) {
            // The bytes object stays alive (and unchanged: bytes are immutable) for the whole call.
            const uint8_t* state = reinterpret_cast<const uint8_t*>(data.c_str());
            const size_t size = data.size();
            std::function<void(StreamExtras&)> check;
            if (!accept.is_none()) {
              check = [&accept](StreamExtras& extras) {
                nb::gil_scoped_acquire acquire;
                nb::object logits = nb::none();
                if (extras.has_logits) {
                  auto owned = std::make_unique<std::vector<float>>(std::move(extras.logits));
                  const size_t n = owned->size();
                  logits = nb::cast(owned_array(std::move(owned), {n}));
                }
                accept(extras.pending, logits, extras.logits_n_past,
                       nb::bytes(extras.app_data.data(), extras.app_data.size()));
              };
            }
            nb::gil_scoped_release release;
            s.load(state, size, check);
          },
          nb::arg("state"), nb::arg("accept") = nb::none(),
          "Restores a state from save(), all or nothing: everything is checked first; accept(pending, logits, "
          "logits_n_past, app_data), if given, may refuse the extras by raising; the session changes only "
          "when nothing failed.")
      .def("request_cancel", &Session::request_cancel)
      .def("undo_last_token", &Session::undo_last_token,
           "Takes back the token of the session's last batched step when it was one token and nothing changed "
           "the stream since (ValueError otherwise): the stream is as if that step had never run.")
      .def_prop_ro("n_past", &Session::n_past)
      .def_prop_ro("n_cached", &Session::n_cached)
      .def("n_cached_at", &Session::n_cached_at, nb::arg("n_past"),
           "K/V entries a stream of n_past tokens holds in this session's geometry (<= capacity, but dense).")
      .def_prop_ro("kv_bytes", &Session::kv_bytes)
      .def_prop_ro("capacity", &Session::capacity)
      .def_prop_ro("n_sink", &Session::n_sink)
      .def_prop_ro("window", &Session::window)
      .def_prop_ro("n_threads", &Session::n_threads)
      .def_prop_ro("device", [](const Session& s) { return std::string(device_name(s.device())); })
      .def_prop_ro("keys_rotated", &Session::keys_rotated, "RoPE rotations of keys so far (one per key and layer).")
      .def_prop_ro("entries_attended", &Session::entries_attended,
                   "K/V entries read by attention so far (|A(t)| per query head and layer).")
      .def_prop_ro("mode", [](const Session& s) { return std::string(mode_name(s.mode())); });

  nb::class_<BatchRunner>(m, "BatchRunner",
                          "One forward pass for several sessions' tokens (see sinkstream.batching).")
      .def(nb::init<std::shared_ptr<const Model>, int, int64_t, int64_t>(), nb::arg("model"),
           nb::arg("n_threads") = 0, nb::arg("max_tokens") = 256, nb::arg("max_sessions") = 64)
      .def(
          "step",
          [](BatchRunner& runner, std::vector<Session*> sessions, std::vector<AnyTokenArray> tokens,
             std::vector<bool> want_logits, std::optional<std::vector<std::optional<PySampler*>>> samplers) {
            SS_CHECK_ARG(sessions.size() == tokens.size() && sessions.size() == want_logits.size(),
                         "step needs as many token arrays and want_logits flags as sessions, got ", sessions.size(),
                         ", ", tokens.size(), " and ", want_logits.size());
            SS_CHECK_ARG(!samplers || samplers->size() == sessions.size(), "step needs one sampler (or None) per ",
                         "session, got ", samplers ? samplers->size() : 0, " for ", sessions.size());
            int64_t n_logits = 0;
            for (bool want : want_logits) n_logits += want ? 1 : 0;
            const int64_t n_vocab = sessions.empty() || sessions[0] == nullptr ? 0 : sessions[0]->model().n_vocab();
            // Every row that wants logits is written by the step (its items hold 1.. tokens each).
            nb::ndarray<nb::numpy, float> out = uninitialized_array<float>({(size_t)n_logits, (size_t)n_vocab});
            std::vector<BatchRunner::Item> items(sessions.size());
            std::vector<PySampler*> lent;  // the samplers this step uses, each locked while it runs
            int64_t row = 0;
            for (size_t i = 0; i < sessions.size(); ++i) {
              items[i].session = sessions[i];
              items[i].tokens = int32_tokens(tokens[i]);
              items[i].n = (int64_t)tokens[i].shape(0);
              if (want_logits[i]) items[i].logits = out.data() + (row++) * n_vocab;
              PySampler* sampler = samplers && (*samplers)[i] ? *(*samplers)[i] : nullptr;
              if (sampler == nullptr) continue;
              SS_CHECK_ARG(std::find(lent.begin(), lent.end(), sampler) == lent.end(), "step: session ", i,
                           " has the sampler of an earlier session; each needs its own");
              lent.push_back(sampler);
              items[i].sampler = &sampler->sampler;
            }
            auto sampled = std::make_unique<std::vector<int32_t>>(sessions.size(), -1);
            std::vector<std::string> errors;
            {
              nb::gil_scoped_release release;
              std::vector<std::unique_lock<std::mutex>> locks;
              for (PySampler* sampler : lent) locks.emplace_back(sampler->mutex);
              runner.step(items.data(), (int64_t)items.size());
              if (samplers) runner.sample_tokens(items.data(), (int64_t)items.size(), sampled->data(), errors);
            }
            nb::object logits = nb::cast(out);
            if (!samplers) return logits;
            nb::list messages;
            for (const std::string& e : errors) messages.append(e.empty() ? nb::object(nb::none()) : nb::object(nb::str(e.c_str())));
            const size_t n = sampled->size();
            return nb::object(nb::make_tuple(logits, nb::cast(owned_array(std::move(sampled), {n})), messages));
          },
          nb::arg("sessions"), nb::arg("tokens"), nb::arg("want_logits"), nb::arg("samplers") = nb::none(),
          "Runs each session's int32 tokens (1..its batch_size) as one pass; returns the last-token "
          "logits of the sessions with want_logits, in order, as (count, n_vocab).\n"
          "samplers: one Sampler or None per session; then the step also draws each one's next token "
          "from its last logits (the sampler accepts it) and returns (logits, tokens: int32 (sessions,), "
          "-1 where no sampler, errors: a sampler's error message or None per session).")
      .def_prop_ro("n_threads", &BatchRunner::n_threads)
      .def_prop_ro("max_tokens", &BatchRunner::max_tokens)
      .def_prop_ro("max_sessions", &BatchRunner::max_sessions);
}

}  // namespace sinkstream::bindings
