// CUDA kernels and host glue behind cuda_ops.h.
//
// Self-contained on purpose: this file is the static library sinkstream_cuda, which the engine links
// (PUBLIC), so it may use header-only engine code (quant_blocks.h, error.h) but no function defined
// in a .cc of the engine: a static library listed after the engine on the link line could not
// resolve it. The GGUF block sizes are therefore taken from the structs themselves (sizeof).
//
// matmul layout (Y = X . W^T, W rows of raw GGUF blocks, quant/quant_blocks.h):
//   one warp per output row; a block of kWarpsPerBlock warps covers kWarpsPerBlock rows. Each warp
//   walks its row once per tile of NT tokens (NT = 1 for decode, 8 otherwise), so W is read from
//   memory ceil(n / 8) times per call and X comes from L1/L2.
//   Quant rows: a 32-element block is shared by 4 lanes (a "quarter" each, 8 elements), so a warp
//   reads 8 consecutive blocks per step; lane loads of X are then two float4 per token, and the warp
//   as a whole reads a contiguous kilobyte of X (coalesced).
//   Float rows (F32, F16): lane l takes columns l, l + 32, ... (coalesced loads of W and X).
// Every lane accumulates in float32 with FMAs; the warp then sums its 32 partials in a shuffle tree.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "ops/cuda/block_decode.h"
#include "ops/cuda/cuda_check.cuh"
#include "ops/cuda/cuda_ops.h"
#include "quant/quant_blocks.h"

namespace sinkstream::cuda {

namespace {

using detail::check_launch;

// ---- types --------------------------------------------------------------------------------------

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 4;          // matmul: output rows per thread block
constexpr int kTokenTile = 8;              // matmul: tokens sharing one pass over a weight row
constexpr int kMaxGridY = 65535;           // CUDA's limit on gridDim.y (token tiles loop beyond it)
constexpr int kNormThreads = 256;          // rms_norm: threads per row
constexpr int kElementwiseThreads = 256;

struct BlockGeometry {
  const char* name;
  int64_t elements;  // per block (1 for the float types)
  int64_t bytes;     // per block
};

// Sizes from the block structs (GGUF spec: Q4_0 18 bytes, Q4_1 20, Q8_0 34 per 32 elements; the
// rest in block_decode.h).
bool geometry(GgmlType type, BlockGeometry* g) {
  if (!decodable(type)) return false;
  *g = {decodable_name(type), block_elements(type), block_bytes(type)};
  return true;
}

// ---- per-lane work (host-callable too) ---------------------------------------------------------
// Everything a lane computes before the warp reduction is __host__ __device__, so the block
// decoding and the lane -> element mapping can be run and checked on a machine without a GPU (the
// kernels below add only the warp sum, the grid mapping and the store).
#define SS_HD __host__ __device__ __forceinline__

// Block fields are read as 16-bit words: every block size here is even and rows start at multiples
// of the block size from a cudaMalloc base, so 2-byte alignment is all that is guaranteed (Q4_0's
// 18-byte blocks put qs at odd multiples of 2, never at 4).
SS_HD uint32_t load_u16(const uint8_t* p) {
#ifdef __CUDA_ARCH__
  return __ldg(reinterpret_cast<const unsigned short*>(p));  // read-only data cache
#else
  return *reinterpret_cast<const uint16_t*>(p);
#endif
}

// Four bytes at p (2-byte aligned) as a little-endian word: byte i in bits 8i .. 8i+7.
SS_HD uint32_t load_u32_a2(const uint8_t* p) { return load_u16(p) | (load_u16(p + 2) << 16); }

SS_HD float half_bits(uint32_t h) { return __half2float(__ushort_as_half((unsigned short)h)); }

// a * b rounded on its own: never contracted with a following add into an FMA.
SS_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;  // host code of the check only (x86 host builds here have no FMA contraction)
#endif
}

SS_HD float load_f32(const float* p) {
#ifdef __CUDA_ARCH__
  return __ldg(p);
#else
  return *p;
#endif
}

// Dequantizers of one quarter (8 elements) of a 32-element block, in gguf-py's operation order so
// the weights are bit-exact with gguf.quants.dequantize (quant_blocks.h lists the formulas).
// The quarter's 8 elements are two runs of 4 consecutive elements, starting at run0(k) and run1(k)
// within the block; w[0..3] belong to the first run, w[4..7] to the second.

// Q4_0 (block_q4_0: half d; uint8 qs[16]): element j is the low nibble of qs[j], element j + 16 the
// high nibble; value d * (q - 8). Quarter k reads qs[4k .. 4k+3]: elements 4k.. and 16 + 4k..
struct Q4_0Kernel {
  static constexpr int kBytes = sizeof(BlockQ4_0);
  SS_HD static int run0(int k) { return 4 * k; }
  SS_HD static int run1(int k) { return 16 + 4 * k; }
  SS_HD static void load(const uint8_t* block, int k, float w[8]) {
    const float d = half_bits(load_u16(block + offsetof(BlockQ4_0, d)));
    const uint32_t q = load_u32_a2(block + offsetof(BlockQ4_0, qs) + 4 * k);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * (float)((int)((q >> (8 * i)) & 0x0f) - 8);
      w[4 + i] = d * (float)((int)((q >> (8 * i + 4)) & 0x0f) - 8);
    }
  }
};

