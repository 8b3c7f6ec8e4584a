// matmul and get_row (ops.h) on the CPU: kernel choice, activation quantization, threading, tiling.
//
// Work split: output rows are divided into contiguous ranges, one ThreadPool task each, so every
// thread streams its own part of W once. Inside a range, rows are taken in groups small enough to
// stay in L2 (kTileBytes of weights), and for each group the tokens are walked kTokenTile at a time:
// a weight row is read from memory once per call and from cache for every further token.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "ops/cpu/vec_dot.h"
#include "ops/ops.h"
#include "quant/dequantize.h"

namespace sinkstream {

namespace {

constexpr int64_t kTileBytes = 64 * 1024;  // weight bytes per row group (well inside a 512 KB+ L2)
constexpr int64_t kMinRowsPerTask = 16;    // below this, a task costs more to hand out than to run

void check_weight(const WeightMatrix& w) {
  const GgmlTypeInfo& info = ggml_type_info(w.type);
  SS_CHECK_ARG(w.data != nullptr, "weight ", w.name, " has no data");
  SS_CHECK_ARG(w.rows > 0 && w.cols > 0, "weight ", w.name, " has shape ", w.rows, " x ", w.cols);
  SS_CHECK_ARG(w.cols % info.block_size == 0, "weight ", w.name, ": ", w.cols, " columns is not a multiple of the ",
               info.name, " block size ", info.block_size);
  SS_CHECK_ARG(w.row_bytes == ggml_row_bytes(info, w.cols), "weight ", w.name, ": row_bytes ", w.row_bytes,
               " but ", info.name, " x ", w.cols, " needs ", ggml_row_bytes(info, w.cols));
}

// Scratch for the quantized activations, 64-byte aligned (rows are multiples of 64 bytes, so every
// row starts on a cache line), reused across calls; each thread that calls matmul gets its own.
uint8_t* activation_scratch(int64_t bytes) {
  thread_local std::vector<uint8_t> scratch;
  if ((int64_t)scratch.size() < bytes + 64) scratch.resize((size_t)(bytes + 64));
  const uintptr_t address = reinterpret_cast<uintptr_t>(scratch.data());
  return scratch.data() + ((64 - address % 64) % 64);
}

}  // namespace

ActFormat activation_format(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16: return ActFormat::F32;
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::IQ4_NL: return ActFormat::Q8A;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K: return ActFormat::Q8K;
    default:
      throw ArgumentError(cat("matmul does not support weight type ", ggml_type_name(weight_type)));
  }
}

int64_t activation_row_bytes(ActFormat format, int64_t cols) {
  switch (format) {
    case ActFormat::F32: return cols * (int64_t)sizeof(float);
    case ActFormat::Q8A: {
      const int64_t nb = cols / kQK;
      return (q8a_scales_offset(nb) + nb * (int64_t)sizeof(Q8AScale) + 63) / 64 * 64;
    }
    case ActFormat::Q8K: return cols / kQKK * (int64_t)sizeof(BlockQ8KA);
  }
  return 0;
}

DotTileFn select_dot_tile(GgmlType type, Isa isa, Isa* chosen) {
  DotTileFn fn = nullptr;
  Isa from = Isa::Scalar;
  if (isa == Isa::Avx512 && (fn = avx512_dot_tile(type)) != nullptr) from = Isa::Avx512;
  if (fn == nullptr && (isa == Isa::Avx512 || isa == Isa::Avx2) && (fn = avx2_dot_tile(type)) != nullptr)
    from = Isa::Avx2;
  if (fn == nullptr && isa == Isa::Neon && (fn = neon_dot_tile(type)) != nullptr) from = Isa::Neon;
  if (fn == nullptr) fn = scalar_dot_tile(type), from = Isa::Scalar;
  SS_CHECK_ARG(fn != nullptr, "matmul does not support weight type ", ggml_type_name(type));
  if (chosen != nullptr) *chosen = from;
  return fn;
}

void matmul_at_isa(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool& pool, Isa isa) {
  check_weight(w);
  SS_CHECK_ARG(n >= 0, "matmul with ", w.name, ": n = ", n, " tokens");
  if (n == 0) return;
  SS_CHECK_ARG(x != nullptr && y != nullptr, "matmul with ", w.name, ": null input or output");
  SS_CHECK_ARG(isa_supported(isa), "ISA ", isa_name(isa), " is not available on this CPU (best: ",
               isa_name(best_isa()), ")");
  const ActFormat format = activation_format(w.type);
  const DotTileFn dot = select_dot_tile(w.type, isa);
  const int64_t n_blocks = w.cols / ggml_type_info(w.type).block_size;

  // Activations: float rows are used in place; quantized rows are made once for all output rows.
  const uint8_t* act = reinterpret_cast<const uint8_t*>(x);
  const int64_t act_stride = activation_row_bytes(format, w.cols);
  if (format != ActFormat::F32) {
    uint8_t* q = activation_scratch(n * act_stride);
    for (int64_t t = 0; t < n; ++t) quantize_activations(format, x + t * w.cols, w.cols, q + t * act_stride);
    act = q;
  }

  const int64_t rows_per_group = std::max<int64_t>(1, kTileBytes / w.row_bytes);
  pool.parallel_for(
      w.rows,
      [&](int64_t row_begin, int64_t row_end, int) {
        for (int64_t g = row_begin; g < row_end; g += rows_per_group) {
          const int nr = (int)std::min(row_end - g, rows_per_group);
          for (int64_t t = 0; t < n; t += kTokenTile) {
            const int nt = (int)std::min<int64_t>(kTokenTile, n - t);
            dot(n_blocks, w.data + g * w.row_bytes, w.row_bytes, nr, act + t * act_stride, act_stride, nt,
                y + t * w.rows + g, w.rows);
          }
        }
      },
      kMinRowsPerTask);
}

void matmul(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  matmul_at_isa(w, x, n, y, pool, active_isa());
}

void get_row(const WeightMatrix& w, int64_t row, float* out) {
  check_weight(w);
  SS_CHECK_ARG(row >= 0 && row < w.rows, "row ", row, " of ", w.name, " is out of range [0, ", w.rows, ")");
  dequantize_row(w.type, w.data + row * w.row_bytes, out, w.cols);
}

}  // namespace sinkstream
