// Python access to the CUDA backend (cpp/ops/cuda/cuda_ops.h), for tests, benchmarks and device
// checks. Always compiled into _core: in a build without CUDA (the default; SINKSTREAM_HAVE_CUDA
// unset) the queries answer "no" and the compute calls raise a RuntimeError saying how to get CUDA.
// Arguments are validated first in both builds, so a bad call is a ValueError naming the argument
// everywhere, and those checks are testable without a GPU.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "core/error.h"
#include "ops/ops.h"
#include "quant/quant_types.h"

#ifdef SINKSTREAM_HAVE_CUDA
#include "ops/cuda/cuda_ops.h"
#endif

namespace nb = nanobind;

namespace sinkstream::bindings {

namespace {

constexpr const char* kNotBuilt =
    "sinkstream was built without CUDA: reinstall with -C cmake.define.SINKSTREAM_CUDA=ON "
    "(e.g. pip install . -C cmake.define.SINKSTREAM_CUDA=ON, with the CUDA toolkit's nvcc on PATH)";

using F32Matrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using F32Vector = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F32Any = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using U8Any = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;

using F32Result = nb::ndarray<nb::numpy, float>;

#ifdef SINKSTREAM_HAVE_CUDA
// An ndarray of `shape` that owns its std::vector (no copy).
F32Result owned_array(std::vector<float>&& data, const std::vector<size_t>& shape) {
  auto owned = std::make_unique<std::vector<float>>(std::move(data));
  std::vector<float>* values = owned.release();
  nb::capsule owner(values, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  return F32Result(values->data(), shape.size(), shape.data(), owner);
}
#endif

// The weight types cuda_matmul accepts, by GGUF type name (case-insensitive).
GgmlType parse_type_name(const std::string& type_name) {
  std::string upper = type_name;
  std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char c) { return (char)std::toupper(c); });
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::F32})
    if (upper == ggml_type_name(t)) return t;
  throw ArgumentError(cat("type_name '", type_name, "' is not supported by cuda_matmul (supported: Q4_0, Q4_1, ",
                          "Q8_0, F16, F32)"));
}

// The weight as a WeightMatrix over the caller's bytes, every size checked against the type.
WeightMatrix check_matmul_args(const uint8_t* data, size_t size, const std::string& type_name, int64_t rows,
                               int64_t cols, const F32Matrix& x) {
  const GgmlTypeInfo& info = ggml_type_info(parse_type_name(type_name));
  SS_CHECK_ARG(rows > 0, "rows = ", rows, " must be positive");
  SS_CHECK_ARG(cols > 0, "cols = ", cols, " must be positive");
  SS_CHECK_ARG(cols % info.block_size == 0, "cols = ", cols, " is not a multiple of the ", info.name,
               " block size ", info.block_size);
  const int64_t row_bytes = ggml_row_bytes(info, cols);
  SS_CHECK_ARG(rows <= std::numeric_limits<int64_t>::max() / row_bytes, "rows = ", rows, " x cols = ", cols,
               " is too large");
  SS_CHECK_ARG((int64_t)size == rows * row_bytes, "raw_weight_bytes has ", size, " bytes, but rows = ", rows,
               " of ", info.name, " x cols = ", cols, " need ", rows * row_bytes, " (", info.block_bytes,
               " bytes per block of ", info.block_size, ")");
  SS_CHECK_ARG((int64_t)x.shape(1) == cols, "x has shape (", x.shape(0), ", ", x.shape(1), "), expected (n, cols = ",
               cols, ")");
  WeightMatrix w;
  w.name = "cuda_matmul weight";
  w.type = info.type;
  w.data = data;
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = row_bytes;
  return w;
}

#ifdef SINKSTREAM_HAVE_CUDA
// Built with CUDA: a compute call still needs a device that initialises.
void require_device() {
  std::string why;
  bool ok;
  {
    nb::gil_scoped_release release;  // the first call creates the CUDA context (~0.1-1 s)
    ok = cuda::available(&why);
  }
  if (!ok) throw std::runtime_error("sinkstream was built with CUDA, but no CUDA device is usable: " + why);
}
#endif

F32Result matmul_impl(const uint8_t* data, size_t size, const std::string& type_name,
                      int64_t rows, int64_t cols, const F32Matrix& x) {
  const WeightMatrix w = check_matmul_args(data, size, type_name, rows, cols, x);
  const int64_t n = (int64_t)x.shape(0);
#ifdef SINKSTREAM_HAVE_CUDA
  require_device();
  std::vector<float> y((size_t)(n * rows));
  {
    nb::gil_scoped_release release;
    cuda::matmul_host(w, x.data(), n, y.data());
  }
  return owned_array(std::move(y), {(size_t)n, (size_t)rows});
#else
  (void)w;
  (void)n;
  throw std::runtime_error(kNotBuilt);
#endif
}

constexpr const char* kMatmulDoc =
    "Y (n, rows) = X (n, cols) . W^T on the GPU, W given as raw GGUF blocks (bytes or a uint8 array of\n"
    "rows * cols / block_size * block_bytes bytes) of type_name 'Q4_0', 'Q4_1', 'Q8_0', 'F16' or 'F32';\n"
    "x float32 (n, cols). Uploads W and X, runs, downloads Y (a test hook, not a fast path).\n"
    "ValueError for bad arguments; RuntimeError when built without CUDA or no device is usable.";

}  // namespace

