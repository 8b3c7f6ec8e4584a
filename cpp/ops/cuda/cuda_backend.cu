// The CUDA backend (cuda_backend.h): Backend over device buffers. Part of the static library
// sinkstream_cuda, so like cuda_ops.cu it uses only header-inline engine code (SinkCache's
// geometry, Model's accessors, block_decode.h, attention_plan.h), never a function of an engine .cc.
//
// Kernels (each a twin of the CPU op named; tests/test_cuda.py compares them on a GPU):
//   matmul        cuda_ops.cu launch_matmul (block-wise Q4_0/Q4_1/Q8_0/F16/F32, generic others)
//   embed         get_row: one block per token, decode_element over the row
//   rms_norm      cuda_ops.cu rms_norm_kernel; layer_norm: one block per row, double sums as the CPU
//   glu/activate  silu_mul, gelu_tanh_mul, gelu_erf, gelu_tanh with the CPU's formulas
//   rope          one thread per rotated pair, adjacent or NeoX layout, cos/sin tables uploaded
//   store_kv      one token's K and V rows into its slot (f32 -> f16 round to nearest even)
//   attention     A_l(t) split in ranges of rows over thread blocks (head, token, range): each
//                 range's max and sum, then the weighted values with the softmax's own max and sum,
//                 then the ranges added; scores as the CPU: q rounded to half against an f16 cache,
//                 ALiBi by distance within the cache, soft-capping, weights rounded to half
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "model/model.h"
#include "ops/cuda/attention_plan.h"
#include "ops/cuda/block_decode.h"
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_check.cuh"
#include "ops/cuda/cuda_ops.h"

namespace sinkstream::cuda {

namespace {

using detail::check_launch;

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kAttnWarps = 4;
constexpr int kMaxHeadDim = 256;  // attention keeps head_dim / 32 accumulators per lane

unsigned blocks_for(int64_t n) { return (unsigned)std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

__device__ __forceinline__ float round_half(float v) { return __half2float(__float2half_rn(v)); }

// ---- elementwise -------------------------------------------------------------------------------

#define SS_GRID_LOOP(i, n) \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float gelu_tanh(float g) {  // basic_ops.cc: g / (1 + e^(-2z))
  return g / (1.0f + expf(-1.5957691216057308f * (g + 0.044715f * g * g * g)));
}

__global__ void glu_kernel(int act, const float* gate, const float* up, int64_t rows, int64_t width, int64_t stride,
                           float* out) {
  SS_GRID_LOOP(i, rows * width) {
    const int64_t r = i / width, c = i % width;
    const float g = gate[r * stride + c], u = up[r * stride + c];
    out[i] = (act == 0 ? g / (1.0f + expf(-g)) : gelu_tanh(g)) * u;
  }
}

__global__ void activate_kernel(int erf_gelu, float* x, int64_t n) {
  SS_GRID_LOOP(i, n) {
    const float v = x[i];
    x[i] = erf_gelu ? 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)) : gelu_tanh(v);
  }
}

__global__ void clamp_kernel(float* x, float limit, int64_t n) {
  SS_GRID_LOOP(i, n) x[i] = fminf(fmaxf(x[i], -limit), limit);
}

__global__ void add_kernel(float* y, const float* x, float scale, int64_t n) {
  SS_GRID_LOOP(i, n) y[i] = scale == 1.0f ? y[i] + x[i] : y[i] + scale * x[i];
}

__global__ void add_bias_kernel(float* y, const float* bias, int64_t rows, int64_t d) {
  SS_GRID_LOOP(i, rows * d) y[i] += bias[i % d];
}

__global__ void scale_kernel(float* x, float s, int64_t n) {
  SS_GRID_LOOP(i, n) x[i] *= s;
}

__global__ void soft_cap_kernel(float* x, float cap, int64_t n) {
  SS_GRID_LOOP(i, n) x[i] = cap * tanhf(x[i] / cap);
}

// x: n_heads vectors of head_dim; pair i of each head rotated by (cos[i], sin[i]).
__global__ void rope_kernel(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int adjacent,
                            const float* cos, const float* sin) {
  const int64_t half = n_rot / 2;
  SS_GRID_LOOP(k, n_heads * half) {
    const int64_t h = k / half, i = k % half;
    float* v = x + h * head_dim;
    const int64_t a = adjacent ? 2 * i : i, b = adjacent ? 2 * i + 1 : i + half;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * cos[i] - x1 * sin[i];
    v[b] = x0 * sin[i] + x1 * cos[i];
  }
}

// rope_kernel over `rows` rows of x (row_stride apart), row r with cos/sin + r * n_rot / 2.
__global__ void rope_rows_kernel(float* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                                 int64_t n_rot, int adjacent, const float* cos, const float* sin) {
  const int64_t half = n_rot / 2;
  SS_GRID_LOOP(k, rows * n_heads * half) {
    const int64_t r = k / (n_heads * half), h = (k / half) % n_heads, i = k % half;
    float* v = x + r * row_stride + h * head_dim;
    const float c = cos[r * half + i], s = sin[r * half + i];
    const int64_t a = adjacent ? 2 * i : i, b = adjacent ? 2 * i + 1 : i + half;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
  }
}

// Row ids[b] of the table -> out row b (ops.h get_row).
__global__ void embed_kernel(GgmlType type, const uint8_t* table, int64_t row_bytes, const int32_t* ids,
                             int64_t cols, float* out) {
  const int64_t b = blockIdx.x;
  const uint8_t* row = table + (int64_t)ids[b] * row_bytes;
  for (int64_t e = threadIdx.x; e < cols; e += blockDim.x) out[b * cols + e] = decode_element(type, row, e);
}

// One block per row: mean and variance in double, as basic_ops.cc layer_norm.
__global__ void layer_norm_kernel(const float* x, const float* weight, const float* bias, int64_t d, float eps,
                                  float* out) {
  const float* xr = x + (int64_t)blockIdx.x * d;
  float* yr = out + (int64_t)blockIdx.x * d;
  __shared__ double partial[kThreads / kWarp];
  __shared__ double shared_value;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  auto block_sum = [&](double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
      double t = 0.0;
      for (int i = 0; i < (int)(blockDim.x / kWarp); ++i) t += partial[i];
      shared_value = t;
    }
    __syncthreads();
    const double total = shared_value;
    __syncthreads();
    return total;
  };
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) sum += xr[i];
  const double mean = block_sum(sum) / (double)d;
  double squares = 0.0;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) squares += ((double)xr[i] - mean) * ((double)xr[i] - mean);
  const float scale = (float)(1.0 / sqrt(block_sum(squares) / (double)d + (double)eps));
  const float m = (float)mean;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
    yr[i] = (xr[i] - m) * scale * weight[i] + (bias != nullptr ? bias[i] : 0.0f);
}

// n tokens' K and V rows (n_head_kv * head_dim floats each) into their slots[b] of every KV head.
__global__ void store_kv_kernel(const float* key, const float* value, uint8_t* keys, uint8_t* values, int64_t n,
                                const int64_t* slots, int64_t n_head_kv, int64_t head_dim, int64_t n_slots, int f16) {
  SS_GRID_LOOP(i, n * n_head_kv * head_dim) {
    const int64_t b = i / (n_head_kv * head_dim), h = (i / head_dim) % n_head_kv, c = i % head_dim;
    const int64_t at = (h * n_slots + slots[b]) * head_dim + c;
    if (f16) {
      reinterpret_cast<__half*>(keys)[at] = __float2half_rn(key[i]);
      reinterpret_cast<__half*>(values)[at] = __float2half_rn(value[i]);
    } else {
      reinterpret_cast<float*>(keys)[at] = key[i];
      reinterpret_cast<float*>(values)[at] = value[i];
    }
  }
}

template <bool F16>
__device__ __forceinline__ float cache_at(const uint8_t* rows, int64_t index) {
  if (F16) return __half2float(reinterpret_cast<const __half*>(rows)[index]);
  return reinterpret_cast<const float*>(rows)[index];
}

