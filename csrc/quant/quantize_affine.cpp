// Group-wise affine quantization: round-to-nearest from the group's range
// (RTN), or a search over shrunken ranges that minimises the (importance-
// weighted) squared error of the dequantized group (MSE).
//
// The scale is rounded to its storage dtype before the codes are chosen, so
// codes are optimal for the scale the kernels will actually read. Rounding is
// to nearest, ties to even (round_half_even). Rows are independent, so the
// result does not depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <vector>

#include "quant/quant.h"
#include "quant/weight_rows.h"
#include "runtime/half.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

struct GroupParams {
  float scale;
  int zero;
};

// The MSE search tries the full range and kShrinkSteps ever smaller ones, down
// to kShrinkSteps * kShrinkStep less (ranges in which outliers get clipped).
constexpr int kShrinkSteps = 20;
constexpr float kShrinkStep = 0.025f;

class GroupQuantizer {
 public:
  GroupQuantizer(const AffineOptions& options, DType scale_dtype)
      : options_(options), scale_dtype_(scale_dtype), max_code_((1 << options.bits) - 1) {}

  // Params for values scaled into [lo, hi] (lo <= 0 <= hi: zero stays exact).
  GroupParams params_for_range(float lo, float hi) const {
    GroupParams p;
    const float max_code = static_cast<float>(max_code_);
    float scale;
    if (options_.symmetric) {
      scale = std::max(-lo, hi) * 2.0f / max_code;
      // Above 1.7e38 the doubled bound overflows where the scale does not: divide first.
      if (std::isinf(scale)) scale = std::max(-lo, hi) / max_code * 2.0f;
      p.zero = (max_code_ + 1) / 2;
    } else {
      scale = (hi - lo) / max_code;
      if (std::isinf(scale)) scale = hi / max_code - lo / max_code;
    }
    if (lo == hi) scale = 1.0f;  // an all-zero group (lo <= 0 <= hi)
    float stored = round_to_dtype(scale, scale_dtype_);
    if (stored == 0.0f) stored = smallest_positive();  // also a scale that underflowed in fp32 itself
    if (std::isinf(stored))
      fail_argument(ErrorKind::InvalidArgument, "scale_dtype", "a dtype whose range holds the scales",
                    std::string(dtype_name(scale_dtype_)) + " overflowing for weights up to " +
                        shortest_text(std::max(-lo, hi)) + " (use fp32 or bf16 scales)");
    p.scale = stored;
    if (!options_.symmetric) p.zero = static_cast<int>(std::clamp(round_half_even(-lo / stored), 0.0f, float(max_code_)));
    return p;
  }

  uint8_t code(float w, const GroupParams& p) const {
    const float q = round_half_even(w / p.scale) + static_cast<float>(p.zero);
    return static_cast<uint8_t>(std::clamp(q, 0.0f, static_cast<float>(max_code_)));
  }

  // w as the kernels will read it.
  float dequantized(float w, const GroupParams& p) const {
    return p.scale * static_cast<float>(static_cast<int>(code(w, p)) - p.zero);
  }

  double error(const float* w, const float* importance, int64_t n, const GroupParams& p) const {
    double sum = 0.0;
    for (int64_t k = 0; k < n; ++k) {
      const double diff = static_cast<double>(w[k]) - dequantized(w[k], p);
      sum += (importance ? importance[k] : 1.0) * diff * diff;
    }
    return sum;
  }

