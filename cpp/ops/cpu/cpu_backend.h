// The CPU backend: ops.h's kernels (SIMD picked at run time) spread over a session's thread pool.
// One per Session: it holds the attention scratch sized for that session's cache.
#pragma once
#include <vector>

#include "core/thread_pool.h"
#include "ops/backend.h"

namespace sinkstream {

class CpuBackend final : public Backend {
 public:
  // capacity: the session's n_sink + window; n_head / head_dim / group: the model's attention.
  CpuBackend(ThreadPool& pool, int64_t capacity, int64_t n_head, int64_t n_head_kv, int64_t head_dim);
  // The bytes of attention scratch the constructor allocates for n_threads threads.
  static size_t bytes_for(int n_threads, int64_t capacity, int64_t n_head, int64_t n_head_kv, int64_t head_dim);

  const char* name() const override { return "cpu"; }
  void matmul(const WeightMatrix& w, const float* x, int64_t n, float* y) override;
  void matmul_shared_input(const WeightMatrix* const* ws, float* const* ys, int count, const float* x,
                           int64_t n) override;
  void embed(const WeightMatrix& table, const int32_t* ids, int64_t n, float* out) override;
  void rms_norm(const float* x, const float* weight, int64_t rows, int64_t d, float eps, float* out) override;
  void layer_norm(const float* x, const float* weight, const float* bias, int64_t rows, int64_t d, float eps,
                  float* out) override;
  void glu(FfnActivation act, const float* gate, const float* up, int64_t rows, int64_t width, int64_t stride,
           float* out) override;
  void activate(FfnActivation act, float* x, int64_t n) override;
  void clamp(float* x, float limit, int64_t n) override;
  void add(float* y, const float* x, float scale, int64_t n) override;
  void scale(float* x, float s, int64_t n) override;
  void soft_cap(float* x, float cap, int64_t n) override;
  void rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, RopeLayout layout, const float* cos,
            const float* sin) override;
  void attention(const AttentionCall& call) override;
  void attention_calls(const AttentionCall* calls, int64_t count, uint64_t* entries) override;
  uint64_t entries_attended() const override;
  void bind_scratch(ForwardScratch& scratch) override;
  void upload(float* dst, const float* host_src, int64_t n) override;
  void download(float* host_dst, const float* src, int64_t n) override;
  void copy_rows(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
                 int64_t width) override;
  void add_bias(float* y, const float* bias, int64_t rows, int64_t d) override;
  void store_kv(SinkCache& cache, int64_t layer, uint64_t t, const float* key, const float* value) override;

 private:
  void attend_across_threads(const AttentionCall& call, int64_t b);
  // attend() of token b's KV head kv_head in `call`, on thread `thread`'s scratch; returns the
  // entries read (rows x query heads of the group).
  int64_t attend_pair(const AttentionCall& call, int64_t b, int64_t kv_head, int thread);

  ThreadPool& pool_;
  int64_t n_head_kv_, head_dim_, group_;
  std::vector<float> scores_;  // (n_threads, group * capacity): one GQA group's scores per thread
  int64_t scores_stride_;
  // One token's attention spread over the threads (decode): scores (n_head, capacity) and partial
  // sums (n_head_kv, pieces of kAttendChunkRows rows, group * head_dim).
  std::vector<float> spread_scores_;
  std::vector<float> spread_partials_;
  struct alignas(64) Counter {  // one cache line per thread: no false sharing
    uint64_t value = 0;
  };
  std::vector<Counter> entries_attended_;  // (n_threads)
  // attention_calls' scratch: the first pair of each call (count + 1), and each pair's entries.
  std::vector<int64_t> pair_start_;
  std::vector<int64_t> pair_entries_;
};

}  // namespace sinkstream