// ---- attention ------------------------------------------------------------------------------------
// Query head h of token b over its A_l(t) (plans[b]), the CPU's operations (attention.cc): score =
// (q . k) * scale, ALiBi, soft-cap, softmax with the max subtracted, weights rounded to half with an
// f16 cache, out = sum w * v. Split over the rows for long caches (flash-decoding): A_l(t) is cut
// into `splits` ranges of rows_per_split rows, one thread block per (head, token, range), in three
// kernels: (1) each range's max and sum of exp, (2) every range combines all ranges' (max, sum) into
// the softmax's own, then weighs its values with the final weights (so each weight is rounded as the
// CPU rounds it), (3) the ranges' partial sums added. A short set is one range.
// Each lane scores a row of its own (the whole q . k), so a warp has 32 rows' loads in flight; the
// first version reduced each row's dot product across the warp, one row at a time per warp, and
// spent ~55 us per decode step and layer waiting on those chains (H200, 1,100 rows): 74% of the
// GPU's decode time. The values are then summed row by row, each lane holding head_dim / 32 of
// the output, with the row's weight and slot broadcast from the lane that scored it.
struct AttentionArgs {
  const float* q;
  const float* q_sink;
  const AttentionRowPlan* plans;
  const uint8_t* keys;    // the layer's rows: per KV head, n_slots rows of head_dim
  const uint8_t* values;
  int64_t n_slots, n_sink, ring_slots;
  int head_dim, group, n_head;
  float scale, softcap;
  const float* slopes;    // (n_head) or nullptr
  const float* sink_logits;  // (n_head) learned sink logits (gpt-oss) or nullptr: a softmax column, no value
  int splits;
  int64_t rows_per_split;
  float2* stats;          // (n, n_head, splits): (max, sum of exp) per range
  float* partials;        // (n, n_head, splits, head_dim)
  float* out;             // (n, n_head * head_dim)
  const AttentionTilePlan* tiles;  // the prefill kernels' query tiles (attention_plan.h)
};

constexpr int64_t kRowsPerSplit = kAttnWarps * kWarp;  // a range is at least one row per lane
constexpr int kRowsInFlight = 8;  // value rows whose loads one lane has in flight (divides 32)
constexpr int64_t kTargetBlocks = 2048;  // enough (head, token, range) blocks to fill a large GPU
constexpr int64_t kMaxSplits = 256;

int attention_splits(int64_t n, int64_t n_head, int64_t max_rows) {
  const int64_t by_rows = (max_rows + kRowsPerSplit - 1) / kRowsPerSplit;
  const int64_t by_blocks = std::max<int64_t>(1, kTargetBlocks / std::max<int64_t>(1, n * n_head));
  return (int)std::max<int64_t>(1, std::min(std::min(by_rows, by_blocks), kMaxSplits));
}

constexpr int64_t kMaxTileSplits = 8;  // ranges per query tile (prefill; launch_tile_attention)

// (head, token, range) entries the scratch holds: n * n_head * splits <= max(n * n_head, kTargetBlocks)
// for the per-query kernels, <= n * n_head * kMaxTileSplits for the tiles.
int64_t attention_entries(int64_t max_tokens, int64_t n_head) {
  return std::max(max_tokens * n_head * kMaxTileSplits, kTargetBlocks);
}

// Row r's score from its q . k: scaled, ALiBi (slope: the head's), soft-capped (attention.cc).
__device__ __forceinline__ float biased_score(const AttentionArgs& a, float slope, const AttentionRowPlan& p,
                                              int64_t r, float dot) {
  float s = dot * a.scale;
  if (a.slopes != nullptr) s -= slope * (float)alibi_distance(p, r);
  if (a.softcap > 0.0f) s = a.softcap * tanhf(s * (1.0f / a.softcap));
  return s;
}

// The block's query in shared memory (rounded to half against an f16 cache, as the CPU does), its
// K and V rows, and its range of rows.
template <bool F16>
struct AttentionBlock {
  AttentionRowPlan plan;
  const uint8_t *k_rows, *v_rows;
  float slope;
  int64_t begin, end;
  __device__ AttentionBlock(const AttentionArgs& a, float* qw, float* qs) {
    const int h = blockIdx.x;
    const int64_t b = blockIdx.y;
    plan = a.plans[b];
    const size_t element = F16 ? 2 : 4;
    const int kv = h / a.group;
    k_rows = a.keys + (size_t)kv * a.n_slots * a.head_dim * element;
    v_rows = a.values + (size_t)kv * a.n_slots * a.head_dim * element;
    slope = a.slopes != nullptr ? a.slopes[h] : 0.0f;
    begin = (int64_t)blockIdx.z * a.rows_per_split;
    end = min(plan_rows(plan), begin + a.rows_per_split);
    const float* qw_g = a.q + (b * a.n_head + h) * (int64_t)a.head_dim;
    const float* qs_g = plan.separate_sink_query ? a.q_sink + (b * a.n_head + h) * (int64_t)a.head_dim : qw_g;
    for (int i = threadIdx.x; i < a.head_dim; i += blockDim.x) {
      qw[i] = F16 ? round_half(qw_g[i]) : qw_g[i];
      qs[i] = F16 ? round_half(qs_g[i]) : qs_g[i];
    }
    __syncthreads();
  }
  __device__ int64_t slot(const AttentionArgs& a, int64_t r) const { return row_slot(plan, r, a.n_sink, a.ring_slots); }
  // Row r's biased score, computed by the calling lane alone (head_dim is even: host-checked).
  __device__ float lane_score(const AttentionArgs& a, const float* qw, const float* qs, int64_t r) const {
    const int64_t at = slot(a, r) * a.head_dim;
    const float* q = r < plan.n_sink_rows ? qs : qw;
    float even = 0.0f, odd = 0.0f;  // two chains: half the dependent FMAs in a row
    if (F16) {
      const __half2* k = reinterpret_cast<const __half2*>(k_rows) + at / 2;
      for (int i = 0; i < a.head_dim / 2; ++i) {
        const float2 kv = __half22float2(k[i]);
        even = fmaf(q[2 * i], kv.x, even);
        odd = fmaf(q[2 * i + 1], kv.y, odd);
      }
    } else {
      const float2* k = reinterpret_cast<const float2*>(k_rows) + at / 2;
      for (int i = 0; i < a.head_dim / 2; ++i) {
        const float2 kv = k[i];
        even = fmaf(q[2 * i], kv.x, even);
        odd = fmaf(q[2 * i + 1], kv.y, odd);
      }
    }
    return biased_score(a, slope, plan, r, even + odd);
  }
};

__device__ __forceinline__ int64_t entry_index(const AttentionArgs& a) {
  return ((int64_t)blockIdx.y * a.n_head + blockIdx.x) * a.splits + blockIdx.z;
}

// The softmax's (max, 1 / sum of exp) for query head h from its ranges' (max, sum) stats. A learned
// sink joins the max and the denominator only (the CPU's softmax, attention.cc).
__device__ __forceinline__ float2 softmax_normalizer(const AttentionArgs& a, const float2* stats, int h) {
  const float sink = a.sink_logits != nullptr ? a.sink_logits[h] : -INFINITY;
  float mx = sink, total = 0.0f;
  for (int i = 0; i < a.splits; ++i) mx = fmaxf(mx, stats[i].x);
  if (a.sink_logits != nullptr) total = expf(sink - mx);
  for (int i = 0; i < a.splits; ++i)
    if (stats[i].y > 0.0f) total += stats[i].y * expf(stats[i].x - mx);
  return make_float2(mx, 1.0f / total);
}

// (max, sum of exp) of two parts of a softmax merged; a part with no rows is (-inf, 0).
__device__ __forceinline__ void merge_softmax_stats(float& m, float& l, float m2, float l2) {
  const float mx = fmaxf(m, m2);
  l = (l > 0.0f ? l * expf(m - mx) : 0.0f) + (l2 > 0.0f ? l2 * expf(m2 - mx) : 0.0f);
  m = mx;
}

