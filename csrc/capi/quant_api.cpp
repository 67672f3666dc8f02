// C ABI: quantized matmul and dequantize over caller-owned packed buffers.
#include <cmath>
#include <limits>
#include <string>

#include "capi/guard.h"
#include "capi/quantized_weight.h"
#include "quant/quant.h"
#include "quant/quant_format.h"

using namespace pocketml;

namespace {

void require_range(int64_t value, const std::string& arg, const char* expected) {
  if (value < 0) fail_argument(ErrorKind::InvalidArgument, arg, expected, std::to_string(value));
}

// packed_row_bytes for any cols a caller can pass: rounding cols up to a chunk,
// and the byte count, would wrap past ~2^62.
int64_t checked_packed_row_bytes(int64_t cols, int bits, const std::string& arg) {
  if (cols > std::numeric_limits<int64_t>::max() / (4 * bits) - kCodesPerChunk)
    fail_argument(ErrorKind::InvalidArgument, arg, "a column count whose packed row fits in int64",
                  std::to_string(cols));
  return packed_row_bytes(cols, bits);
}

// Every scale finite, and every code of its group decoding within fp32: a padding
// code (0) meets zero activations, and inf * 0 made every output NaN. Python's
// QuantizedTensor checks this once when it is built; a C caller's arrays, here.
void require_finite_grids(const QuantizedViews& q, const std::string& arg) {
  require_dtype(q.scales, arg + ".scale_dtype", {DType::f32, DType::f16, DType::bf16});
  const int64_t groups = q.scales.numel();
  const float top = static_cast<float>((1 << q.bits) - 1), symmetric_zero = static_cast<float>(1 << (q.bits - 1));
  for (int64_t g = 0; g < groups; ++g) {
    const float scale = load_scale(q.scales.data, q.scales.dtype, g);
    const float zero = q.zero_points.data ? static_cast<float>(q.zero_points.ptr<uint8_t>()[g]) : symmetric_zero;
    if (!std::isfinite(scale))
      fail_argument(ErrorKind::InvalidArgument, arg + ".scales", "finite values", "NaN or infinity at " + std::to_string(g));
    if (!std::isfinite(scale * -zero) || !std::isfinite(scale * (top - zero)))
      fail_argument(ErrorKind::InvalidArgument, arg + ".scales",
                    "scales whose " + std::to_string(q.bits) + "-bit codes all decode within fp32's range",
                    shortest_text(scale) + " at " + std::to_string(g));
  }
}

}  // namespace

