#include "runtime/openmp_team.h"

#include <atomic>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#define POCKETML_HAS_DLOPEN 1
#endif

namespace pocketml {
namespace {

#if defined(POCKETML_HAS_DLOPEN)
// Set in every fork's child made after this library loaded. Such a child may hold
// a copy of the parent's OpenMP team without its threads, and GOMP_parallel
// would wait for them forever (torch's own operators hang there too).
std::atomic<bool> g_forked{false};
const bool g_fork_watch = pthread_atfork(nullptr, nullptr, [] { g_forked = true; }) == 0;
#endif

}  // namespace

bool OpenMpTeam::attach(const std::string& library) {
  detach();
#if defined(POCKETML_HAS_DLOPEN)
  if (g_forked || !g_fork_watch) return false;
  // RTLD_NOLOAD: a runtime the process has not loaded is not ours to start.
  void* handle = dlopen(library.c_str(), RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
  if (handle == nullptr) return false;
  auto parallel = reinterpret_cast<ParallelFn>(dlsym(handle, "GOMP_parallel"));
  auto thread_num = reinterpret_cast<IntFn>(dlsym(handle, "omp_get_thread_num"));
  auto team_size = reinterpret_cast<IntFn>(dlsym(handle, "omp_get_num_threads"));
  if (parallel == nullptr || thread_num == nullptr || team_size == nullptr) {
    dlclose(handle);
    return false;
  }
  handle_ = handle;
  parallel_ = parallel;
  thread_num_ = thread_num;
  team_size_ = team_size;
  return true;
#else
  (void)library;
  return false;
#endif
}

void OpenMpTeam::detach() {
#if defined(POCKETML_HAS_DLOPEN)
  if (handle_ != nullptr) dlclose(handle_);
#endif
  handle_ = nullptr;
  parallel_ = nullptr;
  thread_num_ = team_size_ = nullptr;
}

bool OpenMpTeam::active() const {
#if defined(POCKETML_HAS_DLOPEN)
  return parallel_ != nullptr && !g_forked;
#else
  return false;
#endif
}

void OpenMpTeam::run(void (*member)(void*), void* data, int threads) const {
  parallel_(member, data, static_cast<unsigned>(threads), 0);
}

}  // namespace pocketml
