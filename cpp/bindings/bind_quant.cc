// Python access to the quant kernels, for tests and benchmarks: dequantize raw blocks, fp16
// conversions, matmul on raw weight bytes at a chosen ISA level, CPU features.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "bindings/bindings.h"
#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "ops/cpu/activations.h"
#include "ops/cpu/cpu_features.h"
#include "ops/cpu/packed_weights.h"
#include "ops/cpu/vec_dot.h"
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
using F32Matrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// A WeightMatrix over raw bytes held by Python, with the sizes checked.
WeightMatrix weight_from_bytes(uint32_t type_id, const nb::bytes& data, int64_t rows, int64_t cols) {
  const GgmlTypeInfo* info = ggml_type_info(type_id);
  SS_CHECK_ARG(info != nullptr, "unknown ggml type id ", type_id);
  SS_CHECK_ARG(rows > 0 && cols > 0 && cols % info->block_size == 0, "weight shape ", rows, " x ", cols,
               " does not fit ", info->name, " blocks of ", info->block_size);
  WeightMatrix w;
  w.name = "test_weight";
  w.type = info->type;
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = ggml_row_bytes(*info, cols);
  SS_CHECK_ARG((int64_t)data.size() == rows * w.row_bytes, "weight has ", data.size(), " bytes, ", rows,
               " rows of ", info->name, " x ", cols, " need ", rows * w.row_bytes);
  w.data = reinterpret_cast<const uint8_t*>(data.c_str());
  return w;
}

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

  m.def(
      "matmul_test",
      [](uint32_t type_id, nb::bytes weight, int64_t rows, int64_t cols, F32Matrix x, const std::string& isa,
         int n_threads, bool packed) {
        WeightMatrix w = weight_from_bytes(type_id, weight, rows, cols);
        SS_CHECK_ARG((int64_t)x.shape(1) == cols, "x has ", x.shape(1), " columns, the weight has ", cols);
        const Isa level = parse_isa(isa);
        PackedWeightStore store;
        if (packed) store.pack({&w}, level);
        const int64_t n = (int64_t)x.shape(0);
        std::vector<float> y((size_t)(n * rows));
        {
          nb::gil_scoped_release release;
          ThreadPool pool(n_threads);
          matmul_at_isa(w, x.data(), n, y.data(), pool, level);
        }
        auto owned = std::make_unique<std::vector<float>>(std::move(y));
        std::vector<float>* values = owned.release();
        nb::capsule owner(values, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
        size_t shape[2] = {(size_t)n, (size_t)rows};
        return nb::ndarray<nb::numpy, float>(values->data(), 2, shape, owner);
      },
      nb::arg("type_id"), nb::arg("weight"), nb::arg("rows"), nb::arg("cols"), nb::arg("x"), nb::arg("isa"),
      nb::arg("n_threads") = 1, nb::arg("packed") = true,
      "Test hook: Y (n, rows) = X (n, cols) . W^T for raw GGML weight bytes, kernels of the given ISA level\n"
      "('scalar', 'avx2', 'avx512', 'neon', 'dotprod', 'i8mm'; falls back level by level where a kernel is missing).\n"
      "packed: regroup the rows for the level's interleaved-row kernels where it has them, as a Model does.");

  m.def(
      "matmul_shared_input_test",
      [](const std::vector<std::tuple<uint32_t, nb::bytes, int64_t, int64_t>>& weights, F32Matrix x,
         const std::string& isa, int n_threads, bool packed) {
        SS_CHECK_ARG(!weights.empty() && (int)weights.size() <= kMaxSharedInput, "weights: 1 to ", kMaxSharedInput,
                     " (type_id, bytes, rows, cols) tuples, got ", weights.size());
        std::vector<WeightMatrix> ws;
        for (const auto& [type_id, data, rows, cols] : weights) ws.push_back(weight_from_bytes(type_id, data, rows, cols));
        const Isa level = parse_isa(isa);
        PackedWeightStore store;
        if (packed) {
          std::vector<WeightMatrix*> to_pack;
          for (WeightMatrix& w : ws) to_pack.push_back(&w);
          store.pack(to_pack, level);
        }
        const int64_t n = (int64_t)x.shape(0);
        SS_CHECK_ARG((int64_t)x.shape(1) == ws[0].cols, "x has ", x.shape(1), " columns, the weights ", ws[0].cols);
        std::vector<std::vector<float>> ys;
        std::vector<const WeightMatrix*> w_ptrs;
        std::vector<float*> y_ptrs;
        for (const WeightMatrix& w : ws) ys.emplace_back((size_t)(n * w.rows));
        for (size_t i = 0; i < ws.size(); ++i) w_ptrs.push_back(&ws[i]), y_ptrs.push_back(ys[i].data());
        {
          nb::gil_scoped_release release;
          ThreadPool pool(n_threads);
          matmul_shared_input_at_isa(w_ptrs.data(), y_ptrs.data(), (int)ws.size(), x.data(), n, pool, level);
        }
        nb::list out;
        for (size_t i = 0; i < ws.size(); ++i) {
          auto* values = new std::vector<float>(std::move(ys[i]));
          nb::capsule owner(values, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
          size_t shape[2] = {(size_t)n, (size_t)ws[i].rows};
          out.append(nb::ndarray<nb::numpy, float>(values->data(), 2, shape, owner));
        }
        return out;
      },
      nb::arg("weights"), nb::arg("x"), nb::arg("isa"), nb::arg("n_threads") = 1, nb::arg("packed") = true,
      "Test hook: matmul_shared_input over (type_id, bytes, rows, cols) weights of one input X (n, cols);\n"
      "returns one (n, rows) array per weight. packed: as in matmul_test.");

  m.def(
      "matmul_bench",
      [](uint32_t type_id, nb::bytes weight, int64_t rows, int64_t cols, int64_t n, const std::string& isa,
         int n_threads, int iterations, bool packed) {
        WeightMatrix w = weight_from_bytes(type_id, weight, rows, cols);
        SS_CHECK_ARG(n > 0 && iterations > 0, "n = ", n, " and iterations = ", iterations, " must be positive");
        const Isa level = parse_isa(isa);
        PackedWeightStore store;
        if (packed) store.pack({&w}, level);
        std::vector<float> x((size_t)(n * cols)), y((size_t)(n * rows));
        for (size_t i = 0; i < x.size(); ++i) x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        nb::gil_scoped_release release;
        ThreadPool pool(n_threads);
        matmul_at_isa(w, x.data(), n, y.data(), pool, level);  // warm-up
        const auto start = std::chrono::steady_clock::now();
        for (int it = 0; it < iterations; ++it) matmul_at_isa(w, x.data(), n, y.data(), pool, level);
        const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
        return elapsed.count() / iterations;
      },
      nb::arg("type_id"), nb::arg("weight"), nb::arg("rows"), nb::arg("cols"), nb::arg("n"), nb::arg("isa"),
      nb::arg("n_threads"), nb::arg("iterations"), nb::arg("packed") = true,
      "Benchmark hook: seconds per matmul call (after one warm-up call) with a persistent thread pool;\n"
      "packed: as in matmul_test.");

  m.def(
      "matmul_bench_sequence",
      [](const std::vector<std::tuple<uint32_t, nb::bytes, int64_t, int64_t>>& weights, int64_t n,
         const std::string& isa, int n_threads, int iterations, bool packed) {
        std::vector<WeightMatrix> ws;
        int64_t max_rows = 1, max_cols = 1;
        for (const auto& [type_id, data, rows, cols] : weights) {
          ws.push_back(weight_from_bytes(type_id, data, rows, cols));
          max_rows = std::max(max_rows, rows);
          max_cols = std::max(max_cols, cols);
        }
        SS_CHECK_ARG(n > 0 && iterations > 0, "n = ", n, " and iterations = ", iterations, " must be positive");
        const Isa level = parse_isa(isa);
        PackedWeightStore store;
        if (packed) {
          std::vector<WeightMatrix*> to_pack;
          for (WeightMatrix& w : ws) to_pack.push_back(&w);
          store.pack(to_pack, level);
        }
        std::vector<float> x((size_t)(n * max_cols)), y((size_t)(n * max_rows));
        for (size_t i = 0; i < x.size(); ++i) x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        std::vector<double> seconds(ws.size(), 0.0);
        nb::gil_scoped_release release;
        ThreadPool pool(n_threads);
        for (int it = -1; it < iterations; ++it) {  // iteration -1 warms up
          for (size_t k = 0; k < ws.size(); ++k) {
            const auto start = std::chrono::steady_clock::now();
            matmul_at_isa(ws[k], x.data(), n, y.data(), pool, level);
            const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
            if (it >= 0) seconds[k] += elapsed.count() / iterations;
          }
        }
        return seconds;
      },
      nb::arg("weights"), nb::arg("n"), nb::arg("isa"), nb::arg("n_threads"), nb::arg("iterations"),
      nb::arg("packed") = true,
      "Benchmark hook: runs matmuls over a list of (type_id, bytes, rows, cols) weights in order, like a\n"
      "forward pass (weights stream from memory when they exceed the caches); returns the mean seconds\n"
      "per call of each entry after one warm-up pass.");

  m.def(
      "quantize_activations_test",
      [](uint32_t weight_type_id, F32Array x, const std::string& isa) {
        const GgmlTypeInfo* info = ggml_type_info(weight_type_id);
        SS_CHECK_ARG(info != nullptr, "unknown ggml type id ", weight_type_id);
        const ActFormat format = activation_format(info->type);
        const int64_t cols = (int64_t)x.shape(0);
        const int64_t block = format == ActFormat::Q8K ? kQKK : format == ActFormat::Q8A ? kQK : 1;
        SS_CHECK_ARG(cols % block == 0, "x has ", cols, " values, not a multiple of ", block);
        const Isa level = parse_isa(isa);
        SS_CHECK_ARG(isa_supported(level), "ISA ", isa, " is not available on this CPU");
        std::vector<uint8_t> out((size_t)activation_row_bytes(format, cols), 0xAB);
        select_quantize(level)(format, x.data(), cols, out.data());
        return nb::bytes(reinterpret_cast<const char*>(out.data()), out.size());
      },
      nb::arg("weight_type_id"), nb::arg("x"), nb::arg("isa"),
      "Test hook: the activation row matmul makes for weights of this type (raw bytes, vec_dot.h layout).");

  m.def(
      "matmul_kernel_isa",
      [](uint32_t type_id, const std::string& isa, bool packed) {
        const GgmlTypeInfo* info = ggml_type_info(type_id);
        SS_CHECK_ARG(info != nullptr, "unknown ggml type id ", type_id);
        const Isa level = parse_isa(isa);
        if (packed && packed_tile_kernel(info->type, level) != nullptr) return std::string(isa_name(level)) + "+packed";
        Isa chosen;
        select_dot_tile(info->type, level, &chosen);
        return std::string(isa_name(chosen));
      },
      nb::arg("type_id"), nb::arg("isa"), nb::arg("packed") = true,
      "The kernel that serves this weight type at level `isa`: its ISA level, and '+packed' when a Model's\n"
      "matrices of the type are regrouped for that level's interleaved-row kernels (packed: whether to\n"
      "consider those; a weight that is not packed uses the per-row kernels).");

  m.def(
      "cpu_features",
      []() {
        const CpuFeatures& f = cpu_features();
        nb::dict d;
        d["avx2"] = f.avx2;
        d["fma"] = f.fma;
        d["f16c"] = f.f16c;
        d["avx512f"] = f.avx512f;
        d["avx512bw"] = f.avx512bw;
        d["avx512vl"] = f.avx512vl;
        d["avx512dq"] = f.avx512dq;
        d["avx512vnni"] = f.avx512vnni;
        d["os_avx"] = f.os_avx;
        d["os_avx512"] = f.os_avx512;
        d["neon"] = f.neon;
        d["neon_dotprod"] = f.neon_dotprod;
        d["neon_i8mm"] = f.neon_i8mm;
        d["best_isa"] = isa_name(best_isa());
        nb::list levels;  // every level this CPU runs, lowest first (SINKSTREAM_ISA may pick any)
        for (Isa isa : {Isa::Scalar, Isa::Neon, Isa::Dotprod, Isa::I8mm, Isa::Avx2, Isa::Avx512})
          if (isa_supported(isa)) levels.append(isa_name(isa));
        d["levels"] = levels;
        d["active_isa"] = isa_name(active_isa());
        return d;
      },
      "CPU features seen by the kernels, the best ISA level, the levels this CPU runs (lowest first) and the "
      "active one (after SINKSTREAM_ISA).");

  m.def(
      "pack_roundtrip_test",
      [](uint32_t type_id, nb::bytes weight, int64_t rows, int64_t cols, const std::string& isa) {
        WeightMatrix w = weight_from_bytes(type_id, weight, rows, cols);
        const Isa level = parse_isa(isa);  // any level: packing does not run its kernels
        std::vector<uint8_t> packed((size_t)packed_bytes(w)), rows_back((size_t)(rows * w.row_bytes));
        pack_weight(w, level, packed.data());
        w.packed = packed.data();
        w.packed_isa = level;
        for (int64_t r = 0; r < rows; ++r) unpack_row(w, r, rows_back.data() + r * w.row_bytes);
        return nb::bytes(reinterpret_cast<const char*>(rows_back.data()), rows_back.size());
      },
      nb::arg("type_id"), nb::arg("weight"), nb::arg("rows"), nb::arg("cols"), nb::arg("isa"),
      "Test hook: packs raw GGML weight bytes into 16-row groups (packed_weights.h) laid out for the\n"
      "kernels of `isa` and unpacks every row again; returns the rows' bytes (equal to the input when the\n"
      "layout loses nothing).");

  m.def(
      "glu_test",
      [](const std::string& activation, F32Array gate, F32Array up, const std::string& isa) {
        SS_CHECK_ARG(gate.shape(0) == up.shape(0), "gate has ", gate.shape(0), " values, up ", up.shape(0));
        FfnActivation act;
        if (activation == "swiglu")
          act = FfnActivation::kSwiGlu;
        else if (activation == "geglu")
          act = FfnActivation::kGeGlu;
        else if (activation == "swiglu_oai")
          act = FfnActivation::kSwiGluOai;
        else
          throw ArgumentError(cat("activation must be 'swiglu', 'geglu' or 'swiglu_oai', got '", activation, "'"));
        const Isa level = parse_isa(isa);
        SS_CHECK_ARG(isa_supported(level), "ISA ", isa, " is not available on this CPU");
        std::vector<float> out((size_t)gate.shape(0));
        select_glu(act, level)(gate.data(), up.data(), (int64_t)out.size(), out.data());
        return vector_to_numpy(std::move(out));
      },
      nb::arg("activation"), nb::arg("gate"), nb::arg("up"), nb::arg("isa"),
      "Test hook: act(gate) * up with the function CpuBackend uses at ISA level `isa` (activations.h).");
}

}  // namespace sinkstream::bindings
