// The CUDA backend: the Backend interface (ops/backend.h) over device memory, so the one decoder
// (model/decoder.cc) runs every family on a GPU. Plain C++ (no CUDA type), like cuda_ops.h.
//
// What lives where:
//   weights      uploaded once per model, on first use, and shared by every CUDA session of that
//                model (a registry keyed by the Model, which each backend and each retain_weights
//                handle keeps alive). The backend
//                maps each host pointer the decoder passes (a WeightMatrix's blocks, a norm or bias
//                vector, the ALiBi slopes) to its device copy. On an integrated GPU (Jetson:
//                cudaDeviceProp::integrated) the mmap'd GGUF image is registered and mapped instead
//                (cudaHostRegister, read-only): one copy of the weights in the shared memory.
//   activations  device buffers of exactly the ForwardScratch shapes (bind_scratch), plus a
//                (max_tokens, n_vocab) logits buffer; only the logits rows asked for come back.
//   K/V cache    a device twin of the session's SinkCache, same layout (per layer and KV head,
//                n_slots rows of head_dim f16 or f32 values), written by store_kv at slot_of(t);
//                a CUDA session's host SinkCache holds the geometry only (host_storage = false).
//   positions    RoPE cos/sin tables and the attention plans (attention_plan.h) are computed on the
//                host from the SinkCache, exactly as for the CPU, and uploaded per call through
//                pinned staging (cudaMemcpyAsync: the host does not wait).
// Everything runs in order on the legacy default stream; download() synchronizes.
//
// Tested on an NVIDIA H200 (tests/test_cuda.py, tests/test_cuda_forward.py; README.md, "GPU").
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "ops/backend.h"

namespace sinkstream {
class Model;
namespace cuda {

// The backend of one CUDA session: max_tokens rows per pass, a cache of `capacity` entries.
// Throws CudaError naming the reason when no CUDA device is usable (no GPU, no driver), and
// ArgumentError when a weight type of the model has no CUDA kernel.
std::unique_ptr<Backend> make_backend(std::shared_ptr<const Model> model, int64_t max_tokens, int64_t capacity);

// Keeps `model`'s device weights (uploaded on first use, as for a session) for as long as the
// returned handle lives, also while no session of the model exists: without it the weights go with
// the model's last CUDA session and the next session uploads them again. Model(device="cuda") holds
// one (python/sinkstream/model.py). Throws CudaError when no CUDA device is usable.
std::shared_ptr<void> retain_weights(std::shared_ptr<const Model> model);

// Device memory the weights of `model` occupy now (0 before the first CUDA session's first pass;
// 0 on an integrated GPU, where the file's pages are mapped), for benchmarks.
size_t resident_weight_bytes(const Model& model);

// Test hook: query t's attention over one layer of a host SinkCache by the backend's attention
// kernel (the layer's K/V rows and the plan uploaded, the output downloaded): q_sink and q_window
// (n_head, head_dim) as ops.h attend takes them, alibi_slopes (n_head) or nullptr, softcap 0: none,
// sink_logits (n_head) learned sinks or nullptr. out: (n_head, head_dim). For tests/test_cuda.py,
// which compares it with the CPU kernels.
void attend_host(const SinkCache& cache, int64_t layer, uint64_t t, int64_t n_head, const float* q_sink,
                 const float* q_window, float scale, const float* alibi_slopes, float softcap,
                 const float* sink_logits, float* out);

// Test hook: one of the backend's row-wise / elementwise kernels on host arrays (upload, run,
// download), for tests/test_cuda.py, which compares each with its CPU twin in ops.h. op and inputs:
//   "layer_norm"            a (rows, cols), b weight (cols), c bias (cols) or nc = 0, p eps
//   "gelu", "gelu_tanh"     a (rows, cols)
//   "swiglu", "geglu"       a gate, b up, both (rows, cols)
//   "rope_adjacent", "rope_neox"  a (n_heads = rows, head_dim = cols), b cos, c sin (n_rot / 2 each)
//   "soft_cap", "clamp"     a (rows, cols), p the cap / limit
// out: (rows, cols). ArgumentError for an unknown op or mismatched sizes.
void elementwise_host(const std::string& op, const float* a, int64_t rows, int64_t cols, const float* b, int64_t nb,
                      const float* c, int64_t nc, float p, float* out);

}  // namespace cuda
}  // namespace sinkstream
