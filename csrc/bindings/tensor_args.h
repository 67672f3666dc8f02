#pragma once
// Zero-copy views of NumPy arrays, torch CPU tensors and any other producer of
// the DLPack protocol (__dlpack__ / __dlpack_device__). bf16 works because the
// protocol carries it even where NumPy cannot. NumPy arrays of NumPy's own
// dtypes are read directly and plain torch tensors go through torch's C
// exporter: the protocol's Python calls cost microseconds per argument, as much
// as a small kernel.
#include <pybind11/pybind11.h>

#include "runtime/tensor.h"

namespace pocketml::bindings {

namespace py = pybind11;

// A view of `obj` and the capsule that keeps the producer's export alive.
// The view is valid while this object lives (and the caller holds `obj`).
class TensorArg {
 public:
  TensorArg(py::handle obj, const char* arg_name);
  ~TensorArg();
  TensorArg(const TensorArg&) = delete;
  TensorArg& operator=(const TensorArg&) = delete;

  const TensorView& view() const { return view_; }
  operator const TensorView&() const { return view_; }

 private:
  bool from_numpy(py::handle obj, const char* arg);  // NumPy's own dtypes, read without a DLPack export

  py::object capsule_;  // the DLPack capsule, or the array itself for NumPy

  TensorView view_;
};


}  // namespace pocketml::bindings
