// Python access to the attention kernels, for tests: one query's attention over a sink cache
// filled from arrays, at a chosen ISA level (tests compare the levels with a NumPy reference).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "core/error.h"
#include "core/fp16.h"
#include "kv/sink_cache.h"
#include "ops/cpu/attention_kernels.h"
#include "ops/cpu/cpu_features.h"
#include "ops/ops.h"
#ifdef SINKSTREAM_HAVE_CUDA
#include "ops/cuda/cuda_backend.h"
#endif

namespace nb = nanobind;

namespace sinkstream::bindings {

namespace {
using F32Matrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using F32Vector = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
}  // namespace

void bind_attention(nb::module_& m) {
  m.def(
      "half_row_test",
      [](F32Vector values, const std::string& isa) {
        const Isa level = parse_isa(isa);
        SS_CHECK_ARG(isa_supported(level), "ISA ", isa, " is not available on this CPU");
        const int64_t n = (int64_t)values.shape(0);
        auto* bits = new std::vector<uint16_t>((size_t)n);
        nb::capsule owner(bits, [](void* p) noexcept { delete static_cast<std::vector<uint16_t>*>(p); });
        SinkCache::HalfRowFn convert = half_row_conversion(level);
        if (convert != nullptr)
          convert(values.data(), n, bits->data());
        else
          for (int64_t i = 0; i < n; ++i) (*bits)[(size_t)i] = f32_to_fp16(values.data()[i]);
        size_t shape[1] = {(size_t)n};
        return nb::ndarray<nb::numpy, uint16_t>(bits->data(), 1, shape, owner);
      },
      nb::arg("values"), nb::arg("isa"),
      "Test hook: the half-precision bits the sink cache stores for float32 values at an ISA level.");
  m.def(
      "attend_test",
      [](F32Matrix keys, F32Matrix values, F32Matrix q_sink, F32Matrix q_window, int64_t n_head_kv, int64_t n_sink,
         int64_t window, const std::string& kv_type, const std::string& isa, std::optional<F32Vector> sink_logits) {
        const int64_t n_tokens = (int64_t)keys.shape(0), row = (int64_t)keys.shape(1);
        const int64_t n_head = (int64_t)q_window.shape(0), head_dim = (int64_t)q_window.shape(1);
        SS_CHECK_ARG(n_tokens >= 1, "keys: at least one token");
        SS_CHECK_ARG(n_head_kv >= 1 && n_head % n_head_kv == 0, "n_head_kv ", n_head_kv, " does not divide the ",
                     n_head, " query heads");
        SS_CHECK_ARG(row == n_head_kv * head_dim, "keys have ", row, " columns, expected n_head_kv * head_dim = ",
                     n_head_kv * head_dim);
        SS_CHECK_ARG(values.shape(0) == keys.shape(0) && values.shape(1) == keys.shape(1),
                     "values must have the shape of keys");
        SS_CHECK_ARG(q_sink.shape(0) == q_window.shape(0) && q_sink.shape(1) == q_window.shape(1),
                     "q_sink must have the shape of q_window");
        SS_CHECK_ARG(!sink_logits || (int64_t)sink_logits->shape(0) == n_head, "sink_logits: one per query head (",
                     n_head, ")");
        const bool on_gpu = isa == "cuda";  // the CUDA backend's attention kernel, where built and a GPU is
#ifndef SINKSTREAM_HAVE_CUDA
        if (on_gpu) throw std::runtime_error("isa 'cuda': sinkstream was built without CUDA");
#endif
        SS_CHECK_ARG(!on_gpu || kv_type != "q8_0", "isa 'cuda': the CUDA backend has no q8_0 cache yet");
        const Isa level = on_gpu ? best_isa() : parse_isa(isa);
        SinkCache cache(1, n_head_kv, head_dim, n_sink, window, 1, parse_kv_type(kv_type));
        for (int64_t t = 0; t < n_tokens; ++t) cache.store(0, (uint64_t)t, keys.data() + t * row, values.data() + t * row);
        const int64_t group = n_head / n_head_kv;
        const uint64_t t = (uint64_t)(n_tokens - 1);
        std::vector<float> scores((size_t)(group * attention_set_size(cache, 0, t)));
        std::vector<float> out((size_t)(n_head * head_dim));
        const float scale = 1.0f / std::sqrt((float)head_dim);
#ifdef SINKSTREAM_HAVE_CUDA
        if (on_gpu) {
          nb::gil_scoped_release release;
          cuda::attend_host(cache, 0, t, n_head, q_sink.data(), q_window.data(), scale, nullptr, 0.0f,
                            sink_logits ? sink_logits->data() : nullptr, out.data());
        }
#endif
        for (int64_t kv = 0; kv < n_head_kv && !on_gpu; ++kv) {
          const int64_t first = kv * group * head_dim;
          ScoreBias bias;
          if (sink_logits) bias.sink_logits = sink_logits->data() + kv * group;
          attend_at_isa(cache, 0, kv, group, t, q_sink.data() + first, q_window.data() + first, scale, bias,
                        scores.data(), out.data() + first, level);
        }
        auto* owned = new std::vector<float>(std::move(out));
        nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
        size_t shape[2] = {(size_t)n_head, (size_t)head_dim};
        return nb::ndarray<nb::numpy, float>(owned->data(), 2, shape, owner);
      },
      nb::arg("keys"), nb::arg("values"), nb::arg("q_sink"), nb::arg("q_window"), nb::arg("n_head_kv"),
      nb::arg("n_sink"), nb::arg("window"), nb::arg("kv_type"), nb::arg("isa"), nb::arg("sink_logits") = nb::none(),
      "Test hook: stores keys/values (n_tokens, n_head_kv * head_dim) as tokens 0.. of a one-layer sink\n"
      "cache (n_sink, window), then returns the attention output (n_head, head_dim) of the last token's\n"
      "query (q_sink against the sinks, q_window against the window; scale 1/sqrt(head_dim)), computed\n"
      "with the kernels of the given ISA level ('scalar', 'avx2', 'avx512', 'neon', 'dotprod', 'i8mm'), or\n"
      "'cuda': the CUDA backend's attention kernel (a CUDA build with a GPU; RuntimeError otherwise).\n"
      "sink_logits (n_head): learned sink logits (gpt-oss), one softmax column each with no value.");
}

}  // namespace sinkstream::bindings
