// ThreadPool: every task runs exactly once per run(), on a valid thread index, and run() returns only
// after all of them finished; parallel_for and run_shares cover [0, n) exactly once with contiguous
// ranges. Many
// runs back to back with sizes that grow, shrink and straddle the thread count, so a worker that
// picks up a stale job or a run that returns early shows up as a miscount.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "check.h"
#include "core/thread_pool.h"

using namespace sinkstream;

namespace {

void check_run(ThreadPool& pool, int64_t n_tasks, bool uneven, std::mt19937& rng) {
  std::vector<std::atomic<int>> runs((size_t)std::max<int64_t>(n_tasks, 1));
  for (auto& r : runs) r.store(0);
  std::atomic<int> bad_thread{0};
  std::vector<int> sleep_us((size_t)std::max<int64_t>(n_tasks, 1), 0);
  if (uneven)
    for (auto& s : sleep_us) s = (int)(rng() % 4 == 0 ? rng() % 200 : 0);
  const int n_threads = pool.n_threads();
  pool.run(n_tasks, [&](int64_t task, int thread) {
    if (thread < 0 || thread >= n_threads) bad_thread.fetch_add(1);
    if (sleep_us[(size_t)task]) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us[(size_t)task]));
    runs[(size_t)task].fetch_add(1, std::memory_order_relaxed);
  });
  // run() has returned: every count must already be final.
  int wrong = 0;
  for (int64_t t = 0; t < n_tasks; ++t) wrong += runs[(size_t)t].load() != 1;
  CHECK_EQ(wrong, 0, "threads", n_threads, "tasks", n_tasks);
  CHECK_EQ(bad_thread.load(), 0, "threads", n_threads, "tasks", n_tasks);
}

void check_parallel_for(ThreadPool& pool, int64_t n, int64_t min_per_task) {
  std::vector<std::atomic<int>> covered((size_t)std::max<int64_t>(n, 1));
  for (auto& c : covered) c.store(0);
  std::atomic<int> bad_range{0};
  pool.parallel_for(
      n,
      [&](int64_t begin, int64_t end, int thread) {
        if (begin < 0 || end > n || begin >= end || thread < 0 || thread >= pool.n_threads()) bad_range.fetch_add(1);
        for (int64_t i = std::max<int64_t>(begin, 0); i < std::min(end, n); ++i) covered[(size_t)i].fetch_add(1);
      },
      min_per_task);
  int wrong = 0;
  for (int64_t i = 0; i < n; ++i) wrong += covered[(size_t)i].load() != 1;
  CHECK_EQ(wrong, 0, "threads", pool.n_threads(), "n", n, "min_per_task", min_per_task);
  CHECK_EQ(bad_range.load(), 0, "threads", pool.n_threads(), "n", n, "min_per_task", min_per_task);
}

// run_shares: every item of [0, n) once, in non-empty ranges inside [0, n), whatever the shares and
// piece size; with uneven work (one share slow) the other threads take over its back half.
void check_run_shares(ThreadPool& pool, int64_t n, int shares, int64_t piece, bool slow_first_share) {
  std::vector<std::atomic<int>> covered((size_t)std::max<int64_t>(n, 1));
  for (auto& c : covered) c.store(0);
  std::atomic<int> bad_range{0};
  pool.run_shares(n, shares, piece, [&](int64_t begin, int64_t end, int thread) {
    if (begin < 0 || end > n || begin >= end || thread < 0 || thread >= pool.n_threads()) bad_range.fetch_add(1);
    if (slow_first_share && begin < n / std::max(1, shares)) std::this_thread::sleep_for(std::chrono::microseconds(50));
    for (int64_t i = std::max<int64_t>(begin, 0); i < std::min(end, n); ++i) covered[(size_t)i].fetch_add(1);
  });
  int wrong = 0;
  for (int64_t i = 0; i < n; ++i) wrong += covered[(size_t)i].load() != 1;
  CHECK_EQ(wrong, 0, "threads", pool.n_threads(), "n", n, "shares", shares, "piece", piece);
  CHECK_EQ(bad_range.load(), 0, "threads", pool.n_threads(), "n", n, "shares", shares, "piece", piece);
}

}  // namespace