// Q4_1 (block_q4_1: half d, half m; uint8 qs[16]): nibbles as Q4_0; value d * q + m. gguf-py rounds
// the product before the add, so the product is kept out of an FMA.
struct Q4_1Kernel {
  static constexpr int kBytes = sizeof(BlockQ4_1);
  SS_HD static int run0(int k) { return 4 * k; }
  SS_HD static int run1(int k) { return 16 + 4 * k; }
  SS_HD static void load(const uint8_t* block, int k, float w[8]) {
    const float d = half_bits(load_u16(block + offsetof(BlockQ4_1, d)));
    const float m = half_bits(load_u16(block + offsetof(BlockQ4_1, m)));
    const uint32_t q = load_u32_a2(block + offsetof(BlockQ4_1, qs) + 4 * k);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = mul_rn(d, (float)((q >> (8 * i)) & 0x0f)) + m;
      w[4 + i] = mul_rn(d, (float)((q >> (8 * i + 4)) & 0x0f)) + m;
    }
  }
};

// Q8_0 (block_q8_0: half d; int8 qs[32]): value d * q. Quarter k reads elements 8k .. 8k+7.
struct Q8_0Kernel {
  static constexpr int kBytes = sizeof(BlockQ8_0);
  SS_HD static int run0(int k) { return 8 * k; }
  SS_HD static int run1(int k) { return 8 * k + 4; }
  SS_HD static void load(const uint8_t* block, int k, float w[8]) {
    const float d = half_bits(load_u16(block + offsetof(BlockQ8_0, d)));
    const uint8_t* qs = block + offsetof(BlockQ8_0, qs) + 8 * k;
    const uint32_t lo = load_u32_a2(qs), hi = load_u32_a2(qs + 4);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * (float)(int8_t)(uint8_t)(lo >> (8 * i));
      w[4 + i] = d * (float)(int8_t)(uint8_t)(hi >> (8 * i));
    }
  }
};

// F32 / F16 rows: element c is the c-th float / IEEE half (GGUF stores them little-endian).
struct F32Kernel {
  SS_HD static float load(const uint8_t* row, int64_t c) { return load_f32(reinterpret_cast<const float*>(row) + c); }
};
struct F16Kernel {
  SS_HD static float load(const uint8_t* row, int64_t c) { return half_bits(load_u16(row + 2 * c)); }
};
// Every other type the families use (BF16, Q5_0, Q5_1, IQ4_NL, Q2_K .. Q6_K) runs the float kernel's
// layout, each element decoded by block_decode.h (the code the host checks against dequantize.cc;
// TYPE is a template argument, so decode_element's switch folds away). Slower than block-wise
// kernels (each element re-reads its block's scales, from L1): a block-wise K-quant kernel is
// listed as missing in README.md.
template <GgmlType TYPE>
struct DecodedKernel {
  SS_HD static float load(const uint8_t* row, int64_t c) { return decode_element(TYPE, row, c); }
};

