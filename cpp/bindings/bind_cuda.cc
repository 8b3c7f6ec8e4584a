// Python access to the CUDA backend (cpp/ops/cuda/cuda_ops.h), for tests, benchmarks and device
// checks. Always compiled into _core: in a build without CUDA (the default; SINKSTREAM_HAVE_CUDA
// unset) the queries answer "no" and the compute calls raise a RuntimeError saying how to get CUDA.
// Arguments are validated first in both builds, so a bad call is a ValueError naming the argument
// everywhere, and those checks are testable without a GPU.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

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
#include "gguf/gguf_file.h"
#include "kv/sink_cache.h"
#include "ops/cuda/attention_plan.h"
#include "ops/cuda/block_decode.h"
#include "ops/ops.h"
#include "quant/quant_types.h"
#include "model/model.h"

#ifdef SINKSTREAM_HAVE_CUDA
#include "ops/cuda/cuda_backend.h"
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

// An ndarray of `shape` that owns its std::vector (no copy).
F32Result owned_array(std::vector<float>&& data, const std::vector<size_t>& shape) {
  auto owned = std::make_unique<std::vector<float>>(std::move(data));
  std::vector<float>* values = owned.release();
  nb::capsule owner(values, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  return F32Result(values->data(), shape.size(), shape.data(), owner);
}

// Every GGUF type the CUDA backend reads (block_decode.h).
constexpr GgmlType kDecodable[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1,
                                   GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K,
                                   GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_NL};

// The weight types cuda_matmul accepts, by GGUF type name (case-insensitive).
GgmlType parse_type_name(const std::string& type_name) {
  std::string upper = type_name;
  std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char c) { return (char)std::toupper(c); });
  for (GgmlType t : kDecodable)
    if (upper == ggml_type_name(t)) return t;
  throw ArgumentError(cat("type_name '", type_name, "' is not supported by the CUDA backend (supported: F32, F16, ",
                          "BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL)"));
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
    "rows * cols / block_size * block_bytes bytes) of any type cuda_decodable_types() lists;\n"
    "x float32 (n, cols). Uploads W and X, runs, downloads Y (a test hook, not a fast path).\n"
    "ValueError for bad arguments; RuntimeError when built without CUDA or no device is usable.";

// What Model(device="cuda") holds so that its weights stay on the device between its sessions.
struct CudaWeightsHandle {
  std::shared_ptr<void> held;
};

}  // namespace