int main() {
  std::mt19937 rng(12345);
  CHECK(ThreadPool::default_thread_count() >= 1);
  for (int n_threads : {0, 1, 2, 3, 4, 8}) {
    ThreadPool pool(n_threads);
    CHECK_EQ(pool.n_threads(), std::max(1, n_threads));
    // Sizes around the thread count, then big ones, alternating with tiny ones.
    std::vector<int64_t> sizes = {0, 1, 2, 3, 5, 7, 8, 9, 16, 17, 64, 1000, 1, 4096, 0, 2, 333};
    for (int round = 0; round < 60; ++round) {
      for (int64_t n : sizes) check_run(pool, n, /*uneven=*/false, rng);
      check_run(pool, (int64_t)(rng() % 300), /*uneven=*/false, rng);
    }
    for (int round = 0; round < 5; ++round) check_run(pool, 64, /*uneven=*/true, rng);
    for (int64_t n : {0, 1, 2, 3, 10, 31, 100, 1000, 4097})
      for (int64_t min_per_task : {1, 2, 7, 64, 10000}) check_parallel_for(pool, n, min_per_task);
    for (int64_t n : {0, 1, 2, 3, 10, 31, 100, 1000, 4097})
      for (int shares : {1, 2, 3, 8})
        for (int64_t piece : {1, 3, 64, 100000}) check_run_shares(pool, n, shares, piece, false);
    for (int round = 0; round < 3; ++round) check_run_shares(pool, 400, pool.n_threads(), 4, true);
  }
  // Pools created and destroyed in quick succession (destructor joins workers that may never have
  // received a job).
  for (int i = 0; i < 50; ++i) {
    ThreadPool pool(1 + i % 4);
    if (i % 2) check_run(pool, i, false, rng);
  }
  // Several pools used from several threads at once (each pool by one thread: run() is not reentrant).
  std::vector<std::thread> users;
  for (int u = 0; u < 3; ++u) {
    users.emplace_back([u] {
      std::mt19937 local_rng(u);
      ThreadPool pool(2);
      for (int round = 0; round < 200; ++round) check_run(pool, (int64_t)(local_rng() % 50), false, local_rng);
    });
  }
  for (auto& t : users) t.join();

  // The pool times its runs with and without the workers and keeps the faster (SoloChooser). Here a worker's tasks
  // take 300 us longer than the caller's (as if the OS kept descheduling it): alone is faster, and
  // the pool goes solo, every task then on the caller, each still exactly once. When the tasks cost
  // the same wherever they run (busy work), the workers halve the time and the pool takes them back.
  {
    ThreadPool pool(2);
    CHECK(!pool.solo());
    for (int round = 0; round < 20000 && !pool.solo(); ++round)
      pool.run(2, [&](int64_t, int thread) {
        if (thread != 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
      });
    CHECK(pool.solo());
    std::atomic<int> off_caller{0}, runs{0};
    pool.run(64, [&](int64_t, int thread) {
      off_caller.fetch_add(thread != 0);
      runs.fetch_add(1);
    });
    CHECK_EQ(off_caller.load(), 0);
    CHECK_EQ(runs.load(), 64);
    // Solo, run_shares hands the caller the whole range at once, front to back as one thread would
    // walk it (not its own share and then the other's from the back).
    std::vector<std::pair<int64_t, int64_t>> ranges;
    pool.run_shares(1000, 2, 10, [&](int64_t begin, int64_t end, int) { ranges.emplace_back(begin, end); });
    CHECK_EQ(ranges.size(), (size_t)1);
    const bool whole_range = ranges.size() == 1 && ranges[0].first == 0 && ranges[0].second == 1000;
    CHECK(whole_range);
    const auto busy = [](int64_t, int) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      while (std::chrono::steady_clock::now() < until) {
      }
    };
    for (int round = 0; round < 20000 && pool.solo(); ++round) pool.run(2, busy);
    CHECK(!pool.solo());
  }
  // SoloChooser times both modes on the same mix of runs. A prompt's long runs, then a decode's
  // short ones (the workers twice as fast on both): no run outside a probe goes solo (timing whole
  // windows one mode after the other set the prompt's runs against the decode's and went solo for
  // thousands of runs). Alone twice as fast: outside the first windows and probes, every run is solo.
  const auto solo_outside_probes = [](double alone_over_workers) {
    SoloChooser chooser;
    int64_t solo = 0;
    for (int64_t run = 0; run < 20300; ++run) {
      const double with_workers = run < 300 ? 1e-3 : 3e-5;
      const bool probe = chooser.probing(), alone = chooser.next_run_solo(0);
      chooser.record(alone, 0, alone ? with_workers * alone_over_workers : with_workers);
      solo += alone && !probe;
    }
    return solo;
  };
  CHECK_EQ(solo_outside_probes(2.0), 0);
  CHECK(solo_outside_probes(0.5) > 20300 - 4 * SoloChooser::kWindowRuns - 20300 / SoloChooser::kWindowsBetweenProbes);
  // Runs of very different sizes, as in a decode token of Gemma 3 270M: 126 short runs and one
  // long one (its output matmul, half the token's time), each timed with +-30% noise. With the
  // workers twice as fast on every run, no run outside a probe goes solo (a coin flip per run, with
  // the modes' mean times per run compared, went solo after about one probe in four: both long runs
  // of a window on the workers' side). With solo twice as fast, every run after the first probe
  // does. Either way the mode holds, so the probes thin out: the windows between them double up to
  // kMostWindowsBetweenProbes.
  struct MixedRuns {
    int64_t runs = 0, solo_outside_probes = 0, probe_runs = 0;
  };
  const auto mixed_runs = [](double alone_over_workers) {
    SoloChooser chooser;
    std::mt19937 noise_rng(7);
    std::uniform_real_distribution<double> noise(0.7, 1.3);
    MixedRuns m;
    for (int token = 0; token < 2000; ++token) {
      for (int r = 0; r < 127; ++r, ++m.runs) {
        const bool long_run = r == 126;
        const int size_class = long_run ? 28 : 18;
        const double with_workers = (long_run ? 6e-3 : 25e-6) * noise(noise_rng);
        const bool probe = chooser.probing(), alone = chooser.next_run_solo(size_class);
        chooser.record(alone, size_class, alone ? with_workers * alone_over_workers : with_workers);
        m.solo_outside_probes += alone && !probe;
        m.probe_runs += probe;
      }
    }
    return m;
  };
  {
    const MixedRuns m = mixed_runs(2.0);
    CHECK_EQ(m.solo_outside_probes, 0);
    // 992 windows: a probe after the first 2, then 32 windows to the next, then 64 each time: 16
    // probes (every 16 windows: 58).
    CHECK_EQ(m.probe_runs, 16 * SoloChooser::kWindowRuns);
  }
  {
    const MixedRuns m = mixed_runs(0.5);
    CHECK(m.solo_outside_probes >= m.runs - m.probe_runs - 2 * SoloChooser::kWindowRuns);
    CHECK_EQ(m.probe_runs, 17 * SoloChooser::kWindowRuns);  // going solo resets the gap to 16 windows once
  }
  return sinkstream_test::check_summary("test_thread_pool");
}
