#pragma once
// Helpers shared by the quantizers (generic code, not ISA-specific).
#include <cmath>
#include <cstdint>
#include <string>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace pocketml {

// Row `r` of a contiguous fp32/fp16/bf16 matrix as fp32; rejects NaN and Inf.
void load_weight_row(const TensorView& weight, int64_t r, float* out);

// fp32 importance [K] (absent: nullptr), checked finite and non-negative.
const float* checked_importance(const TensorView& importance, int64_t cols);

// Round to nearest integer, ties to even: std::nearbyint in the default
// rounding mode, without its library call (generic code targets baseline
// x86-64, which has no rounding instruction). Adding and subtracting 1.5 * 2^23
// leaves the rounded value for |x| < 2^22; larger values are returned as they
// are, since every caller clamps them to a code range far below.
static inline float round_half_even(float x) {
  if (!(std::fabs(x) < 0x1p22f)) return x;
  return (x + 0x1.8p23f) - 0x1.8p23f;  // not folded: the build has no -ffast-math
}

// `value` rounded to a storage dtype and back (what the kernels will read).
float round_to_dtype(float value, DType dtype);

// Packs one row of codes (the layout of quant_format.h) into `row` (zeroed first).
void pack_row(const uint8_t* codes, int64_t cols, int bits, uint8_t* row);

}  // namespace pocketml
