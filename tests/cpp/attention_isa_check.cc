// Standalone check that every SIMD level's attention kernels agree with a double-precision
// reference and with the scalar kernels, for builds where the Python tests cannot run (the NEON
// kernels, cross-compiled for AArch64 and run under qemu: tests/test_attention.py does that when
// the tools exist; on x86 the same test runs natively).
//
//   usage: attention_isa_check   -> one line per (shape, cache type, level), exits 1 on any mismatch
//
// The reference follows ops.h attend(): softmax(scale * [q_sink . K_sinks, q_window . K_window]) . V,
// with and without learned sink logits (gpt-oss: a softmax column per head with no value), with keys, values, queries and weights rounded to half precision for an f16 cache. Tolerance
// (see tests/test_attention.py): 1e-3 * max|v| with an f16 cache (a weight next to a rounding
// boundary may round the other way), 1e-5 * max|v| with f32.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "core/fp16.h"
#include "kv/sink_cache.h"
#include "ops/cpu/attention_kernels.h"
#include "ops/cpu/cpu_features.h"
#include "ops/ops.h"

using namespace sinkstream;

namespace {

struct Shape {
  int64_t head_dim, n_head, n_head_kv, n_tokens, n_sink, window;
};

double to_half(double v) { return fp16_to_f32(f32_to_fp16((float)v)); }

std::vector<double> reference(const std::vector<float>& keys, const std::vector<float>& values,
                              const std::vector<float>& q_sink, const std::vector<float>& q_window, const Shape& s,
                              bool half, const std::vector<float>* sink_logits) {
  const auto round = [&](double v) { return half ? to_half(v) : v; };
  const int64_t row = s.n_head_kv * s.head_dim, group = s.n_head / s.n_head_kv, t = s.n_tokens - 1;
  const int64_t sink_end = std::min(s.n_sink, s.n_tokens), window_begin = std::max(sink_end, t + 1 - s.window);
  std::vector<int64_t> members;
  for (int64_t j = 0; j < sink_end; ++j) members.push_back(j);
  for (int64_t j = window_begin; j <= t; ++j) members.push_back(j);
  std::vector<double> out((size_t)(s.n_head * s.head_dim), 0.0);
  for (int64_t h = 0; h < s.n_head; ++h) {
    const int64_t kv = h / group;
    std::vector<double> w(members.size());
    double max_score = -INFINITY, sum = 0.0;
    for (size_t m = 0; m < members.size(); ++m) {
      const float* q = (members[m] < sink_end ? q_sink : q_window).data() + h * s.head_dim;
      double dot = 0.0;
      for (int64_t i = 0; i < s.head_dim; ++i)
        dot += round(q[i]) * round(keys[(size_t)(members[m] * row + kv * s.head_dim + i)]);
      w[m] = dot / std::sqrt((double)s.head_dim);
      max_score = std::max(max_score, w[m]);
    }
    if (sink_logits) max_score = std::max(max_score, (double)(*sink_logits)[(size_t)h]);
    for (double& x : w) sum += (x = std::exp(x - max_score));
    if (sink_logits) sum += std::exp((double)(*sink_logits)[(size_t)h] - max_score);
    for (size_t m = 0; m < members.size(); ++m)
      for (int64_t i = 0; i < s.head_dim; ++i)
        out[(size_t)(h * s.head_dim + i)] +=
            round(w[m] / sum) * round(values[(size_t)(members[m] * row + kv * s.head_dim + i)]);
  }
  return out;
}

std::vector<float> engine(const std::vector<float>& keys, const std::vector<float>& values,
                          const std::vector<float>& q_sink, const std::vector<float>& q_window, const Shape& s,
                          KvType type, Isa isa, const std::vector<float>* sink_logits) {
  SinkCache cache(1, s.n_head_kv, s.head_dim, s.n_sink, s.window, 1, type);
  const int64_t row = s.n_head_kv * s.head_dim, group = s.n_head / s.n_head_kv;
  for (int64_t t = 0; t < s.n_tokens; ++t) cache.store(0, (uint64_t)t, &keys[(size_t)(t * row)], &values[(size_t)(t * row)]);
  const uint64_t t = (uint64_t)(s.n_tokens - 1);
  std::vector<float> scores((size_t)(group * attention_set_size(cache, 0, t))), out((size_t)(s.n_head * s.head_dim));
  for (int64_t kv = 0; kv < s.n_head_kv; ++kv) {
    const size_t first = (size_t)(kv * group * s.head_dim);
    ScoreBias bias;
    if (sink_logits) bias.sink_logits = sink_logits->data() + kv * group;
    attend_at_isa(cache, 0, kv, group, t, &q_sink[first], &q_window[first], 1.0f / std::sqrt((float)s.head_dim),
                  bias, scores.data(), &out[first], isa);
  }
  return out;
}

}  // namespace

