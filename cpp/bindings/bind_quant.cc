// Python access to the quant kernels, for tests: dequantize raw blocks, fp16 conversions.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <memory>
#include <vector>

#include "bindings/bindings.h"
#include "core/error.h"
#include "core/fp16.h"
#include "quant/dequantize.h"

namespace nb = nanobind;

namespace sinkstream::bindings {

namespace {

// A 1-D numpy array that owns a std::vector (no copy).
template <typename T>
nb::ndarray<nb::numpy, T> vector_to_numpy(std::vector<T>&& data) {
  auto owned = std::make_unique<std::vector<T>>(std::move(data));
  std::vector<T>* values = owned.release();
  nb::capsule owner(values, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  size_t shape[1] = {values->size()};
  return nb::ndarray<nb::numpy, T>(values->data(), 1, shape, owner);
}

using F32Array = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using U16Array = nb::ndarray<const uint16_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

}  // namespace

void bind_quant(nb::module_& m) {
  m.def(
      "dequantize",
      [](uint32_t type_id, nb::bytes data, int64_t n) {
        const GgmlTypeInfo* info = ggml_type_info(type_id);
        SS_CHECK_ARG(info != nullptr, "unknown ggml type id ", type_id);
        SS_CHECK_ARG(n >= 0 && n % info->block_size == 0, "n = ", n, " is not a multiple of the ",
                     info->name, " block size ", info->block_size);
        SS_CHECK_ARG((int64_t)data.size() == ggml_row_bytes(*info, n), "data has ", data.size(),
                     " bytes, ", info->name, " x ", n, " needs ", ggml_row_bytes(*info, n));
        std::vector<float> values((size_t)n);
        dequantize_row(info->type, data.c_str(), values.data(), n);
        return vector_to_numpy(std::move(values));
      },
      nb::arg("type_id"), nb::arg("data"), nb::arg("n"),
      "Dequantizes n elements of raw GGML blocks of the given type id to float32.");

  m.def(
      "f32_to_fp16",
      [](F32Array x) {
        std::vector<uint16_t> out((size_t)x.shape(0));
        for (size_t i = 0; i < out.size(); ++i) out[i] = f32_to_fp16(x.data()[i]);
        return vector_to_numpy(std::move(out));
      },
      nb::arg("x"), "Test hook: float32 -> IEEE half bits with core/fp16.h (round to nearest even).");

  m.def(
      "fp16_to_f32",
      [](U16Array h) {
        std::vector<float> out((size_t)h.shape(0));
        for (size_t i = 0; i < out.size(); ++i) out[i] = fp16_to_f32(h.data()[i]);
        return vector_to_numpy(std::move(out));
      },
      nb::arg("h"), "Test hook: IEEE half bits -> float32 with core/fp16.h.");
}

}  // namespace sinkstream::bindings
