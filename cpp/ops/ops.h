// The op set the model is written in. cpu/ holds the reference implementations (the specification)
// and picks SIMD variants at run time; cuda/ implements the same set on the GPU.
#pragma once
#include <cstdint>
#include <string>

#include "core/thread_pool.h"
#include "kv/sink_cache.h"
#include "quant/quant_types.h"

namespace sinkstream {

enum class Isa;  // ops/cpu/cpu_features.h

enum class RopeLayout {
  kAdjacentPairs,  // rotate (x[2i], x[2i+1]): ggml "normal" mode, llama GGUFs (Q/K rows permuted)
  kNeox,           // rotate (x[i], x[i + n_rot/2]): qwen2, gptneox, falcon, ...
};

// The feed-forward's activation: gated, act(gate) * up, or plain, act(up).
enum class FfnActivation {
  kSwiGlu,    // silu(gate) * up (llama, qwen, phi3, stablelm)
  kGeGlu,     // gelu_tanh(gate) * up (gemma: "gelu_pytorch_tanh")
  kGelu,      // gelu(up), exact (erf): gpt-neox, falcon, mpt
  kGeluTanh,  // gelu(up), tanh approximation: bloom, phi2 ("gelu_new")
  kSwiGluOai, // gpt-oss: (clamp(up, -7, 7) + 1) * g * sigmoid(1.702 g), g = min(gate, 7)
};
inline bool is_gated(FfnActivation a) {
  return a == FfnActivation::kSwiGlu || a == FfnActivation::kGeGlu || a == FfnActivation::kSwiGluOai;
}

// A 2-D weight left in the GGUF map: `rows` rows of `cols` elements of `type`, rows contiguous.
// In ggml order a tensor with dims (cols, rows) is exactly this.
struct WeightMatrix {
  std::string name;
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_bytes = 0;
  // The rows regrouped for the CPU's interleaved-row kernels (ops/cpu/packed_weights.h), or nullptr.
  // Owned by whoever packed them (the Model); `data` stays valid beside it for the other readers
  // (get_row, the CUDA upload, kernels of other levels).
  const uint8_t* packed = nullptr;
  // The instruction-set level `packed` was laid out for (the AVX2 kernels take bit planes where the
  // others take masks: packed_weights.h); only that level's kernels read it.
  Isa packed_isa{};
};

// Y (n x w.rows) = X (n x w.cols) . W^T, float32 row-major X and Y. Works directly on the quantized
// blocks (no dequantized copy of W). Cost: n * rows * cols multiply-adds; W is read once per call
// when n is small, so decode is bound by reading the weights.
void matmul(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool& pool);

// Several products of one input: ys[i] (n x ws[i]->rows) = X . ws[i]^T for weights of equal cols
// (Q/K/V; FFN gate and up). Same results as separate matmul calls, with one quantization of X and
// one parallel region when the weight types quantize X alike (else it makes the separate calls):
// at decode each region costs a hand-off between threads comparable to a small matmul's own work.
constexpr int kMaxSharedInput = 4;
void matmul_shared_input(const WeightMatrix* const* ws, float* const* ys, int count, const float* x, int64_t n,
                         ThreadPool& pool);

// out[0 .. w.cols) = row `row` of W as float32 (embedding lookup).
void get_row(const WeightMatrix& w, int64_t row, float* out);

// out = x / sqrt(mean(x^2) + eps) * weight, for n rows of length d. out may alias x.
void rms_norm(const float* x, const float* weight, int64_t n, int64_t d, float eps, float* out);

// out = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias (bias may be nullptr), n rows of d.
// out may alias x.
void layer_norm(const float* x, const float* weight, const float* bias, int64_t n, int64_t d, float eps, float* out);

// x = gelu(x) in place: exact (x/2 (1 + erf(x / sqrt 2))) or with the tanh approximation.
void gelu_erf_inplace(float* x, int64_t n);
void gelu_tanh_inplace(float* x, int64_t n);

// x = min(max(x, -limit), limit) (MPT's clip_qkv).
void clamp_inplace(float* x, float limit, int64_t n);

// out = silu(gate) * up, elementwise over n values. out may alias gate.
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

// gpt-oss's clamped SwiGLU (its reference implementation's swiglu with alpha 1.702, limit 7):
// g = min(gate, 7), u = clamp(up, -7, 7), out = (u + 1) * g * sigmoid(1.702 g). out may alias gate.
constexpr float kSwiGluOaiAlpha = 1.702f;
constexpr float kSwiGluOaiLimit = 7.0f;
void swiglu_oai_mul(const float* gate, const float* up, int64_t n, float* out);

// out = gelu(gate) * up with gelu's tanh approximation (GeGLU, Gemma's "gelu_pytorch_tanh"):
// gelu(g) = g/2 * (1 + tanh(sqrt(2/pi) * (g + 0.044715 g^3))). out may alias gate.
void gelu_tanh_mul(const float* gate, const float* up, int64_t n, float* out);

// y += x over n values; y += scale * x; x *= scale.
void add_inplace(float* y, const float* x, int64_t n);
void add_scaled_inplace(float* y, const float* x, float scale, int64_t n);
void scale_inplace(float* x, float scale, int64_t n);

// x = cap * tanh(x / cap) over n values (Gemma 2's logit soft-capping).
void soft_cap_inplace(float* x, float cap, int64_t n);

// cos/sin of the RoPE angles pos * theta_i, i < n_freq. The product is reduced modulo 2*pi in
// extended precision from the integer position, so the angle is as exact at pos = 2^40 as at
// pos = 5 (streaming.md invariant 4; a float32 position would lose all precision there).
void rope_cos_sin(uint64_t pos, const double* thetas, int64_t n_freq, float* cos_out, float* sin_out);

// Rotates the first n_rot dims of each of n_heads vectors (length head_dim, contiguous) in x.
void rope_apply(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, RopeLayout layout,
                const float* cos, const float* sin);

// What a layer does to the scaled scores q.k * scale before the softmax: ALiBi, then soft-capping;
// and what the softmax adds: a learned sink logit per head.
struct ScoreBias {
  // ALiBi (Press et al. 2022; MPT, Bloom): score -= slope_h * (p(t) - p(j)), with positions within
  // the cache (streaming.md): a window member j at distance t - j, a sink s at p(t) - s. One slope
  // per query head of the call (the GQA group), or nullptr.
  const float* alibi_slopes = nullptr;
  float softcap = 0.0f;  // > 0: score -> softcap * tanh(score / softcap) (Gemma 2)
  // Learned attention sinks (gpt-oss `attn_sinks`): one logit per query head of the call, a
  // softmax column with no value (attention_kernels.h SoftmaxInPlace), or nullptr.
  const float* sink_logits = nullptr;
};

// The query heads that share one KV head (GQA group) against that head over A_l(t) in the cache
// (sink_cache.h: A(t), narrowed to the layer's window); each key and value row is read once for
// the whole group. q_sink / q_window: (group, head_dim) contiguous, rotated at p(t) and at t
// (equal while t < C). out (group, head_dim) = softmax(bias(scale * [q_sink . K_sinks,
// q_window . K_window])) . V per head, bias as ScoreBias says.
// scores: scratch of at least group * capacity() floats. Cost: group * |A_l(t)| * head_dim * 2 FMAs.
// Returns |A_l(t)|, the rows it read (the work counters count what attention really read).
int64_t attend(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
               const float* q_sink, const float* q_window, float scale, const ScoreBias& bias, float* scores,
               float* out);

// attend() in three phases, so that one query's attention can be spread over threads (at decode a
// token has only n_head_kv (token, KV head) pairs, fewer than the threads share evenly). Rows are
// the members of A(t) in token order (sinks first), 0 .. attention_set_size(t) - 1; scores are
// head-major (head h at scores + h * stride). attend() is exactly: attend_scores over all rows,
// attend_softmax per head, then attend_accumulate over kAttendChunkRows-row pieces, their partial
// sums added in order; a split that follows the same pieces gives the same bits.
constexpr int64_t kAttendChunkRows = 256;
int64_t attention_set_size(const SinkCache& cache, int64_t layer, uint64_t t);  // |A_l(t)|
void attend_scores(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
                   const float* q_sink, const float* q_window, float scale, int64_t row_begin, int64_t row_end,
                   float* scores, int64_t scores_stride);
// Query head `head` (of the call's group) of query t: its |A_l(t)| scores -> attention weights in
// place (biased first as ScoreBias says; rounded to half with an f16 cache).
void attend_softmax(const SinkCache& cache, int64_t layer, uint64_t t, int64_t head, const ScoreBias& bias,
                    float* scores, int64_t n);
// partial (group, head_dim) = sum over rows [row_begin, row_end) of weights[h * stride + row] * V_row.
void attend_accumulate(const SinkCache& cache, int64_t layer, int64_t kv_head, int64_t group, uint64_t t,
                       int64_t row_begin, int64_t row_end, const float* weights, int64_t weights_stride,
                       float* partial);

}  // namespace sinkstream
