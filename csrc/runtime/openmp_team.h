#pragma once
// An OpenMP runtime that another library (torch) has already loaded into the
// process, borrowed so that the thread pool's jobs run on its threads.
//
// Why: libgomp's threads spin for milliseconds after each parallel region by
// default. A pocketml kernel called between two torch operators then shares the
// cores with torch's spinning threads, and its own workers barely run: MiniLM's
// 37 pocketml int8 Linear layers took 122 ms per batch at 2 threads, 117 at one,
// and 59 with OMP_WAIT_POLICY=PASSIVE. On the runtime's own threads the same
// cores do the work instead of spinning.
//
// Only the GNU OpenMP entry points are used (GOMP_parallel, omp_get_thread_num,
// omp_get_num_threads): libgomp exports them, and so do LLVM's libomp and
// Intel's libiomp5 for compatibility.
#include <string>

namespace pocketml {

class OpenMpTeam {
 public:
  // Binds to the entry points found through `library` if the process has loaded
  // it (nothing is loaded here). The lookup covers its dependencies too, so torch's
  // libtorch_cpu gives the runtime torch links. Refused in a fork's child (made
  // after this library loaded). Returns whether bound.
  bool attach(const std::string& library);
  void detach();

  // Bound, and not in a fork's child (whose copy of the runtime's threads does
  // not exist): such a child runs on the pool's own threads.
  bool active() const;

  // Calls member(data) on `threads` threads of a team (the caller is thread 0)
  // and returns when every one has. The runtime may form a smaller team.
  void run(void (*member)(void*), void* data, int threads) const;
  int thread_num() const { return thread_num_(); }   // inside member
  int team_size() const { return team_size_(); }    // inside member

 private:
  using ParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);
  using IntFn = int (*)();
  void* handle_ = nullptr;
  ParallelFn parallel_ = nullptr;
  IntFn thread_num_ = nullptr;
  IntFn team_size_ = nullptr;
};

}  // namespace pocketml