// Partial dot products of one lane for tokens t < nt (nt <= NT) of a token tile: acc[t] = sum over
// the lane's elements of W[row] (wrow) times X[t] (x: the tile's first row, rows `cols` apart).
// Quant rows: lane l takes quarter l % 4 of blocks l / 4, l / 4 + 8, ... (nb blocks per row).
template <typename Q, int NT>
SS_HD void quant_lane_partials(const uint8_t* __restrict__ wrow, int64_t nb, const float* __restrict__ x,
                               int64_t cols, int nt, int lane, float acc[NT]) {
  const int quarter = lane % 4;
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
  for (int64_t b = lane / 4; b < nb; b += kWarpSize / 4) {
    float wv[8];
    Q::load(wrow + b * Q::kBytes, quarter, wv);
    const float* xb = x + b * kQK;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t < nt) {  // uniform across the warp: no divergence
        const float4 a = *reinterpret_cast<const float4*>(xb + t * cols + Q::run0(quarter));
        const float4 c = *reinterpret_cast<const float4*>(xb + t * cols + Q::run1(quarter));
        float s = acc[t];
        s = fmaf(wv[0], a.x, s); s = fmaf(wv[1], a.y, s); s = fmaf(wv[2], a.z, s); s = fmaf(wv[3], a.w, s);
        s = fmaf(wv[4], c.x, s); s = fmaf(wv[5], c.y, s); s = fmaf(wv[6], c.z, s); s = fmaf(wv[7], c.w, s);
        acc[t] = s;
      }
    }
  }
}

// Float rows: lane l takes columns l, l + 32, ... (coalesced across the warp).
template <typename F, int NT>
SS_HD void float_lane_partials(const uint8_t* __restrict__ wrow, const float* __restrict__ x, int64_t cols, int nt,
                               int lane, float acc[NT]) {
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
  for (int64_t c = lane; c < cols; c += kWarpSize) {
    const float wv = F::load(wrow, c);
#pragma unroll
    for (int t = 0; t < NT; ++t)
      if (t < nt) acc[t] = fmaf(wv, load_f32(x + t * cols + c), acc[t]);
  }
}

// Sum over the warp, every lane gets the total (xor butterfly: 5 shuffles).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Token t's warp total into y[t * rows] (y at the tile's first token and this warp's row).
template <int NT>
__device__ __forceinline__ void store_warp_sums(const float (&acc)[NT], int nt, int lane, float* y, int64_t rows) {
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float total = warp_sum(acc[t]);
    if (lane == 0 && t < nt) y[t * rows] = total;
  }
}

// ---- kernels ------------------------------------------------------------------------------------

// y[t * rows + row] = sum_c x[t * cols + c] * W[row][c] for the rows of this block and the token tiles
// blockIdx.y, blockIdx.y + gridDim.y, ... Quant rows have nb = cols / 32 blocks.
template <typename Q, int NT>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarpSize)
    matmul_quant_kernel(const uint8_t* __restrict__ w, int64_t rows, int64_t nb, int64_t row_bytes,
                        const float* __restrict__ x, int64_t n, int64_t cols, float* __restrict__ y) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (row >= rows) return;  // the whole warp leaves together, so the shuffles below stay full-warp
  for (int64_t t0 = (int64_t)blockIdx.y * NT; t0 < n; t0 += (int64_t)gridDim.y * NT) {
    const int nt = (int)min((int64_t)NT, n - t0);
    float acc[NT];
    quant_lane_partials<Q, NT>(w + row * row_bytes, nb, x + t0 * cols, cols, nt, lane, acc);
    store_warp_sums<NT>(acc, nt, lane, y + t0 * rows + row, rows);
  }
}

// As matmul_quant_kernel for rows of plain floats (block size 1, any cols).
template <typename F, int NT>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarpSize)
    matmul_float_kernel(const uint8_t* __restrict__ w, int64_t rows, int64_t row_bytes,
                        const float* __restrict__ x, int64_t n, int64_t cols, float* __restrict__ y) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (row >= rows) return;
  for (int64_t t0 = (int64_t)blockIdx.y * NT; t0 < n; t0 += (int64_t)gridDim.y * NT) {
    const int nt = (int)min((int64_t)NT, n - t0);
    float acc[NT];
    float_lane_partials<F, NT>(w + row * row_bytes, x + t0 * cols, cols, nt, lane, acc);
    store_warp_sums<NT>(acc, nt, lane, y + t0 * rows + row, rows);
  }
}

// One thread block per row. The sum of squares is accumulated in double like the CPU reference
// (ops/cpu/basic_ops.cc: d can be thousands of squares); that is a few FP64 adds per thread, noise
// next to reading the row. Each thread rescales exactly the elements it read, after the barrier of
// the reduction, so out may alias x.
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_kernel(const float* x, const float* __restrict__ weight, int64_t d, float eps, float* out) {
  const float* xr = x + (int64_t)blockIdx.x * d;
  float* yr = out + (int64_t)blockIdx.x * d;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) sum += (double)xr[i] * (double)xr[i];
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  __shared__ double warp_sums[kNormThreads / kWarpSize];
  __shared__ float scale_shared;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int i = 0; i < (int)(blockDim.x / kWarpSize); ++i) total += warp_sums[i];
    scale_shared = (float)(1.0 / sqrt(total / (double)d + (double)eps));
  }
  __syncthreads();
  const float scale = scale_shared;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) yr[i] = xr[i] * scale * weight[i];
}