namespace pocketml::capi {

// Views of the weight's arrays with the shapes the format implies; the core
// checks bits, group size and shapes and reports the argument by name.
QuantizedViews quantized_views(const pocketml_quantized_weight* weight, const std::string& arg) {
  require_pointer(weight, arg.c_str());
  const pocketml_quantized_weight& w = *weight;
  if (w.kind != POCKETML_QUANT_AFFINE && w.kind != POCKETML_QUANT_LUT)
    fail_argument(ErrorKind::InvalidArgument, (arg + ".kind"), "POCKETML_QUANT_AFFINE (0) or POCKETML_QUANT_LUT (1)",
                  std::to_string(static_cast<int>(w.kind)));
  require_range(w.rows, arg + ".rows", "a non-negative row count");
  if (w.cols <= 0) fail_argument(ErrorKind::InvalidArgument, (arg + ".cols"), "a positive column count", std::to_string(w.cols));
  if (w.group_size <= 0)
    fail_argument(ErrorKind::InvalidArgument, (arg + ".group_size"), "a positive group size", std::to_string(w.group_size));
  QuantizedViews q;
  q.kind = w.kind == POCKETML_QUANT_AFFINE ? QuantKind::affine : QuantKind::lut;
  q.bits = w.bits;
  q.cols = w.cols;
  q.group_size = w.group_size;
  if (q.kind == QuantKind::affine) check_affine_bits(w.bits, arg + ".bits"); else check_lut_bits(w.bits, arg + ".bits");
  require_pointer(w.packed, (arg + ".packed").c_str());
  q.packed = contiguous_view(const_cast<uint8_t*>(w.packed), DType::u8,
                             {w.rows, checked_packed_row_bytes(w.cols, w.bits, arg + ".cols")}, false, arg + ".rows");
  if (q.kind == QuantKind::affine) {
    require_pointer(w.scales, (arg + ".scales").c_str());
    if (w.cols % w.group_size != 0)
      fail_argument(ErrorKind::InvalidArgument, (arg + ".group_size"), "a divisor of cols = " + std::to_string(w.cols),
                    std::to_string(w.group_size));
    const int64_t groups = w.cols / w.group_size;
    q.scales = contiguous_view(const_cast<void*>(w.scales), to_dtype(w.scale_dtype, (arg + ".scale_dtype").c_str()),
                               {w.rows, groups}, false, arg + ".rows");
    if (w.zero_points != nullptr)
      q.zero_points = contiguous_view(const_cast<uint8_t*>(w.zero_points), DType::u8, {w.rows, groups}, false,
                                      arg + ".rows");
    require_finite_grids(q, arg);
  } else {
    require_pointer(w.lut, (arg + ".lut").c_str());
    if (w.rows % w.group_size != 0)
      fail_argument(ErrorKind::InvalidArgument, (arg + ".group_size"), "a divisor of rows = " + std::to_string(w.rows),
                    std::to_string(w.group_size));
    q.lut = contiguous_view(const_cast<void*>(w.lut), to_dtype(w.lut_dtype, (arg + ".lut_dtype").c_str()),
                            {w.rows / w.group_size, int64_t(1) << w.bits}, false, arg + ".rows");
  }
  return q;
}

}  // namespace pocketml::capi

extern "C" pocketml_status pocketml_quant_packed_row_bytes(int64_t cols, int32_t bits, int64_t* out_bytes) {
  return capi::guarded([&] {
    capi::require_pointer(out_bytes, "out_bytes");
    if (plane_layout(bits).count == 0)
      fail_argument(ErrorKind::InvalidArgument, "bits", "one of 1, 2, 3, 4, 5, 6, 8", std::to_string(bits));
    require_range(cols, "cols", "a non-negative column count");
    *out_bytes = checked_packed_row_bytes(cols, bits, "cols");
  });
}

extern "C" pocketml_status pocketml_quant_matmul(const void* x, pocketml_dtype x_dtype, int64_t m,
                                                 const pocketml_quantized_weight* weight, void* out,
                                                 pocketml_dtype out_dtype) {
  return capi::guarded([&] {
    const QuantizedViews q = capi::quantized_views(weight, "weight");
    require_range(m, "m", "a non-negative row count");
    const DType x_type = capi::to_dtype(x_dtype, "x_dtype"), out_type = capi::to_dtype(out_dtype, "out_dtype");
    if (m == 0 || weight->rows == 0) return;  // nothing to compute, but every argument checked above
    capi::require_pointer(x, "x");
    capi::require_pointer(out, "out");
    quantized_matmul(contiguous_view(const_cast<void*>(x), x_type, {m, weight->cols}, false, "m"), q,
                     contiguous_view(out, out_type, {m, weight->rows}, true, "m"));
  });
}

extern "C" pocketml_status pocketml_quant_dequantize(const pocketml_quantized_weight* weight, void* out,
                                                     pocketml_dtype out_dtype) {
  return capi::guarded([&] {
    const QuantizedViews q = capi::quantized_views(weight, "weight");
    const DType out_type = capi::to_dtype(out_dtype, "out_dtype");
    if (weight->rows == 0) return;
    capi::require_pointer(out, "out");
    dequantize(q, contiguous_view(out, out_type, {weight->rows, weight->cols}, true, "weight.rows"));
  });
}
