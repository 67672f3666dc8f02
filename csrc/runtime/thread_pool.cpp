#include "runtime/thread_pool.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "runtime/error.h"

#if defined(__linux__)
#include <sched.h>
#endif

namespace pocketml {
namespace {
thread_local bool t_inside_pool_task = false;
}

int default_num_threads() {
  if (const char* env = std::getenv("POCKETML_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool;
  return pool;
}

ThreadPool::ThreadPool() {
  const int n = default_num_threads();
  num_threads_ = n;
  start_workers(n - 1);
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::start_workers(int count) {
  stopping_ = false;
  // New workers wait for the next job, not one that finished before they existed.
  const uint64_t current = generation_;
  for (int i = 0; i < count; ++i) workers_.emplace_back([this, i, current] { worker_loop(i + 1, current); });
}

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::set_num_threads(int n) {
  if (n < 1) fail_argument(ErrorKind::InvalidArgument, "num_threads", "an integer >= 1", std::to_string(n));
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  if (n == num_threads_) return;
  stop_workers();
  num_threads_ = n;
  start_workers(n - 1);
}

void ThreadPool::run_chunks(int thread_index) {
  auto run_one = [&](int64_t chunk) {
    const int64_t begin = chunk * grain_;
    const int64_t end = std::min(n_, begin + grain_);
    try {
      (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (!error_) error_ = std::current_exception();
    }
  };
  t_inside_pool_task = true;
  if (thread_index < num_chunks_) run_one(thread_index);
  for (int64_t chunk = next_chunk_.fetch_add(1); chunk < num_chunks_; chunk = next_chunk_.fetch_add(1)) run_one(chunk);
  t_inside_pool_task = false;
}

void ThreadPool::worker_loop(int index, uint64_t seen) {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(state_mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      if (index >= participants_) continue;  // this job needs fewer threads
    }
    run_chunks(index);
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      if (--busy_workers_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const RangeFn& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = (n + grain - 1) / grain;
  if (chunks == 1 || num_threads_ == 1 || t_inside_pool_task) {
    // Still in grain-sized ranges: kernels may size per-chunk scratch by grain.
    for (int64_t begin = 0; begin < n; begin += grain) fn(begin, std::min(n, begin + grain));
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  const int participants = static_cast<int>(std::min<int64_t>(num_threads_, chunks));
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    fn_ = &fn;
    n_ = n;
    grain_ = grain;
    num_chunks_ = chunks;
    participants_ = participants;
    next_chunk_ = participants;
    error_ = nullptr;
    busy_workers_ = participants - 1;
    ++generation_;
  }
  wake_.notify_all();
  run_chunks(0);
  {
    std::unique_lock<std::mutex> lock(state_mutex_);
    done_.wait(lock, [&] { return busy_workers_ == 0; });
    fn_ = nullptr;
  }
  if (error_) std::rethrow_exception(error_);
}

}  // namespace pocketml
