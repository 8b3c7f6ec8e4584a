// matmul and get_row (ops.h) on the CPU: kernel choice, activation quantization, threading, tiling.
//
// Work split: output rows are divided into one contiguous share per thread, each streamed front to
// back (ThreadPool::run_shares), so every thread reads its own part of W once. Inside a piece of a
// share, rows are taken in groups small enough to stay in L2 (kTileBytes of weights), and for each
// group the tokens are walked kTokenTile at a time: a weight row is read from memory once per call
// and from cache for every further token.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "ops/cpu/packed_weights.h"
#include "ops/cpu/vec_dot.h"
#include "ops/ops.h"
#include "quant/dequantize.h"

namespace sinkstream {

namespace {

constexpr int64_t kTileBytes = 64 * 1024;  // weight bytes per row group (well inside a 512 KB+ L2)
// Smallest task worth handing to another thread: about 2 us of work at ~35 GMAC/s, against a dispatch
// cost of about 1 us with spinning workers (far more on a loaded machine). Smaller matmuls, like
// the 192-row K/V projections of a 135M model at decode, run on the calling thread alone.
constexpr int64_t kMinMacsPerTask = 64 * 1024;
// Activation values quantized per task when a chunk's rows are spread over the threads (a few us).
constexpr int64_t kQuantizeMinValuesPerTask = 16 * 1024;

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

// The packed groups (packed_weights.h) whose first row lies in [lo, hi): every group belongs to
// exactly one task however the rows are split, and is never divided. Groups are taken kTileBytes
// at a time, each such tile against all tokens kPackTokenTile at a time (as for unpacked rows).
void matmul_packed_rows(const WeightMatrix& w, PackedTileFn kernel, int64_t n_blocks, int64_t lo, int64_t hi,
                        const uint8_t* act, int64_t act_stride, int64_t n, float* y) {
  const int64_t group_bytes = packed_group_bytes(w);
  const int64_t first = (lo + kPackRows - 1) / kPackRows, end = (hi + kPackRows - 1) / kPackRows;
  const int64_t groups_per_tile = std::max<int64_t>(1, kTileBytes / group_bytes);
  for (int64_t g = first; g < end; g += groups_per_tile) {
    const int ng = (int)std::min(end - g, groups_per_tile);
    for (int64_t t = 0; t < n; t += kPackTokenTile) {
      const int nt = (int)std::min<int64_t>(kPackTokenTile, n - t);
      kernel(n_blocks, w.packed + g * group_bytes, group_bytes, ng, w.rows - g * kPackRows, act + t * act_stride,
             act_stride, nt, y + t * w.rows + g * kPackRows, w.rows);
    }
  }
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
    case GgmlType::IQ4_NL:
    case GgmlType::MXFP4: return ActFormat::Q8A;
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
  if (isa == Isa::I8mm && (fn = i8mm_dot_tile(type)) != nullptr) from = Isa::I8mm;
  if (fn == nullptr && (isa == Isa::I8mm || isa == Isa::Dotprod) && (fn = dotprod_dot_tile(type)) != nullptr)
    from = Isa::Dotprod;
  if (fn == nullptr && is_arm_isa(isa) && (fn = neon_dot_tile(type)) != nullptr) from = Isa::Neon;
  if (fn == nullptr) fn = scalar_dot_tile(type), from = Isa::Scalar;
  SS_CHECK_ARG(fn != nullptr, "matmul does not support weight type ", ggml_type_name(type));
  if (chosen != nullptr) *chosen = from;
  return fn;
}

QuantizeFn select_quantize(Isa isa) {
  QuantizeFn fn = nullptr;
  if (isa == Isa::Avx2 || isa == Isa::Avx512) fn = avx2_quantize_activations();
  return fn != nullptr ? fn : quantize_activations;
}

void matmul_shared_input_at_isa(const WeightMatrix* const* ws, float* const* ys, int count, const float* x, int64_t n,
                                ThreadPool& pool, Isa isa) {
  SS_CHECK_ARG(count >= 1 && count <= kMaxSharedInput, "matmul of ", count, " weights with one input: 1 to ",
               kMaxSharedInput);
  const WeightMatrix& first = *ws[0];
  for (int i = 0; i < count; ++i) check_weight(*ws[i]);
  SS_CHECK_ARG(n >= 0, "matmul with ", first.name, ": n = ", n, " tokens");
  if (n == 0) return;
  SS_CHECK_ARG(x != nullptr, "matmul with ", first.name, ": null input");
  SS_CHECK_ARG(isa_supported(isa), "ISA ", isa_name(isa), " is not available on this CPU (best: ",
               isa_name(best_isa()), ")");
  const ActFormat format = activation_format(first.type);
  bool one_format = true;
  for (int i = 0; i < count; ++i) {
    SS_CHECK_ARG(ys[i] != nullptr, "matmul with ", ws[i]->name, ": null output");
    SS_CHECK_ARG(ws[i]->cols == first.cols, "matmul of ", ws[i]->name, " (", ws[i]->cols, " columns) and ",
                 first.name, " (", first.cols, " columns) with one input");
    one_format = one_format && activation_format(ws[i]->type) == format;
  }
  if (!one_format) {  // e.g. Q8_0 beside Q4_K: each needs its own quantization of X
    for (int i = 0; i < count; ++i) matmul_shared_input_at_isa(&ws[i], &ys[i], 1, x, n, pool, isa);
    return;
  }

  // Activations: float rows are used in place; quantized rows are made once for all output rows
  // of all the weights.
  const uint8_t* act = reinterpret_cast<const uint8_t*>(x);
  const int64_t act_stride = activation_row_bytes(format, first.cols);
  if (format != ActFormat::F32) {
    uint8_t* q = activation_scratch(n * act_stride);
    const QuantizeFn quantize = select_quantize(isa);
    // Spread over the threads for a prompt's chunk (a serial part of prefill otherwise); a decode
    // step's few rows stay inline.
    pool.parallel_for(
        n,
        [&](int64_t begin, int64_t end, int) {
          for (int64_t t = begin; t < end; ++t) quantize(format, x + t * first.cols, first.cols, q + t * act_stride);
        },
        std::max<int64_t>(1, kQuantizeMinValuesPerTask / first.cols));
    act = q;
  }

  // The weights' rows, one after the other, are one row space split among the threads; a task's
  // range may cover the end of one weight and the start of the next.
  DotTileFn dots[kMaxSharedInput];
  PackedTileFn packed[kMaxSharedInput];
  int64_t row_start[kMaxSharedInput + 1];
  row_start[0] = 0;
  for (int i = 0; i < count; ++i) {
    // Packed groups are read only by the kernels of the level they were laid out for.
    packed[i] = ws[i]->packed != nullptr && ws[i]->packed_isa == isa ? packed_tile_kernel(ws[i]->type, isa) : nullptr;
    dots[i] = packed[i] != nullptr ? nullptr : select_dot_tile(ws[i]->type, isa);
    row_start[i + 1] = row_start[i] + ws[i]->rows;
  }
  // A share of the rows per thread, each streamed front to back (ThreadPool::run_shares), in
  // pieces of about kTileBytes; fewer shares where there is too little work to hand out.
  const int64_t total_rows = row_start[count];
  const int64_t min_rows_per_share = std::max<int64_t>(1, kMinMacsPerTask / (first.cols * n));
  const int64_t piece_rows = std::max<int64_t>(1, kTileBytes / first.row_bytes);
  pool.run_shares(
      total_rows, (int)std::min<int64_t>(pool.n_threads(), total_rows / min_rows_per_share), piece_rows,
      [&](int64_t begin, int64_t end, int) {
        for (int i = 0; i < count; ++i) {
          const int64_t lo = std::max(begin, row_start[i]) - row_start[i];
          const int64_t hi = std::min(end, row_start[i + 1]) - row_start[i];
          const WeightMatrix& w = *ws[i];
          const int64_t n_blocks = w.cols / ggml_type_info(w.type).block_size;
          if (packed[i] != nullptr) {
            if (lo < hi) matmul_packed_rows(w, packed[i], n_blocks, lo, hi, act, act_stride, n, ys[i]);
            continue;
          }
          const int64_t rows_per_group = std::max<int64_t>(1, kTileBytes / w.row_bytes);
          for (int64_t g = lo; g < hi; g += rows_per_group) {
            const int nr = (int)std::min(hi - g, rows_per_group);
            for (int64_t t = 0; t < n; t += kTokenTile) {
              const int nt = (int)std::min<int64_t>(kTokenTile, n - t);
              dots[i](n_blocks, w.data + g * w.row_bytes, w.row_bytes, nr, act + t * act_stride, act_stride, nt,
                      ys[i] + t * w.rows + g, w.rows);
            }
          }
        }
      },
      n);  // a piece's cost grows with the tokens: a decode step's call is not set against a prompt
           // chunk's on the same matrix by the pool's probe (thread_pool.h)
}

void matmul_at_isa(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool& pool, Isa isa) {
  const WeightMatrix* ws[1] = {&w};
  float* ys[1] = {y};
  matmul_shared_input_at_isa(ws, ys, 1, x, n, pool, isa);
}

void matmul(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  matmul_at_isa(w, x, n, y, pool, active_isa());
}

void matmul_shared_input(const WeightMatrix* const* ws, float* const* ys, int count, const float* x, int64_t n,
                         ThreadPool& pool) {
  matmul_shared_input_at_isa(ws, ys, count, x, n, pool, active_isa());
}

void get_row(const WeightMatrix& w, int64_t row, float* out) {
  check_weight(w);
  SS_CHECK_ARG(row >= 0 && row < w.rows, "row ", row, " of ", w.name, " is out of range [0, ", w.rows, ")");
  if (w.packed != nullptr) {  // the file's pages of a packed matrix are released (Decoder)
    thread_local std::vector<uint8_t> blocks;
    blocks.resize((size_t)w.row_bytes);
    unpack_row(w, row, blocks.data());
    dequantize_row(w.type, blocks.data(), out, w.cols);
    return;
  }
  dequantize_row(w.type, w.data + row * w.row_bytes, out, w.cols);
}

}  // namespace sinkstream
