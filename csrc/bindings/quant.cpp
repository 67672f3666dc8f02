#include <memory>
#include <string>

#include "bindings/quantized_args.h"
#include "bindings/register.h"
#include "bindings/released_gil.h"
#include "bindings/tensor_args.h"
#include "quant/quant.h"
#include "runtime/error.h"

namespace py = pybind11;

namespace pocketml::bindings {
namespace {

AffineMethod parse_method(const std::string& method) {
  if (method == "rtn") return AffineMethod::rtn;
  if (method == "mse") return AffineMethod::mse;
  fail_argument(ErrorKind::InvalidArgument, "method", "'rtn' or 'mse'", "'" + method + "'");
}

}  // namespace

void register_quant(py::module_& m) {
  m.def("quant_pack", [](py::handle codes, int bits, py::handle packed) {
    TensorArg c(codes, "codes"), p(packed, "packed");
    ReleasedGil release;
    pack_codes(c, bits, p);
  }, py::arg("codes"), py::arg("bits"), py::arg("packed"), "Packs plain codes uint8 [N, K] into the packed layout.");

  m.def("quant_unpack", [](py::handle packed, int bits, py::handle codes) {
    TensorArg p(packed, "packed"), c(codes, "codes");
    ReleasedGil release;
    unpack_codes(p, bits, c);
  }, py::arg("packed"), py::arg("bits"), py::arg("codes"), "Unpacks the packed layout into plain codes uint8 [N, K].");

  m.def("quant_quantize_affine", [](py::handle weight, int bits, int64_t group_size, bool symmetric,
                                     const std::string& method, py::handle importance, py::handle packed,
                                     py::handle scales, py::handle zero_points) {
    TensorArg w(weight, "weight"), p(packed, "packed"), s(scales, "scales");
    OptionalTensorArg imp(importance, "importance"), z(zero_points, "zero_points");
    AffineOptions options;
    options.bits = bits;
    options.group_size = group_size;
    options.symmetric = symmetric;
    options.method = parse_method(method);
    ReleasedGil release;
    quantize_affine(w, options, imp.view(), p, s, z.view());
  }, py::arg("weight"), py::arg("bits"), py::arg("group_size"), py::arg("symmetric"), py::arg("method"),
     py::arg("importance"), py::arg("packed"), py::arg("scales"), py::arg("zero_points"));

  m.def("quant_quantize_lut", [](py::handle weight, int nbits, int64_t group_size, uint64_t seed, int max_iterations,
                                  py::handle importance, py::handle packed, py::handle lut) {
    TensorArg w(weight, "weight"), p(packed, "packed"), l(lut, "lut");
    OptionalTensorArg imp(importance, "importance");
    LutOptions options;
    options.bits = nbits;
    options.group_size = group_size;
    options.seed = seed;
    options.max_iterations = max_iterations;
    ReleasedGil release;
    quantize_lut(w, options, imp.view(), p, l);
  }, py::arg("weight"), py::arg("nbits"), py::arg("group_size"), py::arg("seed"), py::arg("max_iterations"),
     py::arg("importance"), py::arg("packed"), py::arg("lut"));

  m.def("quant_dequantize", [](const std::string& kind, int bits, int64_t cols, int64_t group_size, py::handle packed,
                                py::handle scales, py::handle zero_points, py::handle lut, py::handle out) {
    QuantizedArgs q(kind, bits, cols, group_size, packed, scales, zero_points, lut);
    TensorArg o(out, "out");
    ReleasedGil release;
    dequantize(q.views, o);
  }, py::arg("kind"), py::arg("bits"), py::arg("cols"), py::arg("group_size"), py::arg("packed"), py::arg("scales"),
     py::arg("zero_points"), py::arg("lut"), py::arg("out"));

  m.def("quant_matmul", [](py::handle x, const std::string& kind, int bits, int64_t cols, int64_t group_size,
                            py::handle packed, py::handle scales, py::handle zero_points, py::handle lut, py::handle out,
                            int act_bits) {
    TensorArg xa(x, "x"), o(out, "out");
    QuantizedArgs q(kind, bits, cols, group_size, packed, scales, zero_points, lut);
    ReleasedGil release;
    quantized_matmul(xa, q.views, o, act_bits);
  }, py::arg("x"), py::arg("kind"), py::arg("bits"), py::arg("cols"), py::arg("group_size"), py::arg("packed"),
     py::arg("scales"), py::arg("zero_points"), py::arg("lut"), py::arg("out"), py::arg("act_bits") = 0,
     "out [..., N] = x [..., K] @ dequantize(W)^T with fp32 accumulation (act_bits=8: int8 activations).");
}

}  // namespace pocketml::bindings
