// Registration functions of the Python module, one per area (each in its own bind_*.cc).
#pragma once
#include <nanobind/nanobind.h>

namespace sinkstream::bindings {
void bind_gguf(nanobind::module_& m);
void bind_quant(nanobind::module_& m);
void bind_attention(nanobind::module_& m);
void bind_tokenizer(nanobind::module_& m);
void bind_model(nanobind::module_& m);
void bind_sampler(nanobind::module_& m);
void bind_cuda(nanobind::module_& m);  // always present; reports "built without CUDA" there
}  // namespace sinkstream::bindings