// silu(g) * u = g / (1 + exp(-g)) * u, the CPU formula; expf and the division are IEEE-accurate
// here (no --use_fast_math). Grid-stride loop, so any n fits any grid.
__global__ void silu_mul_kernel(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// ---- launch helpers -----------------------------------------------------------------------------

// The grid of a matmul: kWarpsPerBlock rows per block in x, token tiles in y (NT = 1 for decode).
struct MatmulGrid {
  dim3 grid, block;
};
MatmulGrid matmul_grid(int64_t rows, int64_t n) {
  const unsigned grid_x = (unsigned)((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const unsigned grid_y = n == 1 ? 1u : (unsigned)std::min<int64_t>((n + kTokenTile - 1) / kTokenTile, kMaxGridY);
  return {dim3(grid_x, grid_y), dim3(kWarpsPerBlock * kWarpSize)};
}

template <typename Q>
void launch_quant(const uint8_t* w, int64_t rows, int64_t cols, int64_t row_bytes, const float* x, int64_t n,
                  float* y, cudaStream_t stream) {
  const int64_t nb = cols / kQK;
  const MatmulGrid g = matmul_grid(rows, n);
  if (n == 1)
    matmul_quant_kernel<Q, 1><<<g.grid, g.block, 0, stream>>>(w, rows, nb, row_bytes, x, n, cols, y);
  else
    matmul_quant_kernel<Q, kTokenTile><<<g.grid, g.block, 0, stream>>>(w, rows, nb, row_bytes, x, n, cols, y);
}

template <typename F>
void launch_float(const uint8_t* w, int64_t rows, int64_t cols, int64_t row_bytes, const float* x, int64_t n,
                  float* y, cudaStream_t stream) {
  const MatmulGrid g = matmul_grid(rows, n);
  if (n == 1)
    matmul_float_kernel<F, 1><<<g.grid, g.block, 0, stream>>>(w, rows, row_bytes, x, n, cols, y);
  else
    matmul_float_kernel<F, kTokenTile><<<g.grid, g.block, 0, stream>>>(w, rows, row_bytes, x, n, cols, y);
}

// Validates a host or device weight's description; returns its block geometry.
BlockGeometry check_weight(const std::string& name, GgmlType type, int64_t rows, int64_t cols, int64_t row_bytes) {
  BlockGeometry g;
  SS_CHECK_ARG(geometry(type, &g), "CUDA matmul does not support weight type ", (uint32_t)type, " of ", name,
               " (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K .. Q6_K, IQ4_NL)");
  SS_CHECK_ARG(rows > 0 && cols > 0, "weight ", name, " has shape ", rows, " x ", cols);
  SS_CHECK_ARG(cols % g.elements == 0, "weight ", name, ": ", cols, " columns is not a multiple of the ", g.name,
               " block size ", g.elements);
  SS_CHECK_ARG(row_bytes == cols / g.elements * g.bytes, "weight ", name, ": row_bytes ", row_bytes, " but ",
               g.name, " x ", cols, " needs ", cols / g.elements * g.bytes);
  SS_CHECK_ARG((rows + kWarpsPerBlock - 1) / kWarpsPerBlock <= 0x7fffffff, "weight ", name, " has too many rows (",
               rows, ") for one grid");
  return g;
}

}  // namespace

// ---- device query -------------------------------------------------------------------------------

int device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  // No GPU, no driver, or only the driver's stub library: an ordinary machine, not a failure.
  if (status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver || status == cudaErrorStubLibrary) {
    (void)cudaGetLastError();
    return 0;
  }
  SS_CUDA_CHECK(status);
  return count;
}

std::vector<DeviceInfo> devices() {
  std::vector<DeviceInfo> out;
  const int count = device_count();
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    SS_CUDA_CHECK(cudaGetDeviceProperties(&prop, i));
    DeviceInfo info;
    info.index = i;
    info.name = prop.name;
    info.major = prop.major;
    info.minor = prop.minor;
    info.total_memory = prop.totalGlobalMem;
    info.multiprocessors = prop.multiProcessorCount;
    out.push_back(std::move(info));
  }
  return out;
}

