// Registration functions of the Python module, one per area (each in its own bind_*.cc).
#pragma once
#include <nanobind/nanobind.h>

#include <mutex>

#include "runtime/sampler.h"

namespace sinkstream::bindings {

// sinkstream._core.Sampler. The compute calls release the GIL, so two Python threads could reach
// one Sampler at once; the mutex keeps its buffers and random stream consistent. (A batched step
// that samples for its sessions, bind_model.cc, holds it too.)
struct PySampler {
  Sampler sampler;
  std::mutex mutex;
  PySampler(int32_t n_vocab, SamplerParams params) : sampler(n_vocab, std::move(params)) {}
};

void bind_gguf(nanobind::module_& m);
void bind_quant(nanobind::module_& m);
void bind_attention(nanobind::module_& m);
void bind_tokenizer(nanobind::module_& m);
void bind_model(nanobind::module_& m);
void bind_sampler(nanobind::module_& m);
void bind_cuda(nanobind::module_& m);  // always present; reports "built without CUDA" there
}  // namespace sinkstream::bindings
