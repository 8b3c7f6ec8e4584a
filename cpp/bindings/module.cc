// sinkstream._core: the only place (with the other bind_*.cc files) that knows about Python.
// C++ errors become Python exceptions: GgufError -> sinkstream.GGUFError (a ValueError),
// ModelError -> sinkstream.ModelError (a GGUFError), ArgumentError -> ValueError,
// Interrupted -> sinkstream.Cancelled (a RuntimeError); CudaError (CUDA builds) and other
// std::runtime_errors -> RuntimeError.
#include <nanobind/nanobind.h>

#include "bindings/bindings.h"
#include "core/error.h"

namespace nb = nanobind;

NB_MODULE(_core, m) {
  m.doc() = "sinkstream native engine (GGUF reader, quantized kernels, StreamingLLM decoder)";
  static nb::exception<sinkstream::GgufError> gguf_error(m, "GGUFError", PyExc_ValueError);
  static nb::exception<sinkstream::ModelError> model_error(m, "ModelError", gguf_error.ptr());
  static nb::exception<sinkstream::Interrupted> cancelled(m, "Cancelled", PyExc_RuntimeError);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const sinkstream::ArgumentError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  sinkstream::bindings::bind_gguf(m);
  sinkstream::bindings::bind_quant(m);
  sinkstream::bindings::bind_attention(m);
  sinkstream::bindings::bind_tokenizer(m);
  sinkstream::bindings::bind_model(m);
  sinkstream::bindings::bind_sampler(m);
  sinkstream::bindings::bind_cuda(m);
}