int main() {
  // The shapes of tests/test_attention.py: 16 / 8 / 4-multiples of head_dim, groups 1 to 6, partial
  // row blocks, several 256-row pieces, a wrapped ring.
  const Shape shapes[] = {{64, 9, 3, 700, 4, 600}, {64, 8, 2, 5, 4, 16}, {80, 5, 1, 301, 2, 290},
                          {16, 4, 2, 130, 4, 64},  {24, 6, 1, 263, 0, 263}, {12, 2, 2, 40, 3, 20},
                          {6, 2, 1, 33, 1, 30},    {256, 4, 1, 560, 4, 512}};
  std::vector<Isa> levels;
  for (Isa isa : {Isa::Neon, Isa::Dotprod, Isa::I8mm, Isa::Avx2, Isa::Avx512})
    if (isa_supported(isa)) levels.push_back(isa);
  std::printf("best ISA: %s\n", isa_name(best_isa()));
  std::mt19937 rng(99);
  std::normal_distribution<float> normal;
  int failures = 0;
  for (const Shape& s : shapes) {
    const int64_t row = s.n_head_kv * s.head_dim;
    std::vector<float> keys((size_t)(s.n_tokens * row)), values(keys.size());
    std::vector<float> q_sink((size_t)(s.n_head * s.head_dim)), q_window(q_sink.size());
    for (auto* v : {&keys, &values}) for (float& x : *v) x = normal(rng);
    for (auto* v : {&q_sink, &q_window}) for (float& x : *v) x = 1.5f * normal(rng);
    double max_v = 0.0;
    for (float v : values) max_v = std::max(max_v, (double)std::fabs(v));
    std::vector<float> sink_logits((size_t)s.n_head);  // from below every score to above them all
    for (int64_t h = 0; h < s.n_head; ++h) sink_logits[(size_t)h] = -20.0f + 50.0f * (float)h / (float)s.n_head;
    for (int variant = 0; variant < 4; ++variant) {
      const KvType type = variant % 2 == 0 ? KvType::kF16 : KvType::kF32;
      const std::vector<float>* sinks = variant >= 2 ? &sink_logits : nullptr;
      const bool half = type == KvType::kF16;
      const double tolerance = (half ? 1e-3 : 1e-5) * max_v;
      const std::vector<double> ref = reference(keys, values, q_sink, q_window, s, half, sinks);
      const std::vector<float> scalar = engine(keys, values, q_sink, q_window, s, type, Isa::Scalar, sinks);
      std::vector<Isa> all = {Isa::Scalar};
      all.insert(all.end(), levels.begin(), levels.end());
      for (Isa isa : all) {
        const std::vector<float> got =
            isa == Isa::Scalar ? scalar : engine(keys, values, q_sink, q_window, s, type, isa, sinks);
        double to_ref = 0.0, to_scalar = 0.0;
        for (size_t i = 0; i < got.size(); ++i) {
          to_ref = std::max(to_ref, std::fabs(got[i] - ref[i]));
          to_scalar = std::max(to_scalar, (double)std::fabs(got[i] - scalar[i]));
        }
        const bool ok = to_ref < tolerance && to_scalar < tolerance;
        std::printf("hd=%-3lld heads=%lld/%lld rows=%-4lld %s%s %-6s max |diff| reference %.2e scalar %.2e %s\n",
                    (long long)s.head_dim, (long long)s.n_head, (long long)s.n_head_kv, (long long)s.n_tokens,
                    half ? "f16" : "f32", sinks ? " sinks" : "", isa_name(isa), to_ref, to_scalar,
                    ok ? "ok" : "MISMATCH");
        failures += ok ? 0 : 1;
      }
    }
  }
  std::printf("%s\n", failures == 0 ? "all attention levels match" : "MISMATCHES");
  return failures == 0 ? 0 : 1;
}
