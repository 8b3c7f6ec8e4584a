#include "core/thread_pool.h"

#include "core/error.h"

#include <algorithm>
#include <cstdint>
#include <chrono>
#include <fstream>
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
bool SoloChooser::next_run_solo() {
  if (!probing_) return solo_;
  random_state_ ^= random_state_ << 13;  // xorshift64: an even split without a pattern of runs
  random_state_ ^= random_state_ >> 7;
  random_state_ ^= random_state_ << 17;
  return (random_state_ >> 32) & 1u;
}

void SoloChooser::record(bool solo, double seconds) {
  if (probing_) {
    probe_seconds_[solo] += seconds;
    ++probe_runs_[solo];
  }
  if (++window_runs_ < kWindowRuns) return;
  window_runs_ = 0;
  if (probing_) {
    probing_ = false;
    windows_since_probe_ = 0;
    if (probe_runs_[0] > 0 && probe_runs_[1] > 0)
      solo_ = probe_seconds_[1] / (double)probe_runs_[1] < kSoloMargin * probe_seconds_[0] / (double)probe_runs_[0];
  } else if (++windows_since_probe_ >= kWindowsBetweenProbes) {
    probing_ = true;
    probe_seconds_[0] = probe_seconds_[1] = 0.0;
    probe_runs_[0] = probe_runs_[1] = 0;
  }
}

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
  if (n_tasks <= 0) return;
  if (workers_.empty() || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  const auto seconds_since_start = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  if (chooser_.next_run_solo()) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    chooser_.record(true, seconds_since_start());
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
  chooser_.record(false, seconds_since_start());
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
                            const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  SS_ASSERT(n < ((int64_t)1 << 32) && piece >= 1);  // two 32-bit halves of a Share
  shares = (int)std::max<int64_t>(1, std::min<int64_t>({(int64_t)shares, (int64_t)n_threads(), n}));
  if (shares == 1) {
    fn(0, n, 0);
    return;
  }
  for (int i = 0; i < shares; ++i) shares_[(size_t)i].reset(n * i / shares, n * (i + 1) / shares);
  run(shares, [&](int64_t own, int thread) {
    int64_t begin, end;
    while (shares_[(size_t)own].take_front(piece, &begin, &end)) fn(begin, end, thread);
    for (int64_t k = 1; k < shares; ++k) {  // then the others', nearest first
      Share& other = shares_[(size_t)((own + k) % shares)];
      while (other.take_back(piece, &begin, &end)) fn(begin, end, thread);
    }
  });
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
