#include "convert/convert.h"

#include "bindings/register.h"
#include "bindings/released_gil.h"
#include "bindings/tensor_args.h"

namespace py = pybind11;

namespace pocketml::bindings {

void register_convert(py::module_& m) {
  m.def("convert", [](py::handle x, py::handle out) {
    TensorArg src(x, "x"), dst(out, "out");
    ReleasedGil release;
    convert(src, dst);
  }, py::arg("x"), py::arg("out"), "Converts x into the preallocated out (fp32/fp16/bf16, same shape, contiguous).");
}

}  // namespace pocketml::bindings
