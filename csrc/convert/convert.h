#pragma once
#include "runtime/tensor.h"

namespace pocketml {

// Converts every element of `src` into `dst` (same shape, both contiguous)
// between fp32, fp16 and bf16, rounding to nearest even. Equal dtypes copy.
void convert(const TensorView& src, const TensorView& dst);

}  // namespace pocketml
