// Python view of the Sampler: _core.Sampler(n_vocab, temperature=..., ..., seed=None).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <vector>

#include "bindings/bindings.h"
#include "core/error.h"
#include "runtime/sampler.h"

namespace nb = nanobind;

namespace sinkstream::bindings {

namespace {

using Logits = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

uint64_t seed_from_python(const nb::handle& seed) {
  if (seed.is_none()) {
    // A fresh random seed; read back through Sampler.seed to reproduce the run.
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ static_cast<uint64_t>(device());
  }
  if (!PyLong_Check(seed.ptr()) || PyBool_Check(seed.ptr()))
    throw nb::type_error(cat("sampler: seed must be an int or None, got ",
                             nb::cast<std::string>(nb::repr(seed))).c_str());
  const unsigned long long value = PyLong_AsUnsignedLongLong(seed.ptr());
  if (value == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw ArgumentError(cat("sampler: seed must be in [0, 2**64), got ", nb::cast<std::string>(nb::repr(seed))));
  }
  return static_cast<uint64_t>(value);
}

int32_t logits_size(const Logits& logits) {
  SS_CHECK_ARG(logits.shape(0) <= static_cast<size_t>(INT32_MAX), "sampler: logits has ", logits.shape(0),
               " entries, more than any vocabulary");
  return static_cast<int32_t>(logits.shape(0));
}

}  // namespace

void bind_sampler(nb::module_& m) {
  nb::class_<PySampler>(m, "Sampler",
                        "Token sampler: logit bias -> penalties -> top-k -> top-p -> min-p -> temperature -> "
                        "seeded draw (llama.cpp's chain order). temperature=0 is greedy. Not shared between "
                        "threads without cost: calls on one Sampler are serialized.")
      .def(
          "__init__",
          [](PySampler* self, int32_t n_vocab, float temperature, int32_t top_k, float top_p, float min_p,
             float repeat_penalty, int32_t repeat_last_n, float frequency_penalty, float presence_penalty,
             std::optional<std::map<int32_t, float>> logit_bias, nb::handle seed, int32_t n_allowed) {
            SamplerParams params;
            params.temperature = temperature;
            params.top_k = top_k;
            params.top_p = top_p;
            params.min_p = min_p;
            params.repeat_penalty = repeat_penalty;
            params.penalty_last_n = repeat_last_n;
            params.frequency_penalty = frequency_penalty;
            params.presence_penalty = presence_penalty;
            if (logit_bias)
              for (const auto& [token, bias] : *logit_bias) params.logit_bias.emplace_back(token, bias);
            params.seed = seed_from_python(seed);
            params.n_allowed = n_allowed;
            new (self) PySampler(n_vocab, std::move(params));
          },
          nb::arg("n_vocab"), nb::kw_only(), nb::arg("temperature") = 0.8f, nb::arg("top_k") = 40,
          nb::arg("top_p") = 0.95f, nb::arg("min_p") = 0.05f, nb::arg("repeat_penalty") = 1.0f,
          nb::arg("repeat_last_n") = 64, nb::arg("frequency_penalty") = 0.0f, nb::arg("presence_penalty") = 0.0f,
          nb::arg("logit_bias") = nb::none(), nb::arg("seed") = nb::none(), nb::arg("n_allowed") = 0,
          "n_allowed: only ids below it are drawn (0 = n_vocab): the tokenizer's vocabulary when the model's "
          "embedding has padding rows past it.")
      .def(
          "sample",
          [](PySampler& self, Logits logits) {
            const int32_t n = logits_size(logits);
            nb::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(self.mutex);
            return self.sampler.sample(logits.data(), n);
          },
          nb::arg("logits"), "Draws a token id from a float32 vector of n_vocab logits (does not accept() it).")
      .def(
          "probabilities",
          [](PySampler& self, Logits logits) {
            const int32_t n = logits_size(logits);
            auto owned = std::make_unique<std::vector<float>>(static_cast<size_t>(n));
            {
              nb::gil_scoped_release release;
              std::lock_guard<std::mutex> lock(self.mutex);
              self.sampler.probabilities(logits.data(), n, owned->data());
            }
            std::vector<float>* values = owned.release();
            nb::capsule owner(values, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
            size_t shape[1] = {static_cast<size_t>(n)};
            return nb::ndarray<nb::numpy, float>(values->data(), 1, shape, owner);
          },
          nb::arg("logits"),
          "The distribution sample() draws from (float32, n_vocab; zero for filtered tokens, one-hot when "
          "greedy). Does not advance the random stream.")
      .def(
          "accept",
          [](PySampler& self, int32_t token) {
            std::lock_guard<std::mutex> lock(self.mutex);
            self.sampler.accept(token);
          },
          nb::arg("token"), "Records a token (prompt or generated) in the penalty window.")
      .def(
          "reset",
          [](PySampler& self) {
            std::lock_guard<std::mutex> lock(self.mutex);
            self.sampler.reset();
          },
          "Forgets the penalty window and restarts the random stream from the seed.")
      .def_prop_ro("n_vocab", [](PySampler& self) { return self.sampler.n_vocab(); })
      .def_prop_ro("n_allowed", [](PySampler& self) { return self.sampler.n_allowed(); },
                   "Ids below this can be drawn; the rest (padding rows) never are.")
      .def_prop_ro("seed", [](PySampler& self) { return self.sampler.params().seed; },
                   "The seed in use (a random one when constructed with seed=None).")
      .def_prop_ro("history", [](PySampler& self) {
            std::lock_guard<std::mutex> lock(self.mutex);
            return self.sampler.history();
          }, "Accepted tokens inside the penalty window, oldest first.");
}

}  // namespace sinkstream::bindings