template <bool F16>
__global__ void __launch_bounds__(kAttnWarps * kWarp) attention_stats_kernel(AttentionArgs a) {
  extern __shared__ float shared[];
  float *qw = shared, *qs = shared + a.head_dim;
  __shared__ float warp_max[kAttnWarps], warp_sum_exp[kAttnWarps];
  const AttentionBlock<F16> blk(a, qw, qs);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  float m = -INFINITY, l = 0.0f;  // this lane's rows
  for (int64_t r = blk.begin + warp * kWarp + lane; r < blk.end; r += kAttnWarps * kWarp)
    merge_softmax_stats(m, l, blk.lane_score(a, qw, qs, r), 1.0f);
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
    merge_softmax_stats(m, l, m2, l2);
  }
  if (lane == 0) {
    warp_max[warp] = m;
    warp_sum_exp[warp] = l;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float mx = -INFINITY, total = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) merge_softmax_stats(mx, total, warp_max[w], warp_sum_exp[w]);
    a.stats[entry_index(a)] = make_float2(mx, total);  // (-inf, 0) for an empty range
  }
}

template <bool F16>
__global__ void __launch_bounds__(kAttnWarps * kWarp) attention_accumulate_kernel(AttentionArgs a) {
  extern __shared__ float shared[];
  float *qw = shared, *qs = shared + a.head_dim, *acc_shared = qs + a.head_dim;  // acc: (kAttnWarps, head_dim)
  __shared__ float final_max, final_inv;
  const AttentionBlock<F16> blk(a, qw, qs);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (threadIdx.x == 0) {  // the softmax's max and 1 / sum, from every range of this query head
    const float2 norm = softmax_normalizer(a, a.stats + (entry_index(a) - blockIdx.z), blockIdx.x);
    final_max = norm.x;
    final_inv = norm.y;
  }
  __syncthreads();
  const float mx = final_max, inv = final_inv;
  float acc[kMaxHeadDim / kWarp];
#pragma unroll
  for (int k = 0; k < kMaxHeadDim / kWarp; ++k) acc[k] = 0.0f;
  // Groups of 32 rows: lane j weighs row first + j, then every lane adds its columns of each row.
  for (int64_t first = blk.begin + warp * kWarp; first < blk.end; first += kAttnWarps * kWarp) {
    const int64_t r = first + lane;
    float w = 0.0f;
    long long slot = 0;
    if (r < blk.end) {
      w = expf(blk.lane_score(a, qw, qs, r) - mx) * inv;
      if (F16) w = round_half(w);
      slot = blk.slot(a, r);
    }
    // kRowsInFlight rows at a time, all their loads issued before their adds (a lane past the
    // range has weight 0 and slot 0: a real row, added times 0). The same order of adds as one by one.
    const int rows = (int)min((int64_t)kWarp, blk.end - first);  // the same for the whole warp
    for (int j0 = 0; j0 < rows; j0 += kRowsInFlight) {
      float wj[kRowsInFlight];
      int64_t at[kRowsInFlight];
#pragma unroll
      for (int u = 0; u < kRowsInFlight; ++u) {
        wj[u] = __shfl_sync(0xffffffffu, w, j0 + u);
        at[u] = (int64_t)__shfl_sync(0xffffffffu, slot, j0 + u) * a.head_dim;
      }
#pragma unroll
      for (int k = 0; k < kMaxHeadDim / kWarp; ++k) {
        const int i = lane + k * kWarp;
        if (i < a.head_dim) {
          float v[kRowsInFlight];
#pragma unroll
          for (int u = 0; u < kRowsInFlight; ++u) v[u] = cache_at<F16>(blk.v_rows, at[u] + i);
#pragma unroll
          for (int u = 0; u < kRowsInFlight; ++u) acc[k] += wj[u] * v[u];
        }
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxHeadDim / kWarp; ++k) {
    const int i = lane + k * kWarp;
    if (i < a.head_dim) acc_shared[warp * a.head_dim + i] = acc[k];
  }
  __syncthreads();
  float* partial = a.partials + entry_index(a) * a.head_dim;
  for (int i = threadIdx.x; i < a.head_dim; i += blockDim.x) {
    float total = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) total += acc_shared[w * a.head_dim + i];
    partial[i] = total;
  }
}

// out (token blockIdx.y, head blockIdx.x) = the sum of its ranges' partial sums, in range order.
__global__ void attention_combine_kernel(AttentionArgs a) {
  const int64_t first = ((int64_t)blockIdx.y * a.n_head + blockIdx.x) * a.splits;
  float* out = a.out + ((int64_t)blockIdx.y * a.n_head + blockIdx.x) * a.head_dim;
  for (int i = threadIdx.x; i < a.head_dim; i += blockDim.x) {
    float total = 0.0f;
    for (int sp = 0; sp < a.splits; ++sp) total += a.partials[(first + sp) * a.head_dim + i];
    out[i] = total;
  }
}

// ---- attention for tiles of queries (prefill) -------------------------------------------------------
// Block (head, tile): the kTileQueries consecutive queries of a tile (attention_plan.h) walk its
// candidates kTileRows at a time. The candidates' keys (then values) are read into shared memory
// once for the whole tile and every (query, candidate) pair is scored from there; a candidate
// outside a query's own set is left out of that query. The per-query kernels above read every key
// once per query: at 2,048 cached rows and 512-token chunks that was 85% of a prefill's GPU time.
// The same two passes (each weight is the final softmax weight, rounded as the CPU rounds it) and
// the same ranges (splits) of candidates, one block each; within a range each query's rows are
// added in its row order (sinks, then the window).
constexpr int kTileRows = 32;
constexpr int kTileThreads = 128;
constexpr int kThreadsPerQuery = kTileThreads / (int)kTileQueries;  // 8 score a query's candidates
constexpr int kTileOutputs = (int)kTileQueries * kMaxHeadDim / kTileThreads;

// Rows in shared memory are head_dim + 1 floats apart, so the queries and candidates one warp reads
// at once sit in different banks.
__host__ __device__ inline int64_t tile_stride(int64_t head_dim) { return head_dim + 1; }
size_t tile_shared_bytes(int64_t head_dim, bool accumulate) {
  const int64_t floats = (2 * kTileQueries + kTileRows) * tile_stride(head_dim) + (accumulate ? kTileQueries * kTileRows : 0);
  return (size_t)floats * sizeof(float);
}

template <bool F16>
struct TileBlock {
  const AttentionTilePlan* tile;
  const uint8_t *k_rows, *v_rows;
  float slope;
  int64_t stride, candidates;
  int64_t begin, end;            // this block's range of the candidates (blockIdx.z of a.splits)
  float *q, *q_sink, *rows;      // shared: (kTileQueries, stride) twice, (kTileRows, stride)
  int64_t* slots;                // shared: the slots of the candidates in `rows`
  __device__ TileBlock(const AttentionArgs& a, float* shared, int64_t* slot_shared) {
    const int h = blockIdx.x;
    tile = a.tiles + blockIdx.y;
    const size_t element = F16 ? 2 : 4;
    const int kv = h / a.group;
    k_rows = a.keys + (size_t)kv * a.n_slots * a.head_dim * element;
    v_rows = a.values + (size_t)kv * a.n_slots * a.head_dim * element;
    slope = a.slopes != nullptr ? a.slopes[h] : 0.0f;
    stride = tile_stride(a.head_dim);
    candidates = tile_candidates(*tile);
    const int64_t per_split = (candidates + a.splits - 1) / a.splits;
    begin = min(candidates, (int64_t)blockIdx.z * per_split);
    end = min(candidates, begin + per_split);
    q = shared;
    q_sink = q + kTileQueries * stride;
    rows = q_sink + kTileQueries * stride;
    slots = slot_shared;
    for (int64_t e = threadIdx.x; e < kTileQueries * a.head_dim; e += blockDim.x) {
      const int64_t qi = e / a.head_dim, i = e % a.head_dim;
      float qw = 0.0f, qs = 0.0f;
      if (qi < tile->n_queries) {
        const int64_t b = tile->first_query + qi;
        const float* qw_g = a.q + (b * a.n_head + h) * (int64_t)a.head_dim;
        const float* qs_g = a.plans[b].separate_sink_query ? a.q_sink + (b * a.n_head + h) * (int64_t)a.head_dim : qw_g;
        qw = F16 ? round_half(qw_g[i]) : qw_g[i];
        qs = F16 ? round_half(qs_g[i]) : qs_g[i];
      }
      q[qi * stride + i] = qw;
      q_sink[qi * stride + i] = qs;
    }
  }
  // Candidates c0 .. c0 + kTileRows - 1 of `source` (keys or values) into `rows` (0 past `end`).
  // Starts and ends with a barrier: `rows` is free before, filled after.
  __device__ void load(const AttentionArgs& a, const uint8_t* source, int64_t c0) {
    __syncthreads();
    if (threadIdx.x < kTileRows) {
      const int64_t c = c0 + threadIdx.x;
      slots[threadIdx.x] = c < end ? tile_candidate_slot(*tile, c, a.n_sink, a.ring_slots) : -1;
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < kTileRows * a.head_dim; e += blockDim.x) {
      const int64_t j = e / a.head_dim, i = e % a.head_dim;
      const int64_t slot = slots[j];
      rows[j * stride + i] = slot >= 0 ? cache_at<F16>(source, slot * a.head_dim + i) : 0.0f;
    }
    __syncthreads();
  }
  // The biased score of query qi (plan p) against row r = candidate j of `rows` (keys loaded).
  __device__ float score(const AttentionArgs& a, const AttentionRowPlan& p, int qi, int j, int64_t r) const {
    const float* qv = (r < p.n_sink_rows ? q_sink : q) + qi * stride;
    const float* kv = rows + j * stride;
    float even = 0.0f, odd = 0.0f;
    for (int i = 0; i < a.head_dim; i += 2) {
      even = fmaf(qv[i], kv[i], even);
      odd = fmaf(qv[i + 1], kv[i + 1], odd);
    }
    return biased_score(a, slope, p, r, even + odd);
  }
};

template <bool F16>
__global__ void __launch_bounds__(kTileThreads) attention_tile_stats_kernel(AttentionArgs a) {
  extern __shared__ float shared[];
  __shared__ int64_t slot_shared[kTileRows];
  TileBlock<F16> blk(a, shared, slot_shared);
  const int qi = threadIdx.x / kThreadsPerQuery, part = threadIdx.x % kThreadsPerQuery;
  const bool active = qi < blk.tile->n_queries;
  const AttentionRowPlan p = active ? a.plans[blk.tile->first_query + qi] : AttentionRowPlan{};
  float m = -INFINITY, l = 0.0f;
  for (int64_t c0 = blk.begin; c0 < blk.end; c0 += kTileRows) {
    blk.load(a, blk.k_rows, c0);
    for (int j = part; j < kTileRows && active; j += kThreadsPerQuery) {
      const int64_t c = c0 + j;
      const int64_t r = c < blk.end ? tile_candidate_row(*blk.tile, p, c, a.ring_slots) : -1;
      if (r >= 0) merge_softmax_stats(m, l, blk.score(a, p, qi, j, r), 1.0f);
    }
  }
#pragma unroll
  for (int o = kThreadsPerQuery / 2; o > 0; o >>= 1) {  // a query's threads are adjacent lanes
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
    merge_softmax_stats(m, l, m2, l2);
  }
  if (active && part == 0)
    a.stats[((blk.tile->first_query + qi) * a.n_head + blockIdx.x) * a.splits + blockIdx.z] = make_float2(m, l);
}

template <bool F16>
__global__ void __launch_bounds__(kTileThreads) attention_tile_accumulate_kernel(AttentionArgs a) {
  extern __shared__ float shared[];
  __shared__ int64_t slot_shared[kTileRows];
  __shared__ float final_max[kTileQueries], final_inv[kTileQueries];
  TileBlock<F16> blk(a, shared, slot_shared);
  float* weights = blk.rows + kTileRows * blk.stride;  // (kTileQueries, kTileRows)
  const int h = blockIdx.x;
  if (threadIdx.x < blk.tile->n_queries) {  // the softmax's max and 1 / sum, from every range
    const float2 norm =
        softmax_normalizer(a, a.stats + ((blk.tile->first_query + threadIdx.x) * a.n_head + h) * a.splits, h);
    final_max[threadIdx.x] = norm.x;
    final_inv[threadIdx.x] = norm.y;
  }
  const int qi = threadIdx.x / kThreadsPerQuery, part = threadIdx.x % kThreadsPerQuery;
  const bool active = qi < blk.tile->n_queries;
  const AttentionRowPlan p = active ? a.plans[blk.tile->first_query + qi] : AttentionRowPlan{};
  float acc[kTileOutputs];
#pragma unroll
  for (int o = 0; o < kTileOutputs; ++o) acc[o] = 0.0f;
  __syncthreads();  // final_max / final_inv, also for a block whose range is empty
  for (int64_t c0 = blk.begin; c0 < blk.end; c0 += kTileRows) {
    blk.load(a, blk.k_rows, c0);
    for (int j = part; j < kTileRows; j += kThreadsPerQuery) {
      const int64_t c = c0 + j;
      const int64_t r = active && c < blk.end ? tile_candidate_row(*blk.tile, p, c, a.ring_slots) : -1;
      float w = 0.0f;
      if (r >= 0) {
        w = expf(blk.score(a, p, qi, j, r) - final_max[qi]) * final_inv[qi];
        if (F16) w = round_half(w);
      }
      if (qi < kTileQueries) weights[qi * kTileRows + j] = w;
    }
    blk.load(a, blk.v_rows, c0);
#pragma unroll
    for (int o = 0; o < kTileOutputs; ++o) {
      const int64_t e = threadIdx.x + (int64_t)o * kTileThreads;
      if (e < kTileQueries * a.head_dim) {
        const int64_t oq = e / a.head_dim, i = e % a.head_dim;
        const float* w = weights + oq * kTileRows;
        float sum = acc[o];
        for (int j = 0; j < kTileRows; ++j) sum += w[j] != 0.0f ? w[j] * blk.rows[j * blk.stride + i] : 0.0f;
        acc[o] = sum;
      }
    }
  }
#pragma unroll
  for (int o = 0; o < kTileOutputs; ++o) {
    const int64_t e = threadIdx.x + (int64_t)o * kTileThreads;
    if (e < kTileQueries * a.head_dim) {
      const int64_t oq = e / a.head_dim, i = e % a.head_dim;
      if (oq < blk.tile->n_queries)
        a.partials[(((blk.tile->first_query + oq) * a.n_head + h) * a.splits + blockIdx.z) * a.head_dim + i] = acc[o];
    }
  }
}

// Lets a kernel take `bytes` of dynamic shared memory (over the default 48 KiB: head_dim 256).
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes > (48u << 10))
    SS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

