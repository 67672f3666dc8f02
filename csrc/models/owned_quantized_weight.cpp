#include "models/owned_quantized_weight.h"

#include <cstring>

#include "runtime/error.h"

namespace pocketml {
namespace {

// Copies a contiguous array (or nothing, for an absent one) and points `view` at the copy.
void copy_array(const TensorView& source, std::vector<uint8_t>& storage, TensorView& view, const std::string& arg) {
  view = source;
  if (source.data == nullptr) return;
  require_contiguous(source, arg);
  storage.resize(static_cast<size_t>(source.numel()) * dtype_size(source.dtype));
  if (!storage.empty()) std::memcpy(storage.data(), source.data, storage.size());
  view.data = storage.data();
  view.writable = false;
  int64_t stride = 1;
  for (int d = view.ndim - 1; d >= 0; --d) {
    view.strides[d] = stride;
    stride *= view.shape[d];
  }
}

}  // namespace

OwnedQuantizedWeight::OwnedQuantizedWeight(const QuantizedViews& q, const std::string& name, int64_t rows,
                                           int64_t cols) {
  try {
    // make_packed_weights widens the LUT only after checking its shape, so lut_entries floats suffice.
    std::vector<float> lut_f32(static_cast<size_t>(lut_entries(q)));
    make_packed_weights(q, lut_f32.data());  // every dtype, shape, bits and group-size check, finite LUT entries
  } catch (const Error& e) {
    throw Error(e.kind(), name + ": " + e.what());
  }
  if (q.packed.shape[0] != rows || q.cols != cols)
    fail_argument(ErrorKind::InvalidArgument, name, "a weight of shape (" + std::to_string(rows) + ", " +
                  std::to_string(cols) + ")", "(" + std::to_string(q.packed.shape[0]) + ", " + std::to_string(q.cols) + ")");
  views_ = q;
  copy_array(q.packed, packed_, views_.packed, name + ".packed");
  copy_array(q.scales, scales_, views_.scales, name + ".scales");
  copy_array(q.zero_points, zero_points_, views_.zero_points, name + ".zero_points");
  copy_array(q.lut, lut_, views_.lut, name + ".lut");
}

}  // namespace pocketml
