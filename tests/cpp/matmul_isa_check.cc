// Standalone check that every SIMD level's matmul kernels agree with the scalar reference kernels,
// for builds where the Python tests cannot run (e.g. the NEON kernels, cross-compiled for AArch64 and
// run under qemu; tests/test_matmul.py::test_neon_kernels_under_qemu does that when the tools exist).
//
//   usage: matmul_isa_check   -> prints one line per (type, level, shape), exits 1 on any mismatch
//
// Tolerance: identical quantized activations and integer products, so only float summation order
// differs: |simd - scalar| <= 1e-5 * sum_i |w_i x_i| (w dequantized with dequantize_row).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "ops/cpu/cpu_features.h"
#include "ops/cpu/packed_weights.h"
#include "ops/cpu/vec_dot.h"
#include "quant/dequantize.h"
#include "quant/quant_types.h"

using namespace sinkstream;

namespace {

// Offsets of the half scales in a block, set to sane values so random blocks have finite weights.
std::vector<int> scale_offsets(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: case GgmlType::Q5_0: case GgmlType::Q8_0: case GgmlType::IQ4_NL: return {0};
    case GgmlType::Q4_1: case GgmlType::Q5_1: case GgmlType::Q4_K: case GgmlType::Q5_K: return {0, 2};
    case GgmlType::Q2_K: return {80, 82};
    case GgmlType::Q3_K: return {108};
    case GgmlType::Q6_K: return {208};
    default: return {};
  }
}

std::vector<uint8_t> random_weight(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const GgmlTypeInfo& info = ggml_type_info(t);
  const int64_t n_blocks = rows * cols / info.block_size;
  std::vector<uint8_t> w((size_t)(n_blocks * info.block_bytes));
  std::uniform_real_distribution<float> scale(1e-3f, 2e-2f), value(-1.0f, 1.0f);
  if (t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16) {
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float v = value(rng);
      if (t == GgmlType::F32) std::memcpy(&w[4 * i], &v, 4);
      const uint16_t h = t == GgmlType::F16 ? f32_to_fp16(v) : (uint16_t)(f32_to_bits(v) >> 16);
      if (t != GgmlType::F32) std::memcpy(&w[2 * i], &h, 2);
    }
    return w;
  }
  for (auto& byte : w) byte = (uint8_t)rng();
  if (t == GgmlType::MXFP4)  // E8M0 exponents 118 .. 126: scales 2^-10 .. 2^-2 (halved), finite weights
    for (int64_t b = 0; b < n_blocks; ++b) w[(size_t)(b * info.block_bytes)] = (uint8_t)(118 + rng() % 9);
  for (int64_t b = 0; b < n_blocks; ++b)
    for (int off : scale_offsets(t)) {
      const uint16_t h = f32_to_fp16(scale(rng));
      std::memcpy(&w[(size_t)(b * info.block_bytes + off)], &h, 2);
    }
  return w;
}

// FNV-1a over the bits of the floats.
uint64_t bits_digest(const std::vector<float>& values) {
  uint64_t h = 1469598103934665603ull;
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    for (int i = 0; i < 4; ++i) h = (h ^ ((bits >> (8 * i)) & 0xff)) * 1099511628211ull;
  }
  return h;
}

}  // namespace

int main() {
  const GgmlType types[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1,
                            GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::Q2_K,
                            GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::MXFP4};
  std::vector<Isa> levels;
  for (Isa isa : {Isa::Neon, Isa::Dotprod, Isa::I8mm, Isa::Avx2, Isa::Avx512})
    if (isa_supported(isa)) levels.push_back(isa);
  std::printf("best ISA: %s\n", isa_name(best_isa()));
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal;
  ThreadPool pool(2);
  int failures = 0;
  for (GgmlType t : types) {
    const GgmlTypeInfo& info = ggml_type_info(t);
    for (int64_t blocks : {1, 2, 3, 7, 11}) {
      // 13 rows: one partial 16-row group of packed weights; 37: two whole groups and a partial one.
      const int64_t cols = blocks * (info.block_size == 1 ? 37 : info.block_size), rows = blocks == 7 ? 37 : 13;
      for (int64_t n : {1, 3, 6}) {  // token tiles of 1, 3, and 4 + 2
        const std::vector<uint8_t> wbytes = random_weight(t, rows, cols, rng);
        WeightMatrix w;
        w.name = "check";
        w.type = t;
        w.data = wbytes.data();
        w.rows = rows;
        w.cols = cols;
        w.row_bytes = ggml_row_bytes(info, cols);
        std::vector<float> x((size_t)(n * cols)), wf((size_t)(rows * cols));
        for (auto& v : x) v = normal(rng);
        for (int64_t r = 0; r < rows; ++r) dequantize_row(t, wbytes.data() + r * w.row_bytes, &wf[r * cols], cols);
        std::vector<float> ref((size_t)(n * rows)), got((size_t)(n * rows));
        matmul_at_isa(w, x.data(), n, ref.data(), pool, Isa::Scalar);
        // Each level's per-row kernels, then its packed ones where it has them for this type
        // (packed_weights.h: the weights regrouped for that level).
        const auto check = [&](Isa isa, bool packed) {
          WeightMatrix wl = w;
          PackedWeightStore store;
          if (packed) store.pack({&wl}, isa);
          matmul_at_isa(wl, x.data(), n, got.data(), pool, isa);
          double worst = 0.0;
          bool ok = true;
          for (int64_t t_ = 0; t_ < n; ++t_)
            for (int64_t r = 0; r < rows; ++r) {
              double absdot = 0.0;
              for (int64_t c = 0; c < cols; ++c) absdot += std::fabs((double)wf[r * cols + c] * x[t_ * cols + c]);
              const double diff = std::fabs((double)got[t_ * rows + r] - ref[t_ * rows + r]);
              worst = std::max(worst, diff / (absdot + 1e-30));
              if (!(diff <= 1e-5 * absdot + 1e-30)) ok = false;
            }
          Isa from;
          select_dot_tile(t, isa, &from);
          const std::string kernel = packed ? std::string(isa_name(isa)) + "+packed" : isa_name(from);
          std::printf("%-6s %-6s (kernel %-6s) cols=%-5lld n=%lld  max diff/sum|wx| = %.3g %s", info.name,
                      isa_name(isa), kernel.c_str(), (long long)cols, (long long)n, worst, ok ? "ok" : "MISMATCH");
          // The packed kernels of every level sum the same integers and then the same floats in the
          // same order (packed_weights.h): a digest of the result's bits, to compare across machines.
          if (packed) std::printf("  packed bits %016llx", (unsigned long long)bits_digest(got));
          std::printf("\n");
          failures += ok ? 0 : 1;
        };
        for (Isa isa : levels) {
          check(isa, false);
          if (packed_tile_kernel(t, isa) != nullptr) check(isa, true);
        }
      }
    }
  }
  std::printf("%s\n", failures == 0 ? "all levels match scalar" : "MISMATCHES");
  return failures == 0 ? 0 : 1;
}