// The two tile kernels and the combine for n queries in n_tiles tiles (a.tiles set) of at most
// max_candidates candidates. Each tile's candidates are cut into ranges, one block each, so that a
// 512-token chunk has blocks enough to fill the GPU (288 (head, tile) blocks left most SMs with
// two blocks of four warps waiting on their loads): about kTargetBlocks blocks, at most
// kMaxTileSplits ranges (what attention_entries() leaves room for), each of 4 chunks at least.
void launch_tile_attention(AttentionArgs a, int64_t n, int64_t n_tiles, int64_t max_candidates, bool f16) {
  const int64_t by_rows = (max_candidates + 4 * kTileRows - 1) / (4 * kTileRows);  // >= 4 chunks a block
  const int64_t by_blocks = std::max<int64_t>(1, kTargetBlocks / std::max<int64_t>(1, a.n_head * n_tiles));
  a.splits = (int)std::max<int64_t>(1, std::min(std::min(by_rows, by_blocks), kMaxTileSplits));
  const dim3 grid((unsigned)a.n_head, (unsigned)n_tiles, (unsigned)a.splits);
  const size_t stats_shared = tile_shared_bytes(a.head_dim, false), acc_shared = tile_shared_bytes(a.head_dim, true);
  if (f16) {
    allow_shared_memory(attention_tile_stats_kernel<true>, stats_shared);
    allow_shared_memory(attention_tile_accumulate_kernel<true>, acc_shared);
    attention_tile_stats_kernel<true><<<grid, kTileThreads, stats_shared>>>(a);
    attention_tile_accumulate_kernel<true><<<grid, kTileThreads, acc_shared>>>(a);
  } else {
    allow_shared_memory(attention_tile_stats_kernel<false>, stats_shared);
    allow_shared_memory(attention_tile_accumulate_kernel<false>, acc_shared);
    attention_tile_stats_kernel<false><<<grid, kTileThreads, stats_shared>>>(a);
    attention_tile_accumulate_kernel<false><<<grid, kTileThreads, acc_shared>>>(a);
  }
  attention_combine_kernel<<<dim3((unsigned)a.n_head, (unsigned)n), 128>>>(a);
  check_launch("tile attention");
}

