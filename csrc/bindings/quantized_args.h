#pragma once
// Views of one quantized weight passed from Python as its arrays (the fields of
// pocketml.quant.QuantizedTensor), shared by the bindings that take weights.
#include <memory>
#include <string>

#include "bindings/tensor_args.h"
#include "quant/quant.h"
#include "runtime/error.h"

namespace pocketml::bindings {

// A view of an optional array argument: empty (data == nullptr) for None.
class OptionalTensorArg {
 public:
  OptionalTensorArg(py::handle obj, const char* arg_name) {
    if (!obj.is_none()) arg_ = std::make_unique<TensorArg>(obj, arg_name);
  }
  TensorView view() const { return arg_ ? arg_->view() : TensorView{}; }

 private:
  std::unique_ptr<TensorArg> arg_;
};

inline QuantKind parse_kind(const std::string& kind) {
  if (kind == "affine") return QuantKind::affine;
  if (kind == "lut") return QuantKind::lut;
  fail_argument(ErrorKind::InvalidArgument, "kind", "'affine' or 'lut'", "'" + kind + "'");
}

// Holds the views of one quantized weight's arrays while a call runs.
struct QuantizedArgs {
  TensorArg packed;
  OptionalTensorArg scales, zero_points, lut;
  QuantizedViews views;

  QuantizedArgs(const std::string& kind, int bits, int64_t cols, int64_t group_size, py::handle packed_obj,
                py::handle scales_obj, py::handle zero_points_obj, py::handle lut_obj)
      : packed(packed_obj, "packed"), scales(scales_obj, "scales"), zero_points(zero_points_obj, "zero_points"),
        lut(lut_obj, "lut") {
    views.kind = parse_kind(kind);
    views.bits = bits;
    views.cols = cols;
    views.group_size = group_size;
    views.packed = packed.view();
    views.scales = scales.view();
    views.zero_points = zero_points.view();
    views.lut = lut.view();
  }
};

}  // namespace pocketml::bindings
