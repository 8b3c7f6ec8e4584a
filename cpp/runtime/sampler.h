// Sampler: turns one row of logits into a token id.
//
// The chain follows llama.cpp's common sampler order (common/sampling.cpp):
//   logit bias -> penalties -> top-k -> top-p -> min-p -> temperature -> softmax -> seeded draw,
// over the ids below params.n_allowed (the tokenizer's vocabulary; padding rows never win).
// temperature == 0 means greedy: the argmax after bias and penalties (ties -> lowest id).
// Ties in top-k are broken by the lower id. The draw is an inverse-CDF walk with one uniform from
// xoshiro256** over the survivors in a canonical order (id order when no top-k/top-p cut was made,
// else logit desc, id asc), so a seed picks the same token on every platform.
//
// Cost per call: two vectorized O(n_vocab) passes (the copy with its NaN / +inf check, then the
// maxima of blocks of 64 ids), then work on only the blocks whose maximum can matter (greedy: the
// first block holding the maximum; top-k: the blocks that reach the k-th largest block maximum),
// plus a partial sort of only the tokens that can survive the filters (nth_element for top-k; a
// growing sorted prefix for top-p). Without a top-k cut, the softmax behind top-p (or the draw,
// without top-p) takes an exp of every finite logit. Every buffer is allocated once in the
// constructor, so sample() never allocates.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace sinkstream {

struct SamplerParams {
  float temperature = 0.8f;        // >= 0; 0 = greedy
  int32_t top_k = 40;              // >= 0; 0 = off
  float top_p = 0.95f;             // (0, 1]; 1 = off
  float min_p = 0.05f;             // [0, 1]; 0 = off
  float repeat_penalty = 1.0f;     // > 0; 1 = off
  int32_t penalty_last_n = 64;     // >= 0: how many of the last accepted tokens the penalties see
  float frequency_penalty = 0.0f;  // subtracted count * frequency_penalty times
  float presence_penalty = 0.0f;   // subtracted once from every token seen in the window
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token id, additive bias); -inf bans a token
  uint64_t seed = 0;
  // Only ids below this can be drawn (0 = all n_vocab). A GGUF's embedding may have more rows than
  // its tokenizer has tokens (padding to a multiple of 64 or 128): the logits keep every row, but
  // the padding ids have no text, so they are masked like banned tokens.
  int32_t n_allowed = 0;
};

// xoshiro256** (Blackman & Vigna, 2018) seeded through splitmix64: the same seed gives the same
// stream on every platform and standard library (std::*_distribution are not portable).
class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed) { reseed(seed); }
  void reseed(uint64_t seed);
  uint64_t next();
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  // Throws ArgumentError naming the parameter when a value is out of range.
  Sampler(int32_t n_vocab, SamplerParams params);

  // Draws one token from logits[0 .. n_vocab). n_vocab must equal the constructor's. Logits may be
  // -inf (banned tokens); NaN or +inf is an ArgumentError. Does not record the token: call accept().
  int32_t sample(const float* logits, int32_t n_vocab);

  // The distribution sample() would draw from, written to out[0 .. n_vocab) (zeros for filtered
  // tokens; one-hot for greedy). Does not advance the random stream.
  void probabilities(const float* logits, int32_t n_vocab, float* out);

  // Records a token (prompt or generated) in the penalty window.
  void accept(int32_t token);

  // Forgets the penalty window and restarts the random stream from the seed.
  void reset();

  int32_t n_vocab() const { return n_vocab_; }
  int32_t n_allowed() const { return n_allowed_; }
  const SamplerParams& params() const { return params_; }
  // The accepted tokens still inside the penalty window, oldest first.
  std::vector<int32_t> history() const;

 private:
  // Runs bias, penalties and the filters. Greedy: returns the argmax. Otherwise returns -1 and
  // leaves the surviving ids in cand_[0 .. n_kept_) with unnormalized weights in weights_, their
  // sum in weight_sum_.
  int32_t prepare(const float* logits, int32_t n_vocab);
  void apply_penalties();
  // Makes cand_[0 .. n) sorted by (logit desc, id asc) given cand_[0 .. sorted_) already is and
  // holds the largest elements of cand_[0 .. n_cand_).
  void ensure_sorted_prefix(int32_t n);
  // Fills block_max_ from work_ and returns the largest logit.
  float find_block_maxima();
  // A logit that each of the k best reaches, to cut the candidates before top-k (sampler.cc).
  float top_k_floor(int32_t k);
  // work_ in blocks of kBlock ids: the greedy pick, the top-k floor and the candidate scan look at
  // a block's entries only when its maximum can matter.
  static constexpr int32_t kBlock = 64;
  int32_t n_blocks() const { return (n_vocab_ + kBlock - 1) / kBlock; }

  int32_t n_vocab_;
  int32_t n_allowed_;  // ids [n_allowed_, n_vocab_) are padding: never drawn
  SamplerParams params_;
  Xoshiro256 rng_;

  std::vector<float> work_;      // (n_vocab) logits after bias and penalties
  std::vector<int32_t> cand_;    // (n_vocab) candidate ids; the first sorted_ are sorted
  std::vector<double> weights_;  // (n_vocab) exp((logit - max) / temperature) of the survivors
  std::vector<int32_t> counts_;  // (n_vocab) scratch counts for the penalties; all zero between calls
  std::vector<float> block_max_;     // (n_blocks) the maximum of each block of work_
  std::vector<float> floor_maxima_;  // (n_blocks) the finite block maxima, for top_k_floor
  std::vector<int32_t> ring_;    // (<= penalty_last_n) last accepted tokens, a ring once full
  int32_t ring_start_ = 0;       // index of the oldest entry
  int32_t n_cand_ = 0;
  int32_t sorted_ = 0;
  int32_t n_kept_ = 0;
  double weight_sum_ = 0.0;
};

}  // namespace sinkstream
