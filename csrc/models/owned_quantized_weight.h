#pragma once
// A quantized weight whose arrays the model owns: a model handle outlives the
// caller's buffers (Swift arrays, NumPy arrays), so it keeps its own copy.
#include <cstdint>
#include <string>
#include <vector>

#include "quant/quant.h"

namespace pocketml {

class OwnedQuantizedWeight {
 public:
  OwnedQuantizedWeight() = default;
  // Validates `q` (errors name `name`, e.g. "layers[0].q_proj") and that it is
  // [rows, cols], then copies its arrays.
  OwnedQuantizedWeight(const QuantizedViews& q, const std::string& name, int64_t rows, int64_t cols);

  const QuantizedViews& views() const { return views_; }
  int64_t rows() const { return views_.packed.shape[0]; }
  int64_t cols() const { return views_.cols; }

 private:
  std::vector<uint8_t> packed_, scales_, zero_points_, lut_;
  QuantizedViews views_;
};

}  // namespace pocketml
