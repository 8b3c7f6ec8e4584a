#include "core/thread_pool.h"

#include "core/error.h"

#include <algorithm>
#include <cstdint>
#include <chrono>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SS_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define SS_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define SS_CPU_RELAX() ((void)0)
#endif

namespace sinkstream {

namespace {

constexpr auto kSpinTime = std::chrono::microseconds(200);
constexpr int kPauseIterations = 1000;  // about 10-50 us of pure spinning first

// Waits until done() or kSpinTime passed; true if done() became true. After a short pure spin it
// yields the CPU between checks, so on an oversubscribed machine the thread being waited for can
// run instead of the waiter burning its time slice.
template <typename Done>
bool spin_until(Done done) {
  for (int i = 0; i < kPauseIterations; ++i) {
    if (done()) return true;
    SS_CPU_RELAX();
  }
  const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::yield();
  }
  return done();
}

}  // namespace

// A window spans a decode token or so of a small model (a few hundred runs); a probe costs half a
// window in the slower mode. Solo must win clearly (kSoloMargin): on a quiet machine the workers
// are faster, and noise must not send the pool solo.
bool SoloChooser::next_run_solo(int size_class) {
  SS_ASSERT(size_class >= 0 && size_class < kSizeClasses);
  if (!probing_) return solo_;
  ClassProbe& c = classes_[size_class];
  if (c.pair_first >= 0) {  // the second run of the pair: the other mode
    const bool alone = c.pair_first == 0;
    c.pair_first = -1;
    return alone;
  }
  random_state_ ^= random_state_ << 13;  // xorshift64: which run of the pair goes alone, without a pattern
  random_state_ ^= random_state_ >> 7;
  random_state_ ^= random_state_ << 17;
  c.pair_first = (int)((random_state_ >> 32) & 1u);
  return c.pair_first == 1;
}

void SoloChooser::record(bool solo, int size_class, double seconds) {
  SS_ASSERT(size_class >= 0 && size_class < kSizeClasses);
  if (probing_) {
    classes_[size_class].seconds[solo] += seconds;
    ++classes_[size_class].runs[solo];
  }
  if (++window_runs_ < kWindowRuns) return;
  window_runs_ = 0;
  if (probing_) {
    end_probe();
  } else if (++windows_since_probe_ >= windows_between_probes_) {
    probing_ = true;
    for (ClassProbe& c : classes_) c = ClassProbe();
  }
}

// Each class's runs, timed in both modes, count in both totals at their class's mean time in that
// mode; a class seen in one mode only (an odd run out) counts in neither. Infinity: no class yet.
double SoloChooser::alone_over_with_workers() const {
  double alone = 0.0, with_workers = 0.0;
  for (const ClassProbe& c : classes_) {
    if (c.runs[0] == 0 || c.runs[1] == 0) continue;
    const double runs = (double)(c.runs[0] + c.runs[1]);
    with_workers += runs * c.seconds[0] / (double)c.runs[0];
    alone += runs * c.seconds[1] / (double)c.runs[1];
  }
  return with_workers > 0.0 ? alone / with_workers : std::numeric_limits<double>::infinity();
}

void SoloChooser::end_probe() {
  const bool was_solo = solo_;
  const double ratio = alone_over_with_workers();
  if (ratio != std::numeric_limits<double>::infinity()) solo_ = ratio < kSoloMargin;
  windows_between_probes_ =
      solo_ == was_solo ? std::min(2 * windows_between_probes_, kMostWindowsBetweenProbes) : kWindowsBetweenProbes;
  probing_ = false;
  windows_since_probe_ = 0;
}

namespace {
// 1 + floor(log2(count)) for count >= 1, at most `most`: runs within a factor of two share a class.
int log2_class(int64_t count, int most) {
  int c = 0;
  while (count > 0 && c < most) {
    count >>= 1;
    ++c;
  }
  return c;
}
constexpr int kRunClasses = 16;  // run(): classes 0 .. 15 by task count; run_shares(): the rest by work
static_assert(kRunClasses < SoloChooser::kSizeClasses, "run_shares needs classes of its own");
}  // namespace

ThreadPool::ThreadPool(int n_threads) : shares_((size_t)std::max(1, n_threads)) {
  const int n = std::max(1, n_threads);
  for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_.store(true);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::work_on_current_job(int thread_index) {
  for (;;) {
    const int64_t task = next_task_.fetch_add(1, std::memory_order_relaxed);
    if (task >= job_tasks_) break;
    (*job_)(task, thread_index);
  }
}

void ThreadPool::worker_loop(int thread_index) {
  uint64_t seen = 0;
  for (;;) {
    const auto news = [&] {
      return stopping_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
    };
    if (!spin_until(news)) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, news);
    }
    if (stopping_.load(std::memory_order_acquire)) return;
    seen = generation_.load(std::memory_order_acquire);
    work_on_current_job(thread_index);
    if (busy_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);  // pairs with the caller's sleeping wait
      done_.notify_one();
    }
  }
}

void ThreadPool::run(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  run_sized(n_tasks, log2_class(n_tasks, kRunClasses - 1), fn);
}

