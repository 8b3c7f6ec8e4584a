// Python access to the quant kernels, for tests: dequantize raw blocks.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <memory>
#include <vector>

#include "bindings/bindings.h"
#include "core/error.h"
#include "quant/dequantize.h"

namespace nb = nanobind;

namespace sinkstream::bindings {

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
        auto owned = std::make_unique<std::vector<float>>((size_t)n);
        dequantize_row(info->type, data.c_str(), owned->data(), n);
        std::vector<float>* values = owned.release();
        nb::capsule owner(values, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
        size_t shape[1] = {(size_t)n};
        return nb::ndarray<nb::numpy, float>(values->data(), 1, shape, owner);
      },
      nb::arg("type_id"), nb::arg("data"), nb::arg("n"),
      "Dequantizes n elements of raw GGML blocks of the given type id to float32.");
}

}  // namespace sinkstream::bindings
