// Error checks shared by the CUDA sources (cuda_ops.cu, cuda_backend.cu); nvcc only.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "core/error.h"
#include "ops/cuda/cuda_ops.h"

namespace sinkstream::cuda::detail {

// `what` is the call as written (the macro's #call) or a description of a launch.
inline void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  // cudaGetLastError() clears the error a failed call leaves behind (sticky errors, i.e. kernel
  // faults, stay: the context is unusable after them and every later call reports it).
  (void)cudaGetLastError();
  throw CudaError(cat("CUDA error in ", what, ": ", cudaGetErrorString(status), " (", cudaGetErrorName(status),
                      " = ", (int)status, ")"));
}

// After a <<<...>>> launch: a bad configuration is reported by cudaGetLastError at once.
inline void check_launch(const std::string& what) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw CudaError(cat("CUDA error launching ", what, ": ", cudaGetErrorString(status), " (",
                        cudaGetErrorName(status), " = ", (int)status, ")"));
}

}  // namespace sinkstream::cuda::detail

#define SS_CUDA_CHECK(call) ::sinkstream::cuda::detail::check((call), #call)