bool available(std::string* why) {
  try {
    if (device_count() == 0) {
      if (why != nullptr) *why = "no CUDA device is visible (no GPU, or no NVIDIA driver loaded)";
      return false;
    }
    // cudaFree(nullptr) creates the context on the current device: the first call that can fail for
    // reasons device_count cannot see (device busy in exclusive mode, kernel image mismatch, ...).
    SS_CUDA_CHECK(cudaFree(nullptr));
    return true;
  } catch (const std::exception& e) {
    if (why != nullptr) *why = e.what();
    return false;
  }
}

bool matmul_supported(GgmlType type) {
  BlockGeometry g;
  return geometry(type, &g);
}

void synchronize() { SS_CUDA_CHECK(cudaDeviceSynchronize()); }

// ---- memory -------------------------------------------------------------------------------------

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) SS_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) (void)cudaFree(ptr_);  // a destructor must not throw; a failure here is a lost context
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
  other.ptr_ = nullptr;
  other.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
    ptr_ = other.ptr_;
    bytes_ = other.bytes_;
    other.ptr_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  SS_CHECK_ARG(offset <= bytes_ && bytes <= bytes_ - offset, "upload of ", bytes, " bytes at offset ", offset,
               " into a device buffer of ", bytes_);
  if (bytes == 0) return;
  SS_CHECK_ARG(host != nullptr, "upload from a null host pointer");
  SS_CUDA_CHECK(cudaMemcpy(static_cast<uint8_t*>(ptr_) + offset, host, bytes, cudaMemcpyHostToDevice));
}

void DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  SS_CHECK_ARG(offset <= bytes_ && bytes <= bytes_ - offset, "download of ", bytes, " bytes at offset ", offset,
               " from a device buffer of ", bytes_);
  if (bytes == 0) return;
  SS_CHECK_ARG(host != nullptr, "download to a null host pointer");
  SS_CUDA_CHECK(cudaMemcpy(host, static_cast<const uint8_t*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
}

DeviceBuffer upload(const void* host, size_t bytes) {
  DeviceBuffer buffer(bytes);
  buffer.upload(host, bytes);
  return buffer;
}

DeviceWeight upload_weight(const WeightMatrix& w) {
  check_weight(w.name, w.type, w.rows, w.cols, w.row_bytes);
  SS_CHECK_ARG(w.data != nullptr, "weight ", w.name, " has no data");
  DeviceWeight out;
  out.name = w.name;
  out.type = w.type;
  out.rows = w.rows;
  out.cols = w.cols;
  out.row_bytes = w.row_bytes;
  out.data = upload(w.data, (size_t)(w.rows * w.row_bytes));
  return out;
}

// ---- ops ----------------------------------------------------------------------------------------

void matmul(const DeviceWeight& w, const float* x, int64_t n, float* y) {
  const BlockGeometry g = check_weight(w.name, w.type, w.rows, w.cols, w.row_bytes);
  SS_CHECK_ARG(w.data.size() >= (size_t)(w.rows * w.row_bytes), "weight ", w.name, " holds ", w.data.size(),
               " device bytes, its shape needs ", w.rows * w.row_bytes);
  SS_CHECK_ARG(n >= 0, "matmul with ", w.name, ": n = ", n, " tokens");
  if (n == 0) return;
  SS_CHECK_ARG(x != nullptr && y != nullptr, "matmul with ", w.name, ": null input or output");
  // The quant kernels read X as float4 (cols is a multiple of 32, so every row stays aligned).
  SS_CHECK_ARG(g.elements == 1 || reinterpret_cast<uintptr_t>(x) % 16 == 0, "matmul with ", w.name,
               ": x must be 16-byte aligned");
  launch_matmul(w.type, w.data.as<uint8_t>(), w.rows, w.cols, w.row_bytes, x, n, y, nullptr);
  check_launch(cat("the ", g.name, " matmul kernel for ", w.name, " (", w.rows, " x ", w.cols, ", n = ", n, ")"));
}

void launch_matmul(GgmlType type, const uint8_t* w, int64_t rows, int64_t cols, int64_t row_bytes, const float* x,
                   int64_t n, float* y, void* stream_handle) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  switch (type) {
    case GgmlType::Q4_0: launch_quant<Q4_0Kernel>(w, rows, cols, row_bytes, x, n, y, stream); break;
    case GgmlType::Q4_1: launch_quant<Q4_1Kernel>(w, rows, cols, row_bytes, x, n, y, stream); break;
    case GgmlType::Q8_0: launch_quant<Q8_0Kernel>(w, rows, cols, row_bytes, x, n, y, stream); break;
    case GgmlType::F16: launch_float<F16Kernel>(w, rows, cols, row_bytes, x, n, y, stream); break;
    case GgmlType::F32: launch_float<F32Kernel>(w, rows, cols, row_bytes, x, n, y, stream); break;
#define SS_GENERIC(T) \
    case GgmlType::T: launch_float<DecodedKernel<GgmlType::T>>(w, rows, cols, row_bytes, x, n, y, stream); break;
    SS_GENERIC(BF16) SS_GENERIC(Q5_0) SS_GENERIC(Q5_1) SS_GENERIC(IQ4_NL) SS_GENERIC(Q2_K) SS_GENERIC(Q3_K)
    SS_GENERIC(Q4_K) SS_GENERIC(Q5_K) SS_GENERIC(Q6_K)
#undef SS_GENERIC
    default: SS_ASSERT(false);  // callers check decodable()
  }
}

