#pragma once
// One persistent pool for every kernel. Work is split into chunks; each thread
// takes the chunk of its own index first, then claims the rest from an atomic
// counter, so uneven chunks balance themselves without a scheduler.
//
// Waking a sleeping thread through a condition variable costs tens of
// microseconds, more than a whole decode-sized kernel. Inside a KeepWarm scope
// (a native model running kernels back to back) workers spin for a short while
// after each job before sleeping, and the caller spins while waiting for them.
// Outside one they sleep at once: spinning threads would take the cores from
// other pools (torch's OpenMP threads) between calls from Python.
//
// Where torch has loaded an OpenMP runtime, jobs can run on that runtime's
// threads instead (use_openmp_threads; see openmp_team.h for why).
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/openmp_team.h"

namespace pocketml {

class ThreadPool {
 public:
  using RangeFn = std::function<void(int64_t begin, int64_t end)>;

  static ThreadPool& global();

  // More would not help any kernel, and a job's ticket holds the count in 16 bits.
  static constexpr int kMaxThreads = 4096;

  int num_threads() const { return num_threads_.load(); }  // including the calling thread
  void set_num_threads(int n);

  // Calls fn(begin, end) for consecutive ranges of at most `grain` items covering
  // [0, n). Runs the chunks inline when there is one chunk, one thread, or when
  // called from inside a pool task. Rethrows the first exception a task threw.
  void parallel_for(int64_t n, int64_t grain, const RangeFn& fn);

  int warm_scopes() const { return warm_scopes_.load(); }  // KeepWarm scopes alive

  // Runs jobs on the threads of the OpenMP runtime found through `library`
  // (OpenMpTeam::attach; never in a fork's child); returns whether it does from now on.
  bool use_openmp_threads(const std::string& library);
  void use_own_threads();
  bool on_openmp_threads();  // waits for a running job

  // While one exists, threads spin briefly between jobs instead of sleeping.
  class KeepWarm {
   public:
    KeepWarm() { ThreadPool::global().warm_scopes_.fetch_add(1); }
    ~KeepWarm() { ThreadPool::global().warm_scopes_.fetch_sub(1); }
    KeepWarm(const KeepWarm&) = delete;
    KeepWarm& operator=(const KeepWarm&) = delete;
  };

  // Never destroyed (global() leaks it): at exit another thread may still be
  // inside a job, whose workers would quit unfinished and leave it waiting forever.
  ~ThreadPool() = delete;

 private:
  ThreadPool();
  // Starts up to `count` workers; returns how many started (the system may refuse threads).
  int start_workers(int count);
  void stop_workers();
  void worker_loop(int index, uint64_t seen_ticket);
  // Runs chunk thread_index (and those of threads a smaller team lacks), then
  // claims the rest.
  void run_chunks(int thread_index, int team_size);
  static void run_openmp_member(void* pool);
  void run_on_own_threads(int participants);  // the job's fields set; returns when every chunk ran
  void forget_workers_after_fork();

  std::vector<std::thread> workers_;
  std::atomic<int> num_threads_{1};

  std::mutex run_mutex_;  // one parallel_for at a time; callers from several threads queue here
  std::mutex state_mutex_;  // guards the sleeps below, not the job
  std::condition_variable wake_;
  std::condition_variable done_;
  // A job's ticket: (sequence number << 16) | number of participating threads, stored
  // after the job's fields are written. Workers read only the ticket to learn
  // whether they take part, so a late worker never reads fields being rewritten.
  std::atomic<uint64_t> ticket_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<int> sleeping_workers_{0};
  std::atomic<int> warm_scopes_{0};
  std::atomic<int> busy_workers_{0};

  const RangeFn* fn_ = nullptr;
  int64_t n_ = 0, grain_ = 1, num_chunks_ = 0;
  int participants_ = 0;
  OpenMpTeam openmp_;
  std::atomic<int64_t> next_chunk_{0};
  std::exception_ptr error_;
  std::mutex error_mutex_;
};

int default_num_threads();  // POCKETML_NUM_THREADS, else the cores this process may run on

inline void parallel_for(int64_t n, int64_t grain, const ThreadPool::RangeFn& fn) {
  ThreadPool::global().parallel_for(n, grain, fn);
}

}  // namespace pocketml
