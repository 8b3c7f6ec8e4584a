#include "core/thread_pool.h"

#include <algorithm>
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

// A worker is late when the caller, done with its own share, waits longer than this and longer
// than that share took: on a quiet machine the wait is at most one task (a few microseconds of a
// decode step's job); a descheduled worker costs an OS time slice (milliseconds).
constexpr auto kLateWait = std::chrono::microseconds(300);
// Solo stretches, in runs (a decode step of a small model is a few hundred runs): from about a
// token's worth up to about a hundred tokens' worth while the workers keep being late.
constexpr int64_t kSoloFirst = 256;
constexpr int64_t kSoloLongest = 32768;

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

ThreadPool::ThreadPool(int n_threads) : solo_stretch_(kSoloFirst) {
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
  if (workers_.empty() || n_tasks == 1 || solo_runs_left_ > 0) {
    if (solo_runs_left_ > 0) --solo_runs_left_;
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
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
  const auto start = std::chrono::steady_clock::now();
  work_on_current_job(0);
  const auto own_done = std::chrono::steady_clock::now();
  const auto all_done = [&] { return busy_workers_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(all_done)) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, all_done);
  }
  job_ = nullptr;
  note_wait(own_done - start, std::chrono::steady_clock::now() - own_done);
}

void ThreadPool::note_wait(std::chrono::steady_clock::duration own_work, std::chrono::steady_clock::duration waited) {
  if (waited > kLateWait && waited > own_work) {
    solo_runs_left_ = solo_stretch_;
    solo_stretch_ = std::min(solo_stretch_ * 2, kSoloLongest);
  } else {
    solo_stretch_ = kSoloFirst;  // the workers kept up: a later hiccup starts short again
  }
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