// The cache geometry part of the arguments (keys / values: the layer's rows on the device).
AttentionArgs attention_args(const SinkCache& cache, int64_t layer, int64_t n_head, const uint8_t* keys,
                             const uint8_t* values) {
  AttentionArgs a{};
  a.keys = keys;
  a.values = values;
  a.n_slots = cache.n_slots(layer);
  a.n_sink = cache.n_sink();
  a.ring_slots = cache.ring_slots(layer);
  a.head_dim = (int)cache.head_dim();
  a.group = (int)(n_head / cache.n_head_kv());
  a.n_head = (int)n_head;
  return a;
}

// The three kernels for n queries whose sets have at most max_rows rows (a.stats / a.partials:
// attention_entries(n, n_head) entries at least; a.splits and a.rows_per_split are set here).
void launch_attention(AttentionArgs a, int64_t n, int64_t max_rows, bool f16) {
  a.splits = attention_splits(n, a.n_head, max_rows);
  a.rows_per_split = (max_rows + a.splits - 1) / a.splits;
  const dim3 grid((unsigned)a.n_head, (unsigned)n, (unsigned)a.splits);
  const size_t q_shared = 2 * (size_t)a.head_dim * sizeof(float);
  const size_t acc_shared = q_shared + (size_t)kAttnWarps * a.head_dim * sizeof(float);
  if (f16) {
    attention_stats_kernel<true><<<grid, kAttnWarps * kWarp, q_shared>>>(a);
    attention_accumulate_kernel<true><<<grid, kAttnWarps * kWarp, acc_shared>>>(a);
  } else {
    attention_stats_kernel<false><<<grid, kAttnWarps * kWarp, q_shared>>>(a);
    attention_accumulate_kernel<false><<<grid, kAttnWarps * kWarp, acc_shared>>>(a);
  }
  attention_combine_kernel<<<dim3((unsigned)a.n_head, (unsigned)n), 128>>>(a);
  check_launch("attention");
}

// ---- weights ---------------------------------------------------------------------------------------

// One model's weights on the device: each host pointer the decoder passes, mapped to its copy.
class DeviceWeights {
 public:
  explicit DeviceWeights(const Model& model) {
    int device = 0;
    SS_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp prop;
    SS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    const GgufFile& file = model.file();
    if (prop.integrated && file.image() != nullptr) {
      // Jetson: the GPU reads the host's pages; map the whole GGUF image once, read-only.
      void* host = const_cast<uint8_t*>(file.image());
      if (cudaHostRegister(host, file.file_size(), cudaHostRegisterMapped | cudaHostRegisterReadOnly) ==
          cudaSuccess) {
        void* device_ptr = nullptr;
        SS_CUDA_CHECK(cudaHostGetDevicePointer(&device_ptr, host, 0));
        image_ = file.image();
        image_size_ = file.file_size();
        image_device_ = static_cast<const uint8_t*>(device_ptr);
      } else {
        (void)cudaGetLastError();  // not registrable (e.g. an in-memory image): copy instead
      }
    }
  }
  ~DeviceWeights() {
    if (image_device_ != nullptr) (void)cudaHostUnregister(const_cast<uint8_t*>(image_));
  }
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;

  // The device copy of `bytes` host bytes at `host` (uploaded on first use).
  const uint8_t* resolve(const void* host, size_t bytes) {
    const uint8_t* h = static_cast<const uint8_t*>(host);
    if (image_device_ != nullptr && h >= image_ && h + bytes <= image_ + image_size_) return image_device_ + (h - image_);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = map_.find(host);
    if (it != map_.end() && it->second.bytes >= bytes) return it->second.device;
    DeviceBuffer buffer = upload(host, bytes);
    const uint8_t* device = buffer.as<uint8_t>();
    resident_ += bytes;
    owned_.push_back(std::move(buffer));
    map_[host] = {device, bytes};
    return device;
  }
  const float* resolve(const float* host, int64_t n) {
    return reinterpret_cast<const float*>(resolve(static_cast<const void*>(host), (size_t)n * sizeof(float)));
  }
  size_t resident() const { return resident_; }

 private:
  struct Entry {
    const uint8_t* device;
    size_t bytes;
  };
  std::mutex mutex_;
  std::unordered_map<const void*, Entry> map_;
  std::vector<DeviceBuffer> owned_;
  size_t resident_ = 0;
  const uint8_t* image_ = nullptr;
  size_t image_size_ = 0;
  const uint8_t* image_device_ = nullptr;
};

// Weights per model, shared by that model's CUDA sessions; an entry lives while a backend holds it
// (each backend also holds the model, so a host pointer is never reused while its entry lives).
std::mutex registry_mutex;
std::map<const Model*, std::weak_ptr<DeviceWeights>>& registry() {
  static std::map<const Model*, std::weak_ptr<DeviceWeights>> r;
  return r;
}

std::shared_ptr<DeviceWeights> weights_of(const Model& model) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  std::weak_ptr<DeviceWeights>& slot = registry()[&model];
  std::shared_ptr<DeviceWeights> w = slot.lock();
  if (!w) {
    w = std::make_shared<DeviceWeights>(model);
    slot = w;
  }
  return w;
}

// ---- uploads ---------------------------------------------------------------------------------------

// Pinned host staging for the small uploads of every pass: token ids, RoPE tables, K/V slots and
// attention plans. A cudaMemcpy from pageable memory waits for all the work queued on the legacy
// stream, so the two uploads per layer drained the GPU twice per layer: decode of a 135M model on an
// H200 took 5.5 ms per token, almost all of it the CPU and GPU waiting on each other. Here an
// upload is a memcpy into pinned memory and a cudaMemcpyAsync, queued in stream order behind the
// kernels launched before it; the host returns at once. A region is written again only after a
// synchronization has proved the GPU read it: a download (reclaim()), or the arena filling up.
class UploadStaging {
 public:
  explicit UploadStaging(size_t bytes) : size_(bytes) {
    void* base = nullptr;
    SS_CUDA_CHECK(cudaMallocHost(&base, bytes));
    base_ = static_cast<uint8_t*>(base);
  }
  ~UploadStaging() {
    if (base_ != nullptr) (void)cudaFreeHost(base_);
  }
  UploadStaging(const UploadStaging&) = delete;
  UploadStaging& operator=(const UploadStaging&) = delete;

  // Copies `bytes` at host `src` to device `dst` in stream order; `src` may change after this returns.
  void copy_to_device(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
    if (bytes > size_) {  // larger than the whole arena: a synchronous copy, as before
      SS_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
      return;
    }
    size_t at = (used_ + kAlign - 1) / kAlign * kAlign;
    if (at + bytes > size_) {  // full: wait until the GPU has read every queued region
      SS_CUDA_CHECK(cudaStreamSynchronize(0));
      at = 0;
    }
    std::memcpy(base_ + at, src, bytes);
    SS_CUDA_CHECK(cudaMemcpyAsync(dst, base_ + at, bytes, cudaMemcpyHostToDevice, 0));
    used_ = at + bytes;
  }
  // After a synchronization of the legacy stream: every queued copy has run.
  void reclaim() { used_ = 0; }