void bind_cuda(nb::module_& m) {
  // ---- host-side parts of the CUDA backend: compiled by the host compiler in every build ----------
  m.def(
      "cuda_decodable_types",
      []() {
        std::vector<std::string> names;
        for (GgmlType t : kDecodable) names.push_back(ggml_type_name(t));
        return names;
      },
      "GGUF weight types the CUDA backend reads directly (matmul, embedding lookup).");
  m.def(
      "cuda_decode_row",
      [](U8Any raw, const std::string& type_name, int64_t cols) -> F32Result {
        const GgmlType type = parse_type_name(type_name);
        const GgmlTypeInfo& info = ggml_type_info(type);
        SS_CHECK_ARG(cols > 0 && cols % info.block_size == 0, "cols = ", cols, " is not a positive multiple of the ",
                     info.name, " block size ", info.block_size);
        SS_CHECK_ARG((int64_t)raw.size() == ggml_row_bytes(info, cols), "raw has ", raw.size(), " bytes, a ",
                     info.name, " row of ", cols, " needs ", ggml_row_bytes(info, cols));
        std::vector<float> out((size_t)cols);
        for (int64_t e = 0; e < cols; ++e) out[(size_t)e] = cuda::decode_element(type, raw.data(), e);
        return owned_array(std::move(out), {(size_t)cols});
      },
      nb::arg("raw"), nb::arg("type_name"), nb::arg("cols"),
      "One row of raw GGUF blocks decoded by the CUDA kernels' own element decoder (block_decode.h), run\n"
      "on the CPU: the layouts the GPU reads, checkable without a GPU.");
  m.def(
      "cuda_attention_plan",
      [](int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t n_sink, int64_t window, int64_t max_chunk,
         std::vector<int64_t> layer_windows, bool evicts, int64_t layer, uint64_t t0, int64_t n) {
        SS_CHECK_ARG(layer >= 0 && layer < n_layer, "layer ", layer, " of ", n_layer);
        SS_CHECK_ARG(n >= 1 && n <= max_chunk, "n = ", n, " must be 1..max_chunk");
        // The geometry alone, as a CUDA session's host cache is (host_storage = false).
        const SinkCache cache(n_layer, n_head_kv, head_dim, n_sink, window, max_chunk, KvType::kF16, 0,
                              std::move(layer_windows), evicts, /*host_storage=*/false);
        SS_ASSERT(!cache.has_host_storage() && cache.bytes() > 0);
        std::vector<cuda::AttentionRowPlan> plans;
        for (int64_t b = 0; b < n; ++b) plans.push_back(cuda::plan_attention_row(cache, layer, t0 + (uint64_t)b, false));
        std::vector<cuda::AttentionTilePlan> tiles;  // the prefill kernels' tiles of these queries
        for (int64_t first = 0; first < n; first += cuda::kTileQueries)
          tiles.push_back(cuda::plan_attention_tile(plans.data(), first, std::min(cuda::kTileQueries, n - first),
                                                    cache.ring_slots(layer)));
        nb::list out;
        for (int64_t b = 0; b < n; ++b) {
          const uint64_t t = t0 + (uint64_t)b;
          const cuda::AttentionRowPlan& p = plans[(size_t)b];
          // The prefill kernel's view: query b's rows found among its tile's candidates, by row.
          const cuda::AttentionTilePlan& tile = tiles[(size_t)(b / cuda::kTileQueries)];
          std::vector<int64_t> tile_slots((size_t)cuda::plan_rows(p), -1);
          int64_t tile_rows = 0;
          for (int64_t c = 0; c < cuda::tile_candidates(tile); ++c) {
            const int64_t r = cuda::tile_candidate_row(tile, p, c, cache.ring_slots(layer));
            if (r < 0) continue;
            ++tile_rows;
            if (r < (int64_t)tile_slots.size())
              tile_slots[(size_t)r] = cuda::tile_candidate_slot(tile, c, cache.n_sink(), cache.ring_slots(layer));
          }
          // What the kernel reads, row by row (row_slot, alibi_distance: the kernel's own code) ...
          std::vector<int64_t> slots, distances;
          for (int64_t r = 0; r < cuda::plan_rows(p); ++r) {
            slots.push_back(cuda::row_slot(p, r, cache.n_sink(), cache.ring_slots(layer)));
            distances.push_back(cuda::alibi_distance(p, r));
          }
          // ... and what SinkCache says: the members of span(layer, t) in token order, their slots,
          // and p(t) - p(j) (a window member j sits t - j behind, a sink s at p(t) - s).
          const AttentionSpan span = cache.span(layer, t);
          std::vector<int64_t> tokens, expected_slots, expected_distances;
          for (uint64_t j = span.sink_begin; j < span.sink_end; ++j) {
            tokens.push_back((int64_t)j);
            expected_slots.push_back(cache.slot_of(layer, j));
            expected_distances.push_back((int64_t)(span.query_position - j));
          }
          for (uint64_t j = span.window_begin; j <= t && t >= span.window_begin; ++j) {
            tokens.push_back((int64_t)j);
            expected_slots.push_back(cache.slot_of(layer, j));
            expected_distances.push_back((int64_t)(t - j));
          }
          nb::dict d;
          d["t"] = t;
          d["query_position"] = p.query_position;
          d["store_slot"] = cuda::store_slot(cache, layer, t);
          d["slots"] = slots;
          d["tile_slots"] = tile_slots;
          d["tile_rows"] = tile_rows;
          d["alibi_distances"] = distances;
          d["tokens"] = tokens;
          d["expected_slots"] = expected_slots;
          d["expected_alibi_distances"] = expected_distances;
          d["expected_query_position"] = span.query_position;
          out.append(d);
        }
        return out;
      },
      nb::arg("n_layer"), nb::arg("n_head_kv"), nb::arg("head_dim"), nb::arg("n_sink"), nb::arg("window"),
      nb::arg("max_chunk"), nb::arg("layer_windows"), nb::arg("evicts"), nb::arg("layer"), nb::arg("t0"), nb::arg("n"),
      "The CUDA attention plan of queries t0 .. t0+n-1 of one layer, per query: the cache slots and ALiBi\n"
      "distances the kernel reads row by row (computed by the kernel's own row_slot / alibi_distance on\n"
      "the CPU) beside SinkCache's own span members, slot_of and distances, for tests without a GPU; and\n"
      "tile_slots / tile_rows: the rows the prefill kernels find for it among its tile's candidates.");
  m.def(
      "cuda_op_test",
      [](const std::string& op, const std::string& device, F32Matrix a, F32Any b, F32Any c, double p) -> F32Result {
        const int64_t rows = (int64_t)a.shape(0), cols = (int64_t)a.shape(1), n = rows * cols;
        const int64_t nb = (int64_t)b.size(), nc = (int64_t)c.size();
        SS_CHECK_ARG(device == "cpu" || device == "cuda", "device must be 'cpu' or 'cuda', got '", device, "'");
        SS_CHECK_ARG(rows > 0 && cols > 0, "a has shape (", rows, ", ", cols, ")");
        const bool rope = op == "rope_adjacent" || op == "rope_neox";
        if (op == "layer_norm") {
          SS_CHECK_ARG(nb == cols && (nc == 0 || nc == cols), "layer_norm: weight and bias must have cols values");
        } else if (op == "swiglu" || op == "geglu") {
          SS_CHECK_ARG(nb == n, op, ": up (b) must have the shape of gate (a)");
        } else if (rope) {
          SS_CHECK_ARG(nb == nc && nb >= 1 && 2 * nb <= cols, op, ": cos and sin need n_rot / 2 <= head_dim / 2 values");
        } else {
          SS_CHECK_ARG(op == "gelu" || op == "gelu_tanh" || op == "soft_cap" || op == "clamp", "unknown op '", op,
                       "' (layer_norm, gelu, gelu_tanh, swiglu, geglu, rope_adjacent, rope_neox, soft_cap, clamp)");
        }
        std::vector<float> out(a.data(), a.data() + n);
        if (device == "cuda") {
#ifdef SINKSTREAM_HAVE_CUDA
          require_device();
          nb::gil_scoped_release release;
          cuda::elementwise_host(op, a.data(), rows, cols, b.data(), nb, c.data(), nc, (float)p, out.data());
#else
          throw std::runtime_error(kNotBuilt);
#endif
        } else if (op == "layer_norm") {
          layer_norm(a.data(), b.data(), nc > 0 ? c.data() : nullptr, rows, cols, (float)p, out.data());
        } else if (op == "gelu") {
          gelu_erf_inplace(out.data(), n);
        } else if (op == "gelu_tanh") {
          gelu_tanh_inplace(out.data(), n);
        } else if (op == "swiglu") {
          silu_mul(a.data(), b.data(), n, out.data());
        } else if (op == "geglu") {
          gelu_tanh_mul(a.data(), b.data(), n, out.data());
        } else if (rope) {
          rope_apply(out.data(), rows, cols, 2 * nb, op == "rope_adjacent" ? RopeLayout::kAdjacentPairs : RopeLayout::kNeox,
                     b.data(), c.data());
        } else if (op == "soft_cap") {
          soft_cap_inplace(out.data(), (float)p, n);
        } else {
          clamp_inplace(out.data(), (float)p, n);
        }
        return owned_array(std::move(out), {(size_t)rows, (size_t)cols});
      },
      nb::arg("op"), nb::arg("device"), nb::arg("a"), nb::arg("b"), nb::arg("c"), nb::arg("p") = 0.0,
      "Test hook: one row-wise or elementwise op of the CUDA backend ('cuda') or its CPU twin in ops.h ('cpu') on\n"
      "a (rows, cols); b, c, p as the op needs (cuda_backend.h elementwise_host lists them; empty arrays when\n"
      "unused). RuntimeError for 'cuda' without a CUDA build or device.");
  nb::class_<CudaWeightsHandle>(m, "CudaWeightsHandle",
                                "Keeps a model's weights on the GPU while it lives (cuda_retain_weights).");
  m.def(
      "cuda_retain_weights",
      [](std::shared_ptr<const Model> model) -> CudaWeightsHandle {
#ifdef SINKSTREAM_HAVE_CUDA
        return CudaWeightsHandle{cuda::retain_weights(std::move(model))};
#else
        (void)model;
        throw std::runtime_error(kNotBuilt);
#endif
      },
      nb::arg("model"),
      "A handle that keeps `model`'s weights on the GPU (uploaded on first use) while it lives, also between\n"
      "sessions; Model(device='cuda') holds one. RuntimeError without a CUDA build or device.");
  m.def(
      "cuda_resident_weight_bytes",
      [](const Model& model) -> size_t {
#ifdef SINKSTREAM_HAVE_CUDA
        return cuda::resident_weight_bytes(model);
#else
        (void)model;
        return 0;
#endif
      },
      nb::arg("model"),
      "Device memory the CUDA sessions of `model` hold for its weights now (0 before the first CUDA pass and\n"
      "without CUDA; on an integrated GPU only the float vectors: the file's pages are mapped, not copied).");
  m.def(
      "cuda_upload_plan",
      [](const std::string& path) {
        std::shared_ptr<GgufFile> file;
        {
          nb::gil_scoped_release release;
          file = GgufFile::open(path);
        }
        nb::list out;
        for (const GgufTensorInfo& t : file->tensors()) {
          nb::dict d;
          d["name"] = t.name;
          d["type"] = std::string(ggml_type_name(t.type));
          d["bytes"] = t.n_bytes;
          d["matrix"] = t.dims.size() == 2;
          d["supported"] = t.dims.size() != 2 || cuda::decodable(t.type);
          out.append(d);
        }
        return out;
      },
      nb::arg("path"),
      "What a CUDA session uploads of a GGUF file, per tensor: name, type, bytes, matrix (2-D: read as raw\n"
      "blocks on the device), supported (the CUDA kernels read its type; vectors are always float32).");

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
