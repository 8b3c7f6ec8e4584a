// CUDA basics (opt-in: cmake -DSINKSTREAM_CUDA=ON): device query, device memory, and GPU twins of
// the ops.h kernels the decoder spends its time in (matmul on quantized weights, rms_norm,
// silu_mul). The backend the decoder drives is cuda_backend.h, built on these. The CPU ops in ops/cpu/ stay the specification; tests/test_cuda.py compares these
// against a NumPy reference built from gguf-py's dequantizers.
//
// A plain C++ interface: no CUDA type appears here, so code that includes this header compiles with
// the host compiler alone and only cuda_ops.cu needs nvcc. The definitions exist only in builds with
// SINKSTREAM_HAVE_CUDA=1 (CMake option SINKSTREAM_CUDA): callers test that macro before calling.
//
// Errors: a failing CUDA runtime call throws CudaError naming the call and the runtime's message
// (cudaGetErrorString); bad arguments throw ArgumentError (core/error.h), as on the CPU.
// Device pointers: every op below takes device pointers and runs on the legacy default stream, in
// order; it returns once the kernel is queued. A fault inside a kernel is reported by the next call
// that synchronizes (synchronize(), a download). The *_host helpers do upload, run, synchronize and
// download in one call, for tests and tools.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops/ops.h"
#include "quant/quant_types.h"

namespace sinkstream {

// A CUDA runtime call failed (no device, out of memory, a kernel fault, a driver too old).
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0;  // compute capability major.minor (e.g. 9.0 for H100/H200)
  int minor = 0;
  size_t total_memory = 0;  // bytes of global memory
  int multiprocessors = 0;
};

// Number of visible devices; 0 when there is none or no (new enough) driver, instead of throwing:
// a machine without a GPU is a normal case, not an error. Other runtime failures throw CudaError.
int device_count();
std::vector<DeviceInfo> devices();

// True when at least one device is visible and the runtime initialises on the current one. Never
// throws; `why` (optional) receives the reason when false.
bool available(std::string* why = nullptr);

// Weight types the GPU matmul reads directly: every type of block_decode.h (F32, F16, BF16, Q4_0,
// Q4_1, Q5_0, Q5_1, Q8_0, Q2_K .. Q6_K, IQ4_NL). Q4_0, Q4_1, Q8_0, F16 and F32 have block-wise
// kernels; the others a generic per-element kernel.
bool matmul_supported(GgmlType type);

// Bytes of device memory from cudaMalloc, freed with the object (move-only). Allocation is a
// synchronizing driver call (~us to ms): allocate once, reuse.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t size() const { return bytes_; }

  // Host -> device / device -> host copies of `bytes` at byte `offset` (synchronous; pageable host
  // memory, so the copy is staged by the driver: ~10 GB/s over PCIe 4).
  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A copy of `bytes` host bytes in a new device buffer.
DeviceBuffer upload(const void* host, size_t bytes);

// A weight matrix resident on the device: the same raw GGUF blocks as WeightMatrix (no repacking,
// so one upload of the mmap'd tensor is all it takes).
struct DeviceWeight {
  std::string name;
  GgmlType type = GgmlType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_bytes = 0;
  DeviceBuffer data;  // rows * row_bytes bytes
};

// Checks w (type supported, sizes consistent) and copies its rows * row_bytes bytes to the device.
DeviceWeight upload_weight(const WeightMatrix& w);

// Y (n x w.rows) = X (n x w.cols) . W^T on the device; x and y are device pointers, x 16-byte
// aligned (cudaMalloc memory is). Cost: n * rows * cols multiply-adds; W is read from memory
// ceil(n / 8) times (8 tokens share each read), so decode (n = 1) is bound by the weight bytes.
void matmul(const DeviceWeight& w, const float* x, int64_t n, float* y);

// out = x / sqrt(mean(x^2) + eps) * weight for n rows of length d (device pointers; out may alias x).
void rms_norm(const float* x, const float* weight, int64_t n, int64_t d, float eps, float* out);

// out = silu(gate) * up over n values (device pointers; out may alias gate or up).
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

// The matmul on raw device blocks (w: rows * row_bytes bytes of `type`, checked by the caller),
// queued on `stream` (a cudaStream_t; nullptr: the legacy default stream). The backend's entry.
void launch_matmul(GgmlType type, const uint8_t* w, int64_t rows, int64_t cols, int64_t row_bytes, const float* x,
                   int64_t n, float* y, void* stream);

// Waits for all queued work on the current device; throws CudaError for a fault in any of it.
void synchronize();

// Host-memory conveniences: upload the inputs, run, synchronize, download. Each call pays the
// transfer of every input (W included) and a device allocation: for tests, not for decoding.
void matmul_host(const WeightMatrix& w, const float* x, int64_t n, float* y);
void rms_norm_host(const float* x, const float* weight, int64_t n, int64_t d, float eps, float* out);
void silu_mul_host(const float* gate, const float* up, int64_t n, float* out);

}  // namespace cuda
}  // namespace sinkstream