void rms_norm(const float* x, const float* weight, int64_t n, int64_t d, float eps, float* out) {
  SS_CHECK_ARG(n >= 0 && d > 0, "rms_norm over ", n, " rows of ", d);
  SS_CHECK_ARG(n <= 0x7fffffff, "rms_norm over ", n, " rows: more than one grid holds");
  if (n == 0) return;
  SS_CHECK_ARG(x != nullptr && weight != nullptr && out != nullptr, "rms_norm: null pointer");
  rms_norm_kernel<<<(unsigned)n, kNormThreads>>>(x, weight, d, eps, out);
  check_launch(cat("the rms_norm kernel (", n, " x ", d, ")"));
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  SS_CHECK_ARG(n >= 0, "silu_mul over ", n, " values");
  if (n == 0) return;
  SS_CHECK_ARG(gate != nullptr && up != nullptr && out != nullptr, "silu_mul: null pointer");
  // Enough blocks to fill any current GPU; the grid-stride loop does the rest.
  const int64_t blocks = std::min<int64_t>((n + kElementwiseThreads - 1) / kElementwiseThreads, 4096);
  silu_mul_kernel<<<(unsigned)blocks, kElementwiseThreads>>>(gate, up, n, out);
  check_launch(cat("the silu_mul kernel (n = ", n, ")"));
}

// ---- host conveniences --------------------------------------------------------------------------

void matmul_host(const WeightMatrix& w, const float* x, int64_t n, float* y) {
  check_weight(w.name, w.type, w.rows, w.cols, w.row_bytes);
  SS_CHECK_ARG(n >= 0, "matmul with ", w.name, ": n = ", n, " tokens");
  if (n == 0) return;
  SS_CHECK_ARG(x != nullptr && y != nullptr, "matmul with ", w.name, ": null input or output");
  const DeviceWeight dw = upload_weight(w);
  const DeviceBuffer dx = upload(x, (size_t)(n * w.cols) * sizeof(float));
  DeviceBuffer dy((size_t)(n * w.rows) * sizeof(float));
  matmul(dw, dx.as<const float>(), n, dy.as<float>());
  synchronize();
  dy.download(y, dy.size());
}

void rms_norm_host(const float* x, const float* weight, int64_t n, int64_t d, float eps, float* out) {
  SS_CHECK_ARG(n >= 0 && d > 0, "rms_norm over ", n, " rows of ", d);
  if (n == 0) return;
  const DeviceBuffer dx = upload(x, (size_t)(n * d) * sizeof(float));
  const DeviceBuffer dw = upload(weight, (size_t)d * sizeof(float));
  DeviceBuffer dout((size_t)(n * d) * sizeof(float));
  rms_norm(dx.as<const float>(), dw.as<const float>(), n, d, eps, dout.as<float>());
  synchronize();
  dout.download(out, dout.size());
}

void silu_mul_host(const float* gate, const float* up, int64_t n, float* out) {
  SS_CHECK_ARG(n >= 0, "silu_mul over ", n, " values");
  if (n == 0) return;
  const DeviceBuffer dg = upload(gate, (size_t)n * sizeof(float));
  const DeviceBuffer du = upload(up, (size_t)n * sizeof(float));
  DeviceBuffer dout((size_t)n * sizeof(float));
  silu_mul(dg.as<const float>(), du.as<const float>(), n, dout.as<float>());
  synchronize();
  dout.download(out, dout.size());
}

}  // namespace sinkstream::cuda