void bind_cuda(nb::module_& m) {
  m.def(
      "cuda_built",
      []() {
#ifdef SINKSTREAM_HAVE_CUDA
        return true;
#else
        return false;
#endif
      },
      "True when this build of sinkstream has the CUDA backend (CMake option SINKSTREAM_CUDA).");

  m.def(
      "cuda_available",
      []() {
#ifdef SINKSTREAM_HAVE_CUDA
        nb::gil_scoped_release release;
        return cuda::available();
#else
        return false;
#endif
      },
      "True when built with CUDA and a CUDA device is visible and initialises; never raises.");

  m.def(
      "cuda_devices",
      []() {
        nb::list out;
#ifdef SINKSTREAM_HAVE_CUDA
        std::vector<cuda::DeviceInfo> devices;
        {
          nb::gil_scoped_release release;
          devices = cuda::devices();
        }
        for (const cuda::DeviceInfo& d : devices) {
          nb::dict info;
          info["index"] = d.index;
          info["name"] = d.name;
          info["compute_capability"] = nb::make_tuple(d.major, d.minor);
          info["total_memory"] = d.total_memory;
          info["multiprocessors"] = d.multiprocessors;
          out.append(info);
        }
#endif
        return out;
      },
      "The visible CUDA devices as dicts (index, name, compute_capability (major, minor), total_memory in\n"
      "bytes, multiprocessors); [] without CUDA or without a device.");

  m.def(
      "cuda_matmul",
      [](nb::bytes raw_weight_bytes, const std::string& type_name, int64_t rows, int64_t cols, F32Matrix x) -> F32Result {
        return matmul_impl(reinterpret_cast<const uint8_t*>(raw_weight_bytes.c_str()), raw_weight_bytes.size(),
                           type_name, rows, cols, x);
      },
      nb::arg("raw_weight_bytes"), nb::arg("type_name"), nb::arg("rows"), nb::arg("cols"), nb::arg("x"), kMatmulDoc);
  m.def(
      "cuda_matmul",
      [](U8Any raw_weight_bytes, const std::string& type_name, int64_t rows, int64_t cols, F32Matrix x) -> F32Result {
        return matmul_impl(raw_weight_bytes.data(), raw_weight_bytes.size(), type_name, rows, cols, x);
      },
      nb::arg("raw_weight_bytes"), nb::arg("type_name"), nb::arg("rows"), nb::arg("cols"), nb::arg("x"), kMatmulDoc);

  m.def(
      "cuda_rms_norm",
      [](F32Matrix x, F32Vector weight, double eps) -> F32Result {
        const int64_t n = (int64_t)x.shape(0), d = (int64_t)x.shape(1);
        SS_CHECK_ARG(d > 0, "x has shape (", n, ", 0): rows must not be empty");
        SS_CHECK_ARG((int64_t)weight.shape(0) == d, "weight has ", weight.shape(0), " values, x rows have ", d);
        SS_CHECK_ARG(std::isfinite(eps) && eps >= 0.0, "eps = ", eps, " must be finite and >= 0");
#ifdef SINKSTREAM_HAVE_CUDA
        require_device();
        std::vector<float> out((size_t)(n * d));
        {
          nb::gil_scoped_release release;
          cuda::rms_norm_host(x.data(), weight.data(), n, d, (float)eps, out.data());
        }
        return owned_array(std::move(out), {(size_t)n, (size_t)d});
#else
        throw std::runtime_error(kNotBuilt);
#endif
      },
      nb::arg("x"), nb::arg("weight"), nb::arg("eps") = 1e-5,
      "out (n, d) = x / sqrt(mean(x^2) + eps) * weight per row on the GPU; x float32 (n, d), weight (d,).\n"
      "RuntimeError when built without CUDA or no device is usable.");

  m.def(
      "cuda_silu_mul",
      [](F32Any gate, F32Any up) -> F32Result {
        SS_CHECK_ARG(gate.ndim() == up.ndim(), "gate has ", gate.ndim(), " dimensions, up has ", up.ndim());
        std::vector<size_t> shape;
        for (size_t i = 0; i < gate.ndim(); ++i) {
          SS_CHECK_ARG(gate.shape(i) == up.shape(i), "gate and up differ in shape (dimension ", i, ": ",
                       gate.shape(i), " vs ", up.shape(i), ")");
          shape.push_back(gate.shape(i));
        }
        const int64_t n = (int64_t)gate.size();
#ifdef SINKSTREAM_HAVE_CUDA
        require_device();
        std::vector<float> out((size_t)n);
        {
          nb::gil_scoped_release release;
          cuda::silu_mul_host(gate.data(), up.data(), n, out.data());
        }
        return owned_array(std::move(out), shape);
#else
        (void)n;
        throw std::runtime_error(kNotBuilt);
#endif
      },
      nb::arg("gate"), nb::arg("up"),
      "silu(gate) * up elementwise on the GPU (float32 arrays of one shape).\n"
      "RuntimeError when built without CUDA or no device is usable.");
}

}  // namespace sinkstream::bindings
