#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "core/error.h"

namespace sinkstream {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// Order of the sorted candidate list: higher logit first, and on equal logits the lower id first,
// so top-k and greedy are deterministic when logits tie.
struct ByLogitDesc {
  const float* logits;
  bool operator()(int32_t a, int32_t b) const {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  }
};

// The largest of v[0..n) (no NaN: prepare() checks first). In vector registers: the baseline
// instruction sets of x86-64 (SSE2) and AArch64 (NEON) both have a 4-wide max, and compilers do
// not vectorize a float max reduction by themselves (NaN ordering), not even over 8 independent
// scalar lanes, which ran at about one entry per cycle.
float max_of(const float* v, int32_t n) {
  int32_t i = 0;
  float m = -kInf;
#if defined(__SSE2__)
  __m128 a = _mm_set1_ps(-kInf), b = a;
  for (; i + 8 <= n; i += 8) {
    a = _mm_max_ps(a, _mm_loadu_ps(v + i));
    b = _mm_max_ps(b, _mm_loadu_ps(v + i + 4));
  }
  float lanes[4];
  _mm_storeu_ps(lanes, _mm_max_ps(a, b));
  for (float x : lanes) m = x > m ? x : m;
#elif defined(__aarch64__)
  float32x4_t a = vdupq_n_f32(-kInf), b = a;
  for (; i + 8 <= n; i += 8) {
    a = vmaxq_f32(a, vld1q_f32(v + i));
    b = vmaxq_f32(b, vld1q_f32(v + i + 4));
  }
  m = vmaxvq_f32(vmaxq_f32(a, b));
#endif
  for (; i < n; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// Copies v[0..n) to out; false if an entry is NaN or +inf (!(x < inf) holds for exactly those).
// Independent lanes again: one vectorized pass, where a running flag kept the loop scalar.
bool copy_all_below_inf(const float* v, int32_t n, float* out) {
  int32_t bad[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int32_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) {
      out[i + j] = v[i + j];
      bad[j] |= !(v[i + j] < kInf);
    }
  int32_t any_bad = 0;
  for (int32_t b : bad) any_bad |= b;
  for (; i < n; ++i) {
    out[i] = v[i];
    any_bad |= !(v[i] < kInf);
  }
  return any_bad == 0;
}

int32_t count_finite(const float* v, int32_t n) {
  int32_t count = 0;
  for (int32_t i = 0; i < n; ++i) count += v[i] > -kInf;
  return count;
}

}  // namespace

// The maxima of work_'s blocks of kBlock entries (the last may be shorter), and their maximum.
float Sampler::find_block_maxima() {
  float m = -kInf;
  for (int32_t b = 0; b < n_blocks(); ++b) {
    block_max_[(size_t)b] = max_of(work_.data() + b * kBlock, std::min(kBlock, n_vocab_ - b * kBlock));
    m = block_max_[(size_t)b] > m ? block_max_[(size_t)b] : m;
  }
  return m;
}

// A value that each of the k largest logits reaches (0 < k < the finite count): the k-th largest of
// the block maxima. Those k maxima are k distinct entries at or above it, so the k-th largest entry
// is too. With fewer than k finite block maxima, -inf (no cut).
float Sampler::top_k_floor(int32_t k) {
  floor_maxima_.clear();
  for (float m : block_max_)
    if (m > -kInf) floor_maxima_.push_back(m);
  if ((int32_t)floor_maxima_.size() < k) return -kInf;
  std::nth_element(floor_maxima_.begin(), floor_maxima_.begin() + (k - 1), floor_maxima_.end(), std::greater<float>());
  return floor_maxima_[(size_t)(k - 1)];
}

void Xoshiro256::reseed(uint64_t seed) {
  uint64_t state = seed;
  for (auto& word : s_) word = splitmix64(state);
}

uint64_t Xoshiro256::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

Sampler::Sampler(int32_t n_vocab, SamplerParams params)
    : n_vocab_(n_vocab), n_allowed_(params.n_allowed == 0 ? n_vocab : params.n_allowed), params_(std::move(params)),
      rng_(params_.seed) {
  const SamplerParams& p = params_;
  SS_CHECK_ARG(n_vocab > 0, "sampler: n_vocab must be > 0, got ", n_vocab);
  SS_CHECK_ARG(p.n_allowed >= 0 && p.n_allowed <= n_vocab, "sampler: n_allowed must be in [1, n_vocab = ", n_vocab,
               "] (0 = n_vocab), got ", p.n_allowed);
  SS_CHECK_ARG(std::isfinite(p.temperature) && p.temperature >= 0.0f,
               "sampler: temperature must be a finite number >= 0, got ", p.temperature);
  SS_CHECK_ARG(p.top_k >= 0, "sampler: top_k must be >= 0 (0 = off), got ", p.top_k);
  SS_CHECK_ARG(p.top_p > 0.0f && p.top_p <= 1.0f, "sampler: top_p must be in (0, 1] (1 = off), got ", p.top_p);
  SS_CHECK_ARG(p.min_p >= 0.0f && p.min_p <= 1.0f, "sampler: min_p must be in [0, 1] (0 = off), got ", p.min_p);
  SS_CHECK_ARG(std::isfinite(p.repeat_penalty) && p.repeat_penalty > 0.0f,
               "sampler: repeat_penalty must be a finite number > 0 (1 = off), got ", p.repeat_penalty);
  SS_CHECK_ARG(p.penalty_last_n >= 0, "sampler: repeat_last_n must be >= 0 (0 = no penalties), got ",
               p.penalty_last_n);
  SS_CHECK_ARG(std::isfinite(p.frequency_penalty), "sampler: frequency_penalty must be finite, got ",
               p.frequency_penalty);
  SS_CHECK_ARG(std::isfinite(p.presence_penalty), "sampler: presence_penalty must be finite, got ",
               p.presence_penalty);
  for (const auto& [token, bias] : p.logit_bias) {
    SS_CHECK_ARG(token >= 0 && token < n_allowed_, "sampler: logit_bias token id ", token,
                 " is outside the vocabulary [0, ", n_allowed_, ")");
    // -inf bans a token; +inf or NaN would turn the softmax into NaN.
    SS_CHECK_ARG(!std::isnan(bias) && bias != kInf, "sampler: logit_bias[", token,
                 "] must be a number or -inf, got ", bias);
  }
  work_.resize(n_vocab);
  cand_.resize(n_vocab);
  weights_.resize(n_vocab);
  counts_.assign(n_vocab, 0);
  // The window fills as tokens are accepted: a huge repeat_last_n costs memory only once that
  // many tokens were seen.
  ring_.reserve(std::min<int32_t>(p.penalty_last_n, 4096));
  block_max_.resize((size_t)n_blocks());
  floor_maxima_.reserve((size_t)n_blocks());
}

void Sampler::accept(int32_t token) {
  SS_CHECK_ARG(token >= 0 && token < n_vocab_, "sampler: accepted token id ", token,
               " is outside the vocabulary [0, ", n_vocab_, ")");
  if (params_.penalty_last_n == 0) return;
  if (static_cast<int32_t>(ring_.size()) < params_.penalty_last_n) {
    ring_.push_back(token);  // still filling: oldest at ring_start_ == 0
  } else {
    ring_[ring_start_] = token;  // overwrite the oldest
    ring_start_ = (ring_start_ + 1) % static_cast<int32_t>(ring_.size());
  }
}

void Sampler::reset() {
  ring_.clear();  // keeps the capacity
  ring_start_ = 0;
  rng_.reseed(params_.seed);
}

std::vector<int32_t> Sampler::history() const {
  std::vector<int32_t> out;
  out.reserve(ring_.size());
  for (size_t i = 0; i < ring_.size(); ++i) out.push_back(ring_[(ring_start_ + i) % ring_.size()]);
  return out;
}

void Sampler::apply_penalties() {
  const SamplerParams& p = params_;
  const bool active = p.repeat_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
  if (!active || ring_.empty()) return;
  // Order does not matter here: every entry of the window is counted once.
  for (const int32_t token : ring_) ++counts_[token];
  // Each distinct token is penalized once, using its count; zeroing the count marks it done and
  // leaves counts_ all zero for the next call.
  for (const int32_t token : ring_) {
    const int32_t count = counts_[token];
    if (count == 0) continue;
    float& logit = work_[token];
    // Dividing a positive logit and multiplying a negative one both make the token less likely
    // (CTRL, Keskar et al. 2019, as llama.cpp applies it).
    if (logit <= 0.0f) {
      logit *= p.repeat_penalty;
    } else {
      logit /= p.repeat_penalty;
    }
    // OpenAI-style frequency and presence penalties.
    logit -= static_cast<float>(count) * p.frequency_penalty + p.presence_penalty;
    counts_[token] = 0;
  }
}

void Sampler::ensure_sorted_prefix(int32_t n) {
  n = std::min(n, n_cand_);
  if (n <= sorted_) return;
  ByLogitDesc order{work_.data()};
  if (n < n_cand_) std::nth_element(cand_.begin() + sorted_, cand_.begin() + n, cand_.begin() + n_cand_, order);
  std::sort(cand_.begin() + sorted_, cand_.begin() + n, order);
  sorted_ = n;
}

int32_t Sampler::prepare(const float* logits, int32_t n_vocab) {
  SS_CHECK_ARG(n_vocab == n_vocab_, "sampler: logits have ", n_vocab, " entries but the sampler was built for n_vocab ",
               n_vocab_);
  const SamplerParams& p = params_;
  // -inf is a banned token; NaN and +inf mean the model output is broken. The copy and the check
  // are one branch-free pass (vectorized); the bad entry is looked for only when there is one.
  if (!copy_all_below_inf(logits, n_allowed_, work_.data()))
    for (int32_t i = 0; i < n_allowed_; ++i)
      SS_CHECK_ARG(logits[i] < kInf, "sampler: logits[", i, "] is ", logits[i], " (logits must be finite or -inf)");
  // Padding ids: whatever their rows compute (untrained, maybe zero), they are never drawn.
  std::fill(work_.begin() + n_allowed_, work_.end(), -kInf);
  for (const auto& [token, bias] : p.logit_bias) work_[token] += bias;
  apply_penalties();

  const float max_logit = find_block_maxima();
  SS_CHECK_ARG(max_logit > -kInf, "sampler: every token has logit -inf (all banned by logit_bias?)");
  if (p.temperature == 0.0f) {  // the first maximum: ties keep the lowest id
    int32_t block = 0;
    while (block_max_[(size_t)block] != max_logit) ++block;
    int32_t best = block * kBlock;
    while (work_[best] != max_logit) ++best;
    return best;
  }

  // top-k: keep the k best (ByLogitDesc), found in O(n) by nth_element instead of sorting the
  // vocabulary; the candidates it chooses from are first cut to those at or above a floor that
  // every one of the k best clears (top_k_floor), so nth_element sees dozens of ids, not the
  // whole vocabulary. Without a cut, every finite logit is a candidate.
  const int32_t n_finite = count_finite(work_.data(), n_vocab);
  const bool top_k_cut = p.top_k > 0 && p.top_k < n_finite;
  const float floor = top_k_cut ? top_k_floor(p.top_k) : -kInf;
  // Only blocks whose maximum clears the floor can hold candidates (with a top-k cut, about k of
  // them): the others are skipped whole.
  n_cand_ = 0;
  for (int32_t b = 0; b < n_blocks(); ++b) {
    if (!(block_max_[(size_t)b] > -kInf && block_max_[(size_t)b] >= floor)) continue;
    for (int32_t i = b * kBlock; i < std::min(n_vocab, (b + 1) * kBlock); ++i)
      if (work_[i] > -kInf && work_[i] >= floor) cand_[n_cand_++] = i;
  }
  sorted_ = 0;
  ByLogitDesc order{work_.data()};
  if (top_k_cut) {
    if (p.top_k < n_cand_) std::nth_element(cand_.begin(), cand_.begin() + p.top_k, cand_.begin() + n_cand_, order);
    n_cand_ = p.top_k;
  }

  // top-p normalizes over the candidates left by top-k (temperature 1, as in llama.cpp's chain).
  const bool use_top_p = p.top_p < 1.0f;
  double z = 0.0;
  if (use_top_p)
    for (int32_t i = 0; i < n_cand_; ++i) z += std::exp(static_cast<double>(work_[cand_[i]] - max_logit));

  // min-p keeps p_i >= min_p * p_max, i.e. logit_i >= max_logit + log(min_p). Both top-p and min-p
  // keep a prefix of the candidates sorted by logit, and top-p never drops the best token, so
  // min-p's cut is the same before or after top-p: applying it first means only its survivors
  // ever get sorted.
  if (p.min_p > 0.0f) {
    const float threshold = max_logit + std::log(p.min_p);
    int32_t n_survivors = 0;  // stable compaction: keeps id order when nothing else reordered
    for (int32_t i = 0; i < n_cand_; ++i)
      if (work_[cand_[i]] >= threshold) cand_[n_survivors++] = cand_[i];
    n_cand_ = n_survivors;
  }

  n_kept_ = n_cand_;
  if (use_top_p) {
    // Smallest prefix whose probability reaches top_p (the token that crosses it is kept). The
    // sorted prefix grows geometrically, so a peaked distribution sorts only a few dozen tokens.
    double cumulative = 0.0;
    for (int32_t i = 0; i < n_cand_; ++i) {
      if (i >= sorted_) ensure_sorted_prefix(std::max<int32_t>(64, 4 * sorted_));
      cumulative += std::exp(static_cast<double>(work_[cand_[i]] - max_logit)) / z;
      if (cumulative >= p.top_p) {
        n_kept_ = i + 1;
        break;
      }
    }
  }

  // The draw walks the survivors in a canonical order so a seed gives the same token with any
  // standard library: id order when no cut reordered them, else (logit desc, id asc). The top-p
  // path has sorted them already; after a top-k cut this sorts at most k tokens.
  if (top_k_cut || use_top_p) ensure_sorted_prefix(n_kept_);

  weight_sum_ = 0.0;
  const double inv_temperature = 1.0 / static_cast<double>(p.temperature);
  for (int32_t i = 0; i < n_kept_; ++i) {
    const double w = std::exp(static_cast<double>(work_[cand_[i]] - max_logit) * inv_temperature);
    weights_[i] = w;
    weight_sum_ += w;
  }
  return -1;
}

int32_t Sampler::sample(const float* logits, int32_t n_vocab) {
  const int32_t greedy = prepare(logits, n_vocab);
  if (greedy >= 0) return greedy;
  // Inverse-CDF draw over the survivors; u < weight_sum_, so the loop returns unless rounding put
  // the running sum just below u, in which case the last token with a non-zero weight is taken.
  const double u = rng_.uniform() * weight_sum_;
  double acc = 0.0;
  for (int32_t i = 0; i < n_kept_; ++i) {
    acc += weights_[i];
    if (u < acc) return cand_[i];
  }
  for (int32_t i = n_kept_ - 1; i >= 0; --i)
    if (weights_[i] > 0.0) return cand_[i];
  SS_ASSERT(false);
  return -1;
}

void Sampler::probabilities(const float* logits, int32_t n_vocab, float* out) {
  const int32_t greedy = prepare(logits, n_vocab);
  std::fill(out, out + n_vocab, 0.0f);
  if (greedy >= 0) {
    out[greedy] = 1.0f;
    return;
  }
  for (int32_t i = 0; i < n_kept_; ++i) out[cand_[i]] = static_cast<float>(weights_[i] / weight_sum_);
}

}  // namespace sinkstream
