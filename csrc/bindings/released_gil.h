#pragma once
// The GIL released around a native call, for as long as the object lives.
#include <pybind11/pybind11.h>

namespace pocketml::bindings {

// As pybind11's gil_scoped_release, but for one thing: Python ends a daemon
// thread that takes the GIL back while the interpreter shuts down with
// pthread_exit, and that forced unwind must be free to leave this destructor.
// Through gil_scoped_release's (noexcept) destructor it aborted the whole
// process ("terminate called without an active exception", status 134);
// pybind11's dispatcher lets it pass on.
class ReleasedGil {
 public:
  ReleasedGil() : state_(PyEval_SaveThread()) {}
  ReleasedGil(const ReleasedGil&) = delete;
  ReleasedGil& operator=(const ReleasedGil&) = delete;
  ~ReleasedGil() noexcept(false) { PyEval_RestoreThread(state_); }

 private:
  PyThreadState* state_;
};

}  // namespace pocketml::bindings
