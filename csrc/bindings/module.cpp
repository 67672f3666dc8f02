// pocketml._core: one register_<area>() per area; each only translates
// arguments and calls into the core with the GIL released.
#include <pybind11/pybind11.h>

#include "bindings/register.h"
#include "runtime/error.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "pocketml native core";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const pocketml::Error& e) {
      switch (e.kind()) {
        case pocketml::ErrorKind::InvalidArgument: PyErr_SetString(PyExc_ValueError, e.what()); return;
        case pocketml::ErrorKind::Type: PyErr_SetString(PyExc_TypeError, e.what()); return;
        case pocketml::ErrorKind::Runtime: PyErr_SetString(PyExc_RuntimeError, e.what()); return;
        case pocketml::ErrorKind::NotImplemented: PyErr_SetString(PyExc_NotImplementedError, e.what()); return;
        case pocketml::ErrorKind::OutOfMemory: PyErr_SetString(PyExc_MemoryError, e.what()); return;
      }
    }
  });
  pocketml::bindings::register_tensor_args(m);
  pocketml::bindings::register_runtime(m);
  pocketml::bindings::register_convert(m);
  pocketml::bindings::register_quant(m);
  pocketml::bindings::register_data(m);
  pocketml::bindings::register_attention(m);
  pocketml::bindings::register_models(m);
}
