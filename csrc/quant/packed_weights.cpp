// Validation of quantized-weight arguments and the (un)packing of plain codes.
#include <algorithm>
#include <cmath>
#include <string>

#include "quant/quant.h"
#include "quant/weight_rows.h"
#include "runtime/error.h"
#include "runtime/half.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

std::string shape_text(int64_t a, int64_t b) { return "(" + std::to_string(a) + ", " + std::to_string(b) + ")"; }

void require_matrix(const TensorView& t, std::string_view arg, int64_t rows, int64_t cols) {
  require_ndim(t, arg, 2, 2);
  require_contiguous(t, arg);
  if (t.shape[0] != rows || t.shape[1] != cols)
    fail_argument(ErrorKind::InvalidArgument, arg, "shape " + shape_text(rows, cols), "shape " + t.shape_string());
}

bool present(const TensorView& t) { return t.data != nullptr || t.ndim > 0; }

// Rows of ~64 KiB of codes per chunk: enough work to outweigh waking a thread.
int64_t rows_per_chunk(int64_t cols) { return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(cols, 1)); }

}  // namespace

void check_affine_bits(int bits, const std::string& arg) {
  if (bits < 2 || bits > 8 || bits == 7)
    fail_argument(ErrorKind::InvalidArgument, arg, "one of 2, 3, 4, 5, 6, 8", std::to_string(bits));
}

void check_lut_bits(int bits, const std::string& arg) {
  if (bits < 1 || bits > 8 || bits == 5 || bits == 7)
    fail_argument(ErrorKind::InvalidArgument, arg, "one of 1, 2, 3, 4, 6, 8", std::to_string(bits));
}

int64_t lut_entries(const QuantizedViews& q) {
  return q.kind == QuantKind::lut && present(q.lut) ? q.lut.numel() : 0;
}

PackedWeights make_packed_weights(const QuantizedViews& q, float* lut_f32) {
  PackedWeights w;
  w.kind = q.kind;
  w.bits = q.bits;
  w.cols = q.cols;
  w.group_size = q.group_size;
  if (q.kind == QuantKind::affine) check_affine_bits(q.bits); else check_lut_bits(q.bits);
  require_dtype(q.packed, "packed", {DType::u8});
  require_ndim(q.packed, "packed", 2, 2);
  w.rows = q.packed.shape[0];
  w.row_bytes = packed_row_bytes(q.cols, q.bits);
  if (q.cols <= 0) fail_argument(ErrorKind::InvalidArgument, "cols", "a positive input dimension K", std::to_string(q.cols));
  require_matrix(q.packed, "packed", w.rows, w.row_bytes);
  w.packed = q.packed.ptr<const uint8_t>();
  if (q.kind == QuantKind::affine) {
    if (q.group_size <= 0 || q.cols % q.group_size != 0 || (q.group_size != q.cols && q.group_size % kCodesPerChunk))
      fail_argument(ErrorKind::InvalidArgument, "group_size", "32, 64, 128 or K = " + std::to_string(q.cols) +
                    ", dividing K", std::to_string(q.group_size));
    require_dtype(q.scales, "scales", {DType::f16, DType::bf16, DType::f32});
    require_matrix(q.scales, "scales", w.rows, q.cols / q.group_size);
    w.scales = q.scales.data;
    w.scale_dtype = q.scales.dtype;
    if (present(q.zero_points)) {
      require_dtype(q.zero_points, "zero_points", {DType::u8});
      require_matrix(q.zero_points, "zero_points", w.rows, q.cols / q.group_size);
      w.zero_points = q.zero_points.ptr<const uint8_t>();
    }
  } else {
    if (q.group_size <= 0 || w.rows % q.group_size != 0)
      fail_argument(ErrorKind::InvalidArgument, "group_size", "a number of output channels dividing N = " +
                    std::to_string(w.rows), std::to_string(q.group_size));
    require_dtype(q.lut, "lut", {DType::f16, DType::bf16, DType::f32});
    const int64_t entries = int64_t(1) << q.bits;
    require_matrix(q.lut, "lut", w.rows / q.group_size, entries);
    if (lut_f32 != nullptr) {
      for (int64_t i = 0; i < q.lut.numel(); ++i) {
        lut_f32[i] = load_scale(q.lut.data, q.lut.dtype, i);
        if (!std::isfinite(lut_f32[i]))
          fail_argument(ErrorKind::InvalidArgument, "lut", "finite entries",
                        std::to_string(lut_f32[i]) + " in table " + std::to_string(i / entries) + " at entry " +
                            std::to_string(i % entries));
      }
    }
    w.lut = lut_f32;
  }
  return w;
}

void pack_codes(const TensorView& codes, int bits, const TensorView& packed) {
  require_dtype(codes, "codes", {DType::u8});
  require_ndim(codes, "codes", 2, 2);
  require_contiguous(codes, "codes");
  if (plane_layout(bits).count == 0)
    fail_argument(ErrorKind::InvalidArgument, "bits", "one of 1, 2, 3, 4, 5, 6, 8", std::to_string(bits));
  const int64_t rows = codes.shape[0], cols = codes.shape[1];
  const int64_t row_bytes = packed_row_bytes(cols, bits);
  require_dtype(packed, "packed", {DType::u8});
  require_matrix(packed, "packed", rows, row_bytes);
  require_writable(packed, "packed");
  const uint8_t* in = codes.ptr<const uint8_t>();
  uint8_t* out = packed.ptr<uint8_t>();
  const unsigned limit = 1u << bits;
  for (int64_t i = 0; i < codes.numel(); ++i)
    if (in[i] >= limit)
      fail_argument(ErrorKind::InvalidArgument, "codes", "values below 2^bits = " + std::to_string(limit),
                    std::to_string(in[i]) + " at flat index " + std::to_string(i));
  parallel_for(rows, rows_per_chunk(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) pack_row(in + r * cols, cols, bits, out + r * row_bytes);
  });
}

void unpack_codes(const TensorView& packed, int bits, const TensorView& codes) {
  require_dtype(codes, "codes", {DType::u8});
  require_ndim(codes, "codes", 2, 2);
  require_contiguous(codes, "codes");
  require_writable(codes, "codes");
  if (plane_layout(bits).count == 0)
    fail_argument(ErrorKind::InvalidArgument, "bits", "one of 1, 2, 3, 4, 5, 6, 8", std::to_string(bits));
  const int64_t rows = codes.shape[0], cols = codes.shape[1];
  const int64_t row_bytes = packed_row_bytes(cols, bits);
  require_dtype(packed, "packed", {DType::u8});
  require_matrix(packed, "packed", rows, row_bytes);
  const uint8_t* in = packed.ptr<const uint8_t>();
  uint8_t* out = codes.ptr<uint8_t>();
  parallel_for(rows, rows_per_chunk(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t k = 0; k < cols; ++k)
        out[r * cols + k] = static_cast<uint8_t>(
            chunk_code(in + r * row_bytes + (k / kCodesPerChunk) * 4 * bits, bits, static_cast<int>(k % kCodesPerChunk)));
  });
}

}  // namespace pocketml