void ThreadPool::run_sized(int64_t n_tasks, int size_class, const std::function<void(int64_t, int)>& fn,
                           const std::function<void()>* alone) {
  if (n_tasks <= 0) return;
  if (workers_.empty() || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  const auto seconds_since_start = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  if (chooser_.next_run_solo(size_class)) {
    if (alone != nullptr)
      (*alone)();
    else
      for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    chooser_.record(true, size_class, seconds_since_start());
    return;
  }
  job_ = &fn;
  job_tasks_ = n_tasks;
  next_task_.store(0, std::memory_order_relaxed);
  busy_workers_.store((int)workers_.size(), std::memory_order_relaxed);
  {
    // Under the mutex, so a worker between its last check and its wait cannot miss the wake-up.
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  work_on_current_job(0);
  const auto all_done = [&] { return busy_workers_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(all_done)) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, all_done);
  }
  job_ = nullptr;
  chooser_.record(false, size_class, seconds_since_start());
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                              int64_t min_per_task) {
  if (n <= 0) return;
  const int64_t max_tasks = std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_task));
  const int64_t n_tasks = std::min<int64_t>(max_tasks, (int64_t)n_threads() * 4);
  if (n_tasks <= 1) {
    fn(0, n, 0);
    return;
  }
  run(n_tasks, [&](int64_t task, int thread) {
    const int64_t begin = n * task / n_tasks;
    const int64_t end = n * (task + 1) / n_tasks;
    if (begin < end) fn(begin, end, thread);
  });
}

bool ThreadPool::Share::take_front(int64_t piece, int64_t* begin, int64_t* end) {
  uint64_t now = range_.load(std::memory_order_relaxed);
  for (;;) {
    const int64_t f = front(now), b = back(now);
    if (f >= b) return false;
    const int64_t e = std::min(b, f + piece);
    if (range_.compare_exchange_weak(now, pack(e, b), std::memory_order_relaxed)) {
      *begin = f, *end = e;
      return true;
    }
  }
}

bool ThreadPool::Share::take_back(int64_t piece, int64_t* begin, int64_t* end) {
  uint64_t now = range_.load(std::memory_order_relaxed);
  for (;;) {
    const int64_t f = front(now), b = back(now);
    if (f >= b) return false;
    const int64_t s = std::max(f, b - std::max(piece, (b - f) / 2));
    if (range_.compare_exchange_weak(now, pack(f, s), std::memory_order_relaxed)) {
      *begin = s, *end = b;
      return true;
    }
  }
}

void ThreadPool::run_shares(int64_t n, int shares, int64_t piece,
                            const std::function<void(int64_t, int64_t, int)>& fn, int64_t cost_per_piece) {
  if (n <= 0) return;
  SS_ASSERT(n < ((int64_t)1 << 32) && piece >= 1);  // two 32-bit halves of a Share
  shares = (int)std::max<int64_t>(1, std::min<int64_t>({(int64_t)shares, (int64_t)n_threads(), n}));
  if (shares == 1) {
    fn(0, n, 0);
    return;
  }
  for (int i = 0; i < shares; ++i) shares_[(size_t)i].reset(n * i / shares, n * (i + 1) / shares);
  const int64_t work = (n + piece - 1) / piece * std::max<int64_t>(1, cost_per_piece);
  const int size_class = kRunClasses + log2_class(work, SoloChooser::kSizeClasses - 1 - kRunClasses);
  // Solo, the caller streams the whole range front to back, as one thread does: taking its own
  // share and then the other's from the back, half of what is left at a time, walked the second
  // half of every matrix in backward jumps, each a new start for the prefetchers. Beside one busy
  // process, where the pool runs solo, the default model's decode took 5.64-5.90 ms a token that
  // way and 4.41-5.19 this way (medians of 350 tokens, three interleaved rounds; one thread alone:
  // 4.34-4.98).
  const std::function<void()> alone = [&] { fn(0, n, 0); };
  run_sized(shares, size_class, [&](int64_t own, int thread) {
    int64_t begin, end;
    while (shares_[(size_t)own].take_front(piece, &begin, &end)) fn(begin, end, thread);
    for (int64_t k = 1; k < shares; ++k) {  // then the others', nearest first
      Share& other = shares_[(size_t)((own + k) % shares)];
      while (other.take_back(piece, &begin, &end)) fn(begin, end, thread);
    }
  }, &alone);
}

int ThreadPool::default_thread_count() {
  // Count distinct (physical id, core id) pairs: SMT siblings share one, and a decoder bound by
  // memory bandwidth gains nothing from them.
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::set<std::pair<std::string, std::string>> cores;
  std::string line, physical = "0";
  while (std::getline(cpuinfo, line)) {
    auto value = [&] { auto p = line.find(':'); return p == std::string::npos ? std::string() : line.substr(p + 1); };
    if (line.rfind("physical id", 0) == 0) physical = value();
    if (line.rfind("core id", 0) == 0) cores.insert({physical, value()});
  }
  const int logical = (int)std::max(1u, std::thread::hardware_concurrency());
  if (cores.empty()) return logical;
  return std::min<int>(logical, (int)cores.size());
}

}  // namespace sinkstream
