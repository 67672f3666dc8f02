#include "runtime/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <new>
#include <string>
#include <system_error>

#include "runtime/error.h"

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace pocketml {
namespace {

thread_local bool t_inside_pool_task = false;

// How long a thread busy-waits before it sleeps inside a KeepWarm scope: longer
// than the gap between consecutive kernels of a model step.
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(100);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins until done() or the spin time is over (at once when `spin` is false);
// returns done().
template <class Done>
bool spin_until(bool spin, Done done) {
  if (!spin) return done();
  const auto deadline = std::chrono::steady_clock::now() + kSpinBeforeSleep;
  for (int i = 0;; ++i) {
    if (done()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return done();
  }
}

}  // namespace

int default_num_threads() {
  if (const char* env = std::getenv("POCKETML_NUM_THREADS")) {
    // The whole value a count ("4x" was read as 4); anything else keeps the default.
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1) return static_cast<int>(std::min<long>(n, ThreadPool::kMaxThreads));
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

ThreadPool& ThreadPool::global() {
  static ThreadPool* const pool = new ThreadPool;  // leaked on purpose, see ~ThreadPool
  return *pool;
}

ThreadPool::ThreadPool() {
  // Fewer threads than asked where the system refuses more (a container's limit,
  // POCKETML_NUM_THREADS=4096): the constructor's unwinding hung on its condition
  // variables, which the started workers were waiting on.
  num_threads_ = start_workers(default_num_threads() - 1) + 1;
#if defined(__unix__) || defined(__APPLE__)
  // fork() copies no thread but the caller, and a job or a sleeping worker may
  // hold a lock at that moment: no job runs across a fork, and the child starts
  // its workers afresh (multiprocessing, DataLoader workers).
  pthread_atfork([] { global().run_mutex_.lock(); }, [] { global().run_mutex_.unlock(); },
                 [] { global().forget_workers_after_fork(); });
#endif
}

void ThreadPool::forget_workers_after_fork() {
  // The handles name threads of the parent: joining waits forever, and detaching
  // throws on macOS (pthread_detach: ESRCH). They are leaked instead.
  new std::vector<std::thread>(std::move(workers_));
  workers_.clear();
  // A parent's worker may have held the state lock; none of its waiters exist here.
  new (&state_mutex_) std::mutex;
  new (&wake_) std::condition_variable;
  new (&done_) std::condition_variable;
  sleeping_workers_ = 0;
  busy_workers_ = 0;
  run_mutex_.unlock();
}

int ThreadPool::start_workers(int count) {
  stopping_ = false;
  // New workers wait for the next job, not one that finished before they existed.
  const uint64_t current = ticket_.load();
  try {
    for (int i = 0; i < count; ++i) workers_.emplace_back([this, i, current] { worker_loop(i + 1, current); });
  } catch (const std::system_error&) {  // out of threads: the ones started serve
  }
  return static_cast<int>(workers_.size());
}

void ThreadPool::stop_workers() {
  stopping_ = true;
  {
    std::lock_guard<std::mutex> lock(state_mutex_);  // a worker between its check and its wait sees stopping_
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    fail_argument(ErrorKind::InvalidArgument, "num_threads", "an integer from 1 to " + std::to_string(kMaxThreads),
                  std::to_string(n));
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  if (n == num_threads_) return;
  const int before = num_threads_;
  stop_workers();
  const int started = start_workers(n - 1);
  if (started < n - 1) {  // the system refused threads: back to the count before, and say so
    stop_workers();
    num_threads_ = start_workers(before - 1) + 1;
    fail(ErrorKind::Runtime, "argument 'num_threads': the system started only " + std::to_string(started + 1) +
                                 " of the " + std::to_string(n) + " threads asked for; kept " +
                                 std::to_string(num_threads_.load()));
  }
  num_threads_ = n;
}

bool ThreadPool::use_openmp_threads(const std::string& library) {
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  return openmp_.attach(library);
}

void ThreadPool::use_own_threads() {
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  openmp_.detach();
}

bool ThreadPool::on_openmp_threads() {
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  return openmp_.active();
}

void ThreadPool::run_openmp_member(void* pool) {
  ThreadPool& self = *static_cast<ThreadPool*>(pool);
  self.run_chunks(self.openmp_.thread_num(), self.openmp_.team_size());
}

void ThreadPool::run_chunks(int thread_index, int team_size) {
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
  for (int64_t chunk = thread_index; chunk < participants_; chunk += team_size) run_one(chunk);
  for (int64_t chunk = next_chunk_.fetch_add(1); chunk < num_chunks_; chunk = next_chunk_.fetch_add(1)) run_one(chunk);
  t_inside_pool_task = false;
}

void ThreadPool::worker_loop(int index, uint64_t seen) {
  for (;;) {
    auto job_or_stop = [&] { return stopping_.load() || ticket_.load() != seen; };
    if (!spin_until(warm_scopes_.load() > 0, job_or_stop)) {
      std::unique_lock<std::mutex> lock(state_mutex_);
      ++sleeping_workers_;
      wake_.wait(lock, job_or_stop);
      --sleeping_workers_;
    }
    if (stopping_) return;
    seen = ticket_.load();
    if (index >= static_cast<int>(seen & 0xFFFF)) continue;  // this job needs fewer threads
    run_chunks(index, participants_);
    if (busy_workers_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(state_mutex_);  // the caller may be between its check and its wait
      done_.notify_one();
    }
  }
}

void ThreadPool::run_on_own_threads(int participants) {
  busy_workers_ = participants - 1;
  ticket_.store(((ticket_.load() >> 16) + 1) << 16 | static_cast<uint64_t>(participants));  // publishes the job
  if (sleeping_workers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(state_mutex_); }  // a worker between its check and its wait sees the ticket
    wake_.notify_all();
  }
  run_chunks(0, participants);
  auto all_done = [&] { return busy_workers_.load() == 0; };
  if (!spin_until(warm_scopes_.load() > 0, all_done)) {
    std::unique_lock<std::mutex> lock(state_mutex_);
    done_.wait(lock, all_done);
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
  if (workers_.empty() && num_threads_ > 1) start_workers(num_threads_ - 1);  // in a fork's child
  // No more participants than threads exist (starting one may have failed).
  const int threads = openmp_.active() ? num_threads_.load() : static_cast<int>(workers_.size()) + 1;
  const int participants = static_cast<int>(std::min<int64_t>(threads, chunks));
  fn_ = &fn;
  n_ = n;
  grain_ = grain;
  num_chunks_ = chunks;
  participants_ = participants;
  next_chunk_ = participants;
  error_ = nullptr;
  if (openmp_.active()) {
    openmp_.run(&ThreadPool::run_openmp_member, this, participants);
  } else {
    run_on_own_threads(participants);
  }
  fn_ = nullptr;
  if (error_) std::rethrow_exception(error_);
}

}  // namespace pocketml
