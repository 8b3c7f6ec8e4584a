// A persistent pool of worker threads: no thread is created per token.
// run(n_tasks, fn) calls fn(task, thread_index) for every task in [0, n_tasks) and returns when all
// are done; the calling thread works too. Tasks are claimed with an atomic counter, so uneven tasks
// balance themselves.
//
// Latency matters more than anything here: a decode step dispatches a few hundred small jobs, so
// workers and the caller spin briefly (about 200 us) on an atomic generation counter before they
// fall back to sleeping on a condition variable.
//
// A shared machine (an edge box runs other services) may take a core away: a worker descheduled
// in the middle of a run holds up the caller until the OS runs it again, and a decode step has
// hundreds of runs, so two threads beside a busy process can be slower than one. The pool measures
// instead of guessing (SoloChooser): every so often a probe window sends runs either to the caller
// alone (the workers sleep, leaving any free core to it) or to all the threads, half of each size
// of run each way, and the next windows use the workers unless running alone was clearly faster.
// Results do not change: every kernel's output is the same whatever thread computes which part
// (ops.h).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sinkstream {

// Which way a pool's runs go: on the caller alone (solo) or on all the threads. Runs are counted
// in windows of kWindowRuns; every so many windows (and soon after the start: a new pool learns its
// machine quickly) one probe window times both modes on the same mix of runs. A probe costs: half
// its runs go the slower way, and beside a busy process a run with the workers can wait a time
// slice for one. So each probe that keeps the mode doubles the windows to the next, from
// kWindowsBetweenProbes up to kMostWindowsBetweenProbes (16,384 runs: about a second of decoding),
// and a probe that changes it starts again from kWindowsBetweenProbes.
//
// Runs differ in size by four orders of magnitude: a decode token of Gemma 3 270M is 127 runs, one
// of them its 180 MB output matmul, half the token's time. So the probe compares like with like:
// each run comes with a size class (ThreadPool: its number of tasks, or run_shares' work),
// within a class the runs go in pairs, one of each pair alone and the other with the workers (which
// one at random), and the two modes' times are compared class by class, each class weighted by its
// runs (a stratified estimate). Before, each run's mode was a coin flip and the modes' mean times
// per run were compared: a window held two of those matmuls, and when both went to the workers,
// their 12 ms against the solo side's short runs sent a quiet pool solo for 16 windows (about 32
// tokens at half speed), one probe in four. (Timing whole windows one mode after the other was
// worse: the long runs of a prompt against the short ones of the decode steps after it.)
// Solo is kept only when it is clearly faster (kSoloMargin). Not thread-safe: the pool's caller
// owns it.
class SoloChooser {
 public:
  static constexpr int64_t kWindowRuns = 256;
  static constexpr int64_t kWindowsBetweenProbes = 16;
  static constexpr int64_t kMostWindowsBetweenProbes = 64;
  static constexpr double kSoloMargin = 0.8;
  static constexpr int kSizeClasses = 64;  // size_class: 0 .. kSizeClasses - 1

  bool next_run_solo(int size_class);                      // the mode of the next run
  void record(bool solo, int size_class, double seconds);  // and how long it took
  bool solo() const { return solo_; }                      // the mode chosen at the last probe
  bool probing() const { return probing_; }

 private:
  struct ClassProbe {
    double seconds[2] = {0.0, 0.0};  // this probe's time and runs of the class, with workers [0] and alone [1]
    int64_t runs[2] = {0, 0};
    int pair_first = -1;  // the mode of the first run of an open pair (1: alone), or -1
  };
  double alone_over_with_workers() const;  // this probe's estimate of time alone / with the workers
  void end_probe();                        // chooses the mode and when to probe next

  bool solo_ = false;
  bool probing_ = false;
  int64_t window_runs_ = 0;
  int64_t windows_since_probe_ = kWindowsBetweenProbes - 2;
  int64_t windows_between_probes_ = kWindowsBetweenProbes;
  ClassProbe classes_[kSizeClasses];
  uint64_t random_state_ = 0x9e3779b97f4a7c15u;
};

class ThreadPool {
 public:
  // n_threads counts the caller: n_threads = 1 runs everything inline.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int n_threads() const { return (int)workers_.size() + 1; }

  // Runs fn(task, thread) for task in [0, n_tasks). Not reentrant: one run() at a time per pool.
  void run(int64_t n_tasks, const std::function<void(int64_t task, int thread)>& fn);

  // Splits [0, n) into about n_threads * 4 contiguous ranges (each at least min_per_task long)
  // and runs fn(begin, end, thread) on each; small n runs inline.
  void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end, int thread)>& fn,
                    int64_t min_per_task = 1);

  // Splits [0, n) into `shares` contiguous shares (at most n_threads) and calls fn(begin, end,
  // thread) on pieces of them: each thread walks a share of its own from the front, `piece` items
  // at a time, then helps with the others from their back, half of what is left at a time. Every
  // thread streams through one contiguous region until the run's end is near, where dynamic tasks
  // would send it jumping between regions (each jump costs the ramp-up of the hardware's and the
  // kernels' prefetching: measured 15% of a memory-bound decode step with 4 tasks per thread);
  // a late or slow thread's share is still finished by the others. piece >= 1. cost_per_piece: how
  // the time of a piece grows (a matmul: its tokens), so that the run's size for the pool's probe
  // (SoloChooser), its pieces times that, sets like against like.
  void run_shares(int64_t n, int shares, int64_t piece,
                  const std::function<void(int64_t begin, int64_t end, int thread)>& fn, int64_t cost_per_piece = 1);

  // Physical cores when they can be told apart from SMT siblings, else logical CPUs.
  static int default_thread_count();

  // Whether runs now go on the caller alone (measured faster than with the workers; see above).
  bool solo() const { return chooser_.solo(); }

 private:
  // run() with the SoloChooser's size class of the run (run: its task count; run_shares: its
  // work, in classes of their own). alone, when given, does all the tasks' work when the run goes
  // solo, in place of fn for each task (run_shares: its whole range front to back).
  void run_sized(int64_t n_tasks, int size_class, const std::function<void(int64_t task, int thread)>& fn,
                 const std::function<void()>* alone = nullptr);
  void worker_loop(int thread_index);
  void work_on_current_job(int thread_index);

  // One share of run_shares: [front, back) still to do, packed in one word, so that the owner taking
  // from the front and helpers taking from the back can never both take an item.
  class Share {
   public:
    void reset(int64_t begin, int64_t end) { range_.store(pack(begin, end), std::memory_order_relaxed); }
    bool take_front(int64_t piece, int64_t* begin, int64_t* end);  // the next piece; false: none left
    bool take_back(int64_t piece, int64_t* begin, int64_t* end);   // half of what is left (>= a piece)

   private:
    static uint64_t pack(int64_t f, int64_t b) { return (uint64_t)f << 32 | (uint64_t)b; }
    static int64_t front(uint64_t v) { return (int64_t)(v >> 32); }
    static int64_t back(uint64_t v) { return (int64_t)(v & 0xffffffffu); }
    alignas(64) std::atomic<uint64_t> range_{0};  // a cache line each: the owners do not contend
  };

  std::vector<Share> shares_;  // one per thread
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int)>* job_ = nullptr;
  int64_t job_tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
  std::atomic<int> busy_workers_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stopping_{false};
  SoloChooser chooser_;
};

}  // namespace sinkstream
