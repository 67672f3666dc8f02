#include "quant/weight_rows.h"

#include <algorithm>

#include "convert/convert.h"
#include "quant/quant_format.h"
#include "runtime/half.h"

namespace pocketml {

void load_weight_row(const TensorView& weight, int64_t r, float* out) {
  const int64_t cols = weight.shape[1];
  const char* in = static_cast<const char*>(weight.data) + r * cols * dtype_size(weight.dtype);
  convert(contiguous_view(const_cast<char*>(in), weight.dtype, {cols}, false), contiguous_view(out, DType::f32, {cols}));
  for (int64_t k = 0; k < cols; ++k)
    if (!std::isfinite(out[k]))
      fail_argument(ErrorKind::InvalidArgument, "weight", "finite values",
                    std::to_string(out[k]) + " at [" + std::to_string(r) + ", " + std::to_string(k) + "]");
}

const float* checked_importance(const TensorView& importance, int64_t cols) {
  if (importance.data == nullptr && importance.ndim == 0) return nullptr;
  require_dtype(importance, "importance", {DType::f32});
  require_ndim(importance, "importance", 1, 1);
  require_contiguous(importance, "importance");
  if (importance.shape[0] != cols)
    fail_argument(ErrorKind::InvalidArgument, "importance", "shape (" + std::to_string(cols) + ",) (one per input channel)",
                  "shape " + importance.shape_string());
  const float* values = importance.ptr<const float>();
  for (int64_t k = 0; k < cols; ++k)
    if (!std::isfinite(values[k]) || values[k] < 0.0f)
      fail_argument(ErrorKind::InvalidArgument, "importance", "finite non-negative values",
                    std::to_string(values[k]) + " at [" + std::to_string(k) + "]");
  return values;
}

float round_to_dtype(float value, DType dtype) {
  switch (dtype) {
    case DType::f16: return fp16_to_fp32(fp32_to_fp16(value));
    case DType::bf16: return bf16_to_fp32(fp32_to_bf16(value));
    default: return value;
  }
}

void pack_row(const uint8_t* codes, int64_t cols, int bits, uint8_t* row) {
  const int64_t row_bytes = packed_row_bytes(cols, bits);
  std::fill(row, row + row_bytes, uint8_t(0));
  const PlaneLayout planes = plane_layout(bits);
  for (int64_t k = 0; k < cols; ++k) {
    uint8_t* chunk = row + (k / kCodesPerChunk) * 4 * bits;
    const int i = static_cast<int>(k % kCodesPerChunk);
    uint32_t code = codes[k];
    for (int p = 0; p < planes.count; ++p) {
      const int width = planes.width[p];
      const int plane_bytes = 4 * width;
      chunk[i % plane_bytes] |= static_cast<uint8_t>((code & ((1u << width) - 1u)) << (width * (i / plane_bytes)));
      code >>= width;
      chunk += plane_bytes;
    }
  }
}

}  // namespace pocketml