 private:
  static constexpr size_t kAlign = 256;
  uint8_t* base_ = nullptr;
  size_t size_ = 0, used_ = 0;
};

// A pass uploads its ids and RoPE tables once and a slot list and a plan list per layer; room for
// a few such passes between synchronizations (decode synchronizes every token, for its logits).
size_t staging_bytes(const ModelConfig& c, int64_t max_tokens) {
  const size_t per_layer = (size_t)max_tokens * (sizeof(AttentionRowPlan) + sizeof(int64_t)) + 512;
  return std::min<size_t>(std::max<size_t>((size_t)4 << 20, 4 * per_layer * (size_t)c.n_layer), (size_t)64 << 20);
}

// ---- the backend -----------------------------------------------------------------------------------

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::shared_ptr<const Model> model, int64_t max_tokens, int64_t capacity)
      : model_(std::move(model)), max_tokens_(max_tokens), capacity_(capacity) {
    std::string why;
    if (!available(&why)) throw CudaError(cat("device='cuda': ", why));
    for (const GgufTensorInfo& t : model_->file().tensors()) {
      if (t.dims.size() != 2) continue;  // vectors are read as float32 by the model
      SS_CHECK_ARG(decodable(t.type), "device='cuda': tensor '", t.name, "' has type ", (uint32_t)t.type,
                   ", which the CUDA backend cannot read (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, ",
                   "Q8_0, Q2_K .. Q6_K, IQ4_NL)");
    }
    weights_ = weights_of(*model_);
    const ModelConfig& c = model_->config();
    SS_CHECK_ARG(c.head_dim <= kMaxHeadDim && c.head_dim % 2 == 0, "device='cuda': head_dim ", c.head_dim,
                 " is not an even number up to ", kMaxHeadDim, " (the attention kernel reads pairs)");
    // Tokens of a pass are a grid dimension of the attention kernels (gridDim.y <= 65535).
    SS_CHECK_ARG(max_tokens >= 1 && max_tokens <= 65535, "device='cuda': batch_size ", max_tokens,
                 " must be 1..65535");
    plans_ = DeviceBuffer((size_t)max_tokens * sizeof(AttentionRowPlan));
    ids_ = DeviceBuffer((size_t)max_tokens * sizeof(int32_t));
    slots_ = DeviceBuffer((size_t)max_tokens * sizeof(int64_t));
    slot_host_.resize((size_t)max_tokens);
    plan_host_.resize((size_t)max_tokens);
    tile_host_.resize((size_t)((max_tokens + kTileQueries - 1) / kTileQueries));
    tiles_ = DeviceBuffer(tile_host_.size() * sizeof(AttentionTilePlan));
    staging_ = std::make_unique<UploadStaging>(staging_bytes(c, max_tokens));
    const int64_t entries = attention_entries(max_tokens, c.n_head);
    attn_stats_ = DeviceBuffer((size_t)entries * sizeof(float2));
    attn_partials_ = DeviceBuffer((size_t)(entries * c.head_dim) * sizeof(float));
  }

  const char* name() const override { return "cuda"; }

  void matmul(const WeightMatrix& w, const float* x, int64_t n, float* y) override {
    const uint8_t* dw = weights_->resolve(w.data, (size_t)(w.rows * w.row_bytes));
    launch_matmul(w.type, dw, w.rows, w.cols, w.row_bytes, x, n, y, nullptr);
    check_launch("matmul");
  }
  void matmul_shared_input(const WeightMatrix* const* ws, float* const* ys, int count, const float* x,
                           int64_t n) override {
    for (int i = 0; i < count; ++i) matmul(*ws[i], x, n, ys[i]);
  }
  void embed(const WeightMatrix& table, const int32_t* ids, int64_t n, float* out) override {
    const uint8_t* dt = weights_->resolve(table.data, (size_t)(table.rows * table.row_bytes));
    SS_CHECK_ARG(n <= max_tokens_, "embed of ", n, " tokens");
    staging_->copy_to_device(ids_.data(), ids, (size_t)n * sizeof(int32_t));
    embed_kernel<<<(unsigned)n, kThreads>>>(table.type, dt, table.row_bytes, ids_.as<int32_t>(), table.cols, out);
    check_launch("embed");
  }
  void rms_norm(const float* x, const float* weight, int64_t rows, int64_t d, float eps, float* out) override {
    cuda::rms_norm(x, weights_->resolve(weight, d), rows, d, eps, out);
  }
  void layer_norm(const float* x, const float* weight, const float* bias, int64_t rows, int64_t d, float eps,
                  float* out) override {
    layer_norm_kernel<<<(unsigned)rows, kThreads>>>(x, weights_->resolve(weight, d),
                                                    bias != nullptr ? weights_->resolve(bias, d) : nullptr, d, eps,
                                                    out);
    check_launch("layer_norm");
  }
  void glu(FfnActivation act, const float* gate, const float* up, int64_t rows, int64_t width, int64_t stride,
           float* out) override {
    glu_kernel<<<blocks_for(rows * width), kThreads>>>(act == FfnActivation::kSwiGlu ? 0 : 1, gate, up, rows, width,
                                                       stride, out);
    check_launch("glu");
  }
  void activate(FfnActivation act, float* x, int64_t n) override {
    SS_ASSERT(!is_gated(act));
    activate_kernel<<<blocks_for(n), kThreads>>>(act == FfnActivation::kGelu ? 1 : 0, x, n);
    check_launch("activate");
  }
  void clamp(float* x, float limit, int64_t n) override {
    clamp_kernel<<<blocks_for(n), kThreads>>>(x, limit, n);
    check_launch("clamp");
  }
  void add(float* y, const float* x, float s, int64_t n) override {
    add_kernel<<<blocks_for(n), kThreads>>>(y, x, s, n);
    check_launch("add");
  }
  void scale(float* x, float s, int64_t n) override {
    scale_kernel<<<blocks_for(n), kThreads>>>(x, s, n);
    check_launch("scale");
  }
  void soft_cap(float* x, float cap, int64_t n) override {
    soft_cap_kernel<<<blocks_for(n), kThreads>>>(x, cap, n);
    check_launch("soft_cap");
  }
  void rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, RopeLayout layout, const float* cos,
            const float* sin) override {
    rope_kernel<<<blocks_for(n_heads * n_rot / 2), kThreads>>>(x, n_heads, head_dim, n_rot,
                                                               layout == RopeLayout::kAdjacentPairs ? 1 : 0, cos, sin);
    check_launch("rope");
  }

  void attention(const AttentionCall& call) override {
    const SinkCache& cache = *call.cache;
    DeviceCache& dc = device_cache(cache);
    SS_CHECK_ARG(call.n <= max_tokens_, "attention over ", call.n, " tokens");
    uint64_t rows = 0;
    int64_t max_rows = 1;
    for (int64_t b = 0; b < call.n; ++b) {
      const bool separate = call.separate_sink_query != nullptr && call.separate_sink_query[b];
      plan_host_[(size_t)b] = plan_attention_row(cache, call.layer, call.t0 + (uint64_t)b, separate);
      rows += (uint64_t)plan_rows(plan_host_[(size_t)b]);
      max_rows = std::max(max_rows, plan_rows(plan_host_[(size_t)b]));
    }
    staging_->copy_to_device(plans_.data(), plan_host_.data(), (size_t)call.n * sizeof(AttentionRowPlan));
    const bool tiled = call.n >= kTileQueries;  // a prefill chunk: queries in tiles
    const int64_t n_tiles = (call.n + kTileQueries - 1) / kTileQueries;
    int64_t max_candidates = 1;
    if (tiled) {
      for (int64_t i = 0; i < n_tiles; ++i) {
        tile_host_[(size_t)i] = plan_attention_tile(plan_host_.data(), i * kTileQueries,
                                                    std::min(kTileQueries, call.n - i * kTileQueries),
                                                    cache.ring_slots(call.layer));
        max_candidates = std::max(max_candidates, tile_candidates(tile_host_[(size_t)i]));
      }
      staging_->copy_to_device(tiles_.data(), tile_host_.data(), (size_t)n_tiles * sizeof(AttentionTilePlan));
    }
    AttentionArgs a = attention_args(cache, call.layer, call.n_head, dc.keys.as<uint8_t>() + dc.layer_offset[(size_t)call.layer],
                                     dc.values.as<uint8_t>() + dc.layer_offset[(size_t)call.layer]);
    a.q = call.q;
    a.q_sink = call.q_sink;
    a.plans = plans_.as<AttentionRowPlan>();
    a.scale = call.scale;
    a.softcap = call.softcap;
    a.slopes = call.alibi_slopes != nullptr ? weights_->resolve(call.alibi_slopes, call.n_head) : nullptr;
    a.sink_logits = call.sink_logits != nullptr ? weights_->resolve(call.sink_logits, call.n_head) : nullptr;
    a.stats = attn_stats_.as<float2>();
    a.partials = attn_partials_.as<float>();
    a.out = call.out;
    a.tiles = tiles_.as<AttentionTilePlan>();
    if (tiled)
      launch_tile_attention(a, call.n, n_tiles, max_candidates, cache.type() == KvType::kF16);
    else
      launch_attention(a, call.n, max_rows, cache.type() == KvType::kF16);
    entries_ += rows * (uint64_t)call.n_head;
  }
  uint64_t entries_attended() const override { return entries_; }

  void bind_scratch(ForwardScratch& s) override {
    // One device allocation carved into the scratch's buffers (256-byte aligned: the quant matmul
    // reads its input as float4), made on the first pass and kept.
    std::vector<size_t> sizes = {s.x.size(), s.h.size(), s.qkv.size(), s.q.size(), s.q_sink.size(), s.k.size(),
                                 s.v.size(), s.attn.size(), s.branch.size(), s.gate.size(), s.up.size(),
                                 (size_t)(s.max_tokens * model_->n_vocab())};
    for (const ForwardScratch::RopeTables& t : s.rope)
      for (const std::vector<float>* v : {&t.cos, &t.sin, &t.cos_sink, &t.sin_sink}) sizes.push_back(v->size());
    size_t total = 0;
    for (size_t n : sizes) total += (n * sizeof(float) + 255) / 256 * 256;
    if (scratch_.size() < total) scratch_ = DeviceBuffer(total);
    uint8_t* at = scratch_.as<uint8_t>();
    size_t i = 0;
    const auto next = [&]() -> float* {
      const size_t n = sizes[i++];
      float* p = n == 0 ? nullptr : reinterpret_cast<float*>(at);
      at += (n * sizeof(float) + 255) / 256 * 256;
      return p;
    };
    ForwardBuffers& b = s.buf;
    for (float** p : {&b.x, &b.h, &b.qkv, &b.q, &b.q_sink, &b.k, &b.v, &b.attn, &b.branch, &b.gate, &b.up, &b.logits})
      *p = next();
    b.rope.resize(s.rope.size());
    for (ForwardBuffers::Rope& r : b.rope)
      for (float** p : {&r.cos, &r.sin, &r.cos_sink, &r.sin_sink}) *p = next();
  }
  void upload(float* dst, const float* host_src, int64_t n) override {
    if (n > 0) staging_->copy_to_device(dst, host_src, (size_t)n * sizeof(float));
  }
  void download(float* host_dst, const float* src, int64_t n) override {
    if (n == 0) return;
    SS_CUDA_CHECK(cudaMemcpy(host_dst, src, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
    staging_->reclaim();  // the copy above waited for everything queued before it
  }
  void copy_rows(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
                 int64_t width) override {
    SS_CUDA_CHECK(cudaMemcpy2DAsync(dst, (size_t)dst_stride * sizeof(float), src, (size_t)src_stride * sizeof(float),
                                    (size_t)width * sizeof(float), (size_t)rows, cudaMemcpyDeviceToDevice));
  }
  void add_bias(float* y, const float* bias, int64_t rows, int64_t d) override {
    add_bias_kernel<<<blocks_for(rows * d), kThreads>>>(y, weights_->resolve(bias, d), rows, d);
    check_launch("add_bias");
  }
  void store_kv(SinkCache& cache, int64_t layer, uint64_t t, const float* key, const float* value) override {
    store(cache, layer, t, 1, key, value, cache.row_elements());
  }
  void store_kv_rows(SinkCache& cache, int64_t layer, uint64_t t0, int64_t n, const float* keys,
                     const float* values) override {
    store(cache, layer, t0, n, keys, values, cache.row_elements());
  }
  void rope_rows(float* x, int64_t rows, int64_t row_stride, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                 RopeLayout layout, const float* cos, const float* sin) override {
    rope_rows_kernel<<<blocks_for(rows * n_heads * n_rot / 2), kThreads>>>(
        x, rows, row_stride, n_heads, head_dim, n_rot, layout == RopeLayout::kAdjacentPairs ? 1 : 0, cos, sin);
    check_launch("rope_rows");
  }

  void download_cache(const SinkCache& cache, uint8_t* keys, uint8_t* values) override {
    DeviceCache& dc = device_cache(cache);
    const size_t bytes = twin_bytes(cache, dc);
    // cudaMemcpy to pageable memory: after everything queued before it, on the legacy stream.
    SS_CUDA_CHECK(cudaMemcpy(keys, dc.keys.data(), bytes, cudaMemcpyDeviceToHost));
    SS_CUDA_CHECK(cudaMemcpy(values, dc.values.data(), bytes, cudaMemcpyDeviceToHost));
  }

  void upload_cache(const SinkCache& cache, const uint8_t* keys, const uint8_t* values) override {
    DeviceCache& dc = device_cache(cache);
    const size_t bytes = twin_bytes(cache, dc);
    SS_CUDA_CHECK(cudaMemcpy(dc.keys.data(), keys, bytes, cudaMemcpyHostToDevice));
    SS_CUDA_CHECK(cudaMemcpy(dc.values.data(), values, bytes, cudaMemcpyHostToDevice));
  }

 private:
  // Tokens t0 .. t0+n-1 into their slots (SinkCache::slot_of, on the host; uploaded with the rows).
  void store(SinkCache& cache, int64_t layer, uint64_t t0, int64_t n, const float* keys, const float* values,
             int64_t row) {
    SS_CHECK_ARG(n >= 1 && n <= max_tokens_, "store of ", n, " tokens");
    DeviceCache& dc = device_cache(cache);
    for (int64_t b = 0; b < n; ++b) slot_host_[(size_t)b] = store_slot(cache, layer, t0 + (uint64_t)b);
    staging_->copy_to_device(slots_.data(), slot_host_.data(), (size_t)n * sizeof(int64_t));
    const size_t offset = dc.layer_offset[(size_t)layer];
    store_kv_kernel<<<blocks_for(n * row), kThreads>>>(keys, values, dc.keys.as<uint8_t>() + offset,
                                                       dc.values.as<uint8_t>() + offset, n, slots_.as<int64_t>(),
                                                       cache.n_head_kv(), cache.head_dim(), cache.n_slots(layer),
                                                       cache.type() == KvType::kF16 ? 1 : 0);
    check_launch("store_kv");
  }

  // The device twin of a session's SinkCache (the same per-layer layout), made on first use.
  struct DeviceCache {
    const SinkCache* owner = nullptr;
    std::vector<int64_t> slots;         // n_slots per layer
    std::vector<size_t> layer_offset;   // bytes before each layer
    KvType type = KvType::kF16;
    DeviceBuffer keys, values;
  };
  // The device twin holds the host layout byte for byte (SinkCache's per-layer offsets, no padding).
  static size_t twin_bytes(const SinkCache& cache, const DeviceCache& dc) {
    const size_t bytes = cache.bytes() / 2;
    SS_ASSERT(dc.keys.size() == bytes && dc.values.size() == bytes);
    return bytes;
  }

  DeviceCache& device_cache(const SinkCache& cache) {
    bool same = cache_.owner == &cache && cache_.type == cache.type() && (int64_t)cache_.slots.size() == cache.n_layer();
    for (int64_t l = 0; same && l < cache.n_layer(); ++l) same = cache_.slots[(size_t)l] == cache.n_slots(l);
    if (same) return cache_;  // (checked per call, allocation-free: the session's cache, every time)
    std::vector<int64_t> slots;
    for (int64_t l = 0; l < cache.n_layer(); ++l) slots.push_back(cache.n_slots(l));
    DeviceCache dc;
    dc.owner = &cache;
    dc.slots = slots;
    dc.type = cache.type();
    size_t total = 0;
    for (int64_t n : slots) {
      dc.layer_offset.push_back(total);
      total += (size_t)(cache.n_head_kv() * n) * cache.head_row_bytes();
    }
    dc.keys = DeviceBuffer(total);
    dc.values = DeviceBuffer(total);
    // Zeros, not whatever the allocation held: the attention kernels multiply the rows of lanes
    // past a range's end by a weight of 0, and 0 times a NaN left in memory would be NaN.
    SS_CUDA_CHECK(cudaMemset(dc.keys.data(), 0, total));
    SS_CUDA_CHECK(cudaMemset(dc.values.data(), 0, total));
    cache_ = std::move(dc);
    return cache_;
  }

  std::shared_ptr<const Model> model_;
  int64_t max_tokens_, capacity_;
  std::shared_ptr<DeviceWeights> weights_;
  DeviceBuffer scratch_, plans_, ids_, slots_;
  std::vector<int64_t> slot_host_;
  DeviceBuffer attn_stats_, attn_partials_;  // attention's per-range statistics and partial sums
  std::vector<AttentionRowPlan> plan_host_;
  std::vector<AttentionTilePlan> tile_host_;
  DeviceBuffer tiles_;
  std::unique_ptr<UploadStaging> staging_;  // every host -> device copy of a pass (the weights' aside)
  DeviceCache cache_;
  uint64_t entries_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_backend(std::shared_ptr<const Model> model, int64_t max_tokens, int64_t capacity) {
  return std::make_unique<CudaBackend>(std::move(model), max_tokens, capacity);
}

void attend_host(const SinkCache& cache, int64_t layer, uint64_t t, int64_t n_head, const float* q_sink,
                 const float* q_window, float scale, const float* alibi_slopes, float softcap,
                 const float* sink_logits, float* out) {
  std::string why;
  if (!available(&why)) throw CudaError(why);
  const int64_t head_dim = cache.head_dim(), n_head_kv = cache.n_head_kv();
  SS_CHECK_ARG(n_head % n_head_kv == 0 && head_dim <= kMaxHeadDim && head_dim % 2 == 0, "attend_host: ", n_head,
               " heads over ",
               n_head_kv, " KV heads of ", head_dim);
  const size_t layer_bytes = (size_t)(n_head_kv * cache.n_slots(layer)) * cache.head_row_bytes();
  const DeviceBuffer keys = upload(cache.key_rows(layer, 0), layer_bytes);
  const DeviceBuffer values = upload(cache.value_rows(layer, 0), layer_bytes);
  const size_t q_bytes = (size_t)(n_head * head_dim) * sizeof(float);
  const DeviceBuffer qw = upload(q_window, q_bytes), qs = upload(q_sink, q_bytes);
  const AttentionRowPlan plan = plan_attention_row(cache, layer, t, true);
  const DeviceBuffer plans = upload(&plan, sizeof(plan));
  DeviceBuffer slopes, sinks;
  if (alibi_slopes != nullptr) slopes = upload(alibi_slopes, (size_t)n_head * sizeof(float));
  if (sink_logits != nullptr) sinks = upload(sink_logits, (size_t)n_head * sizeof(float));
  DeviceBuffer result(q_bytes);
  const int64_t entries = attention_entries(1, n_head);
  DeviceBuffer stats((size_t)entries * sizeof(float2)), partials((size_t)(entries * head_dim) * sizeof(float));
  AttentionArgs a = attention_args(cache, layer, n_head, keys.as<uint8_t>(), values.as<uint8_t>());
  a.q = qw.as<float>();
  a.q_sink = qs.as<float>();
  a.plans = plans.as<AttentionRowPlan>();
  a.scale = scale;
  a.softcap = softcap;
  a.slopes = alibi_slopes != nullptr ? slopes.as<float>() : nullptr;
  a.sink_logits = sink_logits != nullptr ? sinks.as<float>() : nullptr;
  a.stats = stats.as<float2>();
  a.partials = partials.as<float>();
  a.out = result.as<float>();
  launch_attention(a, 1, plan_rows(plan), cache.type() == KvType::kF16);
  synchronize();
  result.download(out, q_bytes);
}

void elementwise_host(const std::string& op, const float* a, int64_t rows, int64_t cols, const float* b, int64_t nb,
                      const float* c, int64_t nc, float p, float* out) {
  std::string why;
  if (!available(&why)) throw CudaError(why);
  const int64_t n = rows * cols;
  SS_CHECK_ARG(rows > 0 && cols > 0, op, ": ", rows, " x ", cols);
  DeviceBuffer x = upload(a, (size_t)n * sizeof(float));
  const DeviceBuffer db = nb > 0 ? upload(b, (size_t)nb * sizeof(float)) : DeviceBuffer();
  const DeviceBuffer dc = nc > 0 ? upload(c, (size_t)nc * sizeof(float)) : DeviceBuffer();
  DeviceBuffer y((size_t)n * sizeof(float));
  float* xp = x.as<float>();
  if (op == "layer_norm") {
    SS_CHECK_ARG(nb == cols && (nc == 0 || nc == cols), "layer_norm: weight and bias must have cols values");
    layer_norm_kernel<<<(unsigned)rows, kThreads>>>(xp, db.as<float>(), nc > 0 ? dc.as<float>() : nullptr, cols, p,
                                                    y.as<float>());
  } else if (op == "gelu" || op == "gelu_tanh") {
    activate_kernel<<<blocks_for(n), kThreads>>>(op == "gelu" ? 1 : 0, xp, n);
    y = std::move(x);
  } else if (op == "swiglu" || op == "geglu") {
    SS_CHECK_ARG(nb == n, op, ": up must have the shape of gate");
    glu_kernel<<<blocks_for(n), kThreads>>>(op == "swiglu" ? 0 : 1, xp, db.as<float>(), rows, cols, cols, y.as<float>());
  } else if (op == "rope_adjacent" || op == "rope_neox") {
    SS_CHECK_ARG(nb == nc && nb >= 1 && 2 * nb <= cols, op, ": cos and sin need n_rot / 2 <= head_dim / 2 values");
    rope_kernel<<<blocks_for(rows * nb), kThreads>>>(xp, rows, cols, 2 * nb, op == "rope_adjacent" ? 1 : 0,
                                                     db.as<float>(), dc.as<float>());
    y = std::move(x);
  } else if (op == "soft_cap") {
    soft_cap_kernel<<<blocks_for(n), kThreads>>>(xp, p, n);
    y = std::move(x);
  } else if (op == "clamp") {
    clamp_kernel<<<blocks_for(n), kThreads>>>(xp, p, n);
    y = std::move(x);
  } else {
    throw ArgumentError(cat("unknown op '", op, "'"));
  }
  check_launch(op);
  synchronize();
  y.download(out, (size_t)n * sizeof(float));
}

std::shared_ptr<void> retain_weights(std::shared_ptr<const Model> model) {
  // The weights are destroyed before the model (members go in reverse order): DeviceWeights may
  // unregister the model's mapped file image.
  struct Held {
    std::shared_ptr<const Model> model;
    std::shared_ptr<DeviceWeights> weights;
  };
  if (std::string why; !available(&why)) throw CudaError(cat("device='cuda': ", why));
  std::shared_ptr<DeviceWeights> weights = weights_of(*model);
  return std::make_shared<Held>(Held{std::move(model), std::move(weights)});
}

size_t resident_weight_bytes(const Model& model) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry().find(&model);
  if (it == registry().end()) return 0;
  std::shared_ptr<DeviceWeights> w = it->second.lock();
  return w ? w->resident() : 0;
}

}  // namespace sinkstream::cuda
