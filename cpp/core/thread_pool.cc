#include "core/thread_pool.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <string>
#include <utility>

namespace sinkstream {

ThreadPool::ThreadPool(int n_threads) {
  const int n = std::max(1, n_threads);
  for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
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
  uint64_t seen_generation = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen_generation; });
      if (stopping_) return;
      seen_generation = generation_;
    }
    work_on_current_job(thread_index);
    if (busy_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
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
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_tasks_ = n_tasks;
    next_task_.store(0, std::memory_order_relaxed);
    busy_workers_.store((int)workers_.size(), std::memory_order_relaxed);
    ++generation_;
  }
  wake_.notify_all();
  work_on_current_job(0);
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return busy_workers_.load(std::memory_order_acquire) == 0; });
  job_ = nullptr;
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