  GroupParams choose(const float* w, const float* importance, int64_t n) const {
    float lo = 0.0f, hi = 0.0f;
    for (int64_t k = 0; k < n; ++k) {
      lo = std::min(lo, w[k]);
      hi = std::max(hi, w[k]);
    }
    GroupParams best = params_for_range(lo, hi);
    if (options_.method == AffineMethod::mse) {
      double best_error = error(w, importance, n, best);
      for (int step = 1; step <= kShrinkSteps; ++step) {
        const float shrink = 1.0f - kShrinkStep * static_cast<float>(step);
        const GroupParams candidate = params_for_range(lo * shrink, hi * shrink);
        const double e = error(w, importance, n, candidate);
        if (e < best_error) {
          best_error = e;
          best = candidate;
        }
      }
    }
    // Near fp32's maximum the grid's rounded zero point can put an extreme code past
    // it. Every code counts, not only the weights': padding and the int8-activation
    // path's zero-point term read codes 0 and 2^bits - 1 too (inf * 0 is NaN).
    if (std::isinf(best.scale * static_cast<float>(-best.zero)) ||
        std::isinf(best.scale * static_cast<float>(max_code_ - best.zero)))
      fail_argument(ErrorKind::InvalidArgument, "weight", "values whose " + std::to_string(options_.bits) +
                    "-bit codes all decode within fp32's range", "a group spanning [" + shortest_text(lo) + ", " +
                    shortest_text(hi) + "], whose grid reaches infinity");
    return best;
  }

 private:
  float smallest_positive() const {
    switch (scale_dtype_) {
      case DType::f16: return 0x1p-24f;
      case DType::bf16: return 0x1p-133f;
      default: return 0x1p-149f;
    }
  }

  AffineOptions options_;
  DType scale_dtype_;
  int max_code_;
};

void store_scale(const TensorView& scales, int64_t index, float value) {
  switch (scales.dtype) {
    case DType::f16: scales.ptr<uint16_t>()[index] = fp32_to_fp16(value); break;
    case DType::bf16: scales.ptr<uint16_t>()[index] = fp32_to_bf16(value); break;
    default: scales.ptr<float>()[index] = value; break;
  }
}

}  // namespace

void quantize_affine(const TensorView& weight, const AffineOptions& options, const TensorView& importance,
                     const TensorView& packed, const TensorView& scales, const TensorView& zero_points) {
  require_dtype(weight, "weight", {DType::f32, DType::f16, DType::bf16});
  require_ndim(weight, "weight", 2, 2);
  require_contiguous(weight, "weight");
  check_affine_bits(options.bits);
  const int64_t rows = weight.shape[0], cols = weight.shape[1];
  if (cols == 0) fail_argument(ErrorKind::InvalidArgument, "weight", "at least one input channel", "shape " + weight.shape_string());
  QuantizedViews out;
  out.kind = QuantKind::affine;
  out.bits = options.bits;
  out.cols = cols;
  out.group_size = options.group_size;
  out.packed = packed;
  out.scales = scales;
  out.zero_points = zero_points;
  const PackedWeights w = make_packed_weights(out, nullptr);  // checks group size and every output's shape
  require_writable(packed, "packed");
  require_writable(scales, "scales");
  if (options.symmetric == (w.zero_points != nullptr))
    fail_argument(ErrorKind::InvalidArgument, "zero_points", options.symmetric ? "none (symmetric)" : "an array (asymmetric)",
                  options.symmetric ? "an array" : "none");
  const float* weights_of_channel = checked_importance(importance, cols);
  const GroupQuantizer quantizer(options, scales.dtype);
  const int64_t group = options.group_size, groups = cols / group;
  uint8_t* zeros = w.zero_points ? const_cast<uint8_t*>(w.zero_points) : nullptr;
  parallel_for(rows, std::max<int64_t>(1, (int64_t(1) << 14) / cols), [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(cols));
    std::vector<uint8_t> codes(static_cast<size_t>(cols));
    for (int64_t r = begin; r < end; ++r) {
      load_weight_row(weight, r, row.data());
      for (int64_t g = 0; g < groups; ++g) {
        const float* values = row.data() + g * group;
        const GroupParams p = quantizer.choose(values, weights_of_channel ? weights_of_channel + g * group : nullptr, group);
        for (int64_t k = 0; k < group; ++k) codes[g * group + k] = quantizer.code(values[k], p);
        store_scale(scales, r * groups + g, p.scale);
        if (zeros) zeros[r * groups + g] = static_cast<uint8_t>(p.zero);
      }
      pack_row(codes.data(), cols, options.bits, packed.ptr<uint8_t>() + r * w.row_bytes);
    }
  });
}

}  // namespace pocketml
