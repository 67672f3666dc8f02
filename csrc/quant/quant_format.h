#pragma once
// The quantized weight formats (docs/formats.md is the byte-level spec).
//
// A weight W [rows = N output channels, cols = K input channels] becomes one
// unsigned code per element, packed row by row in chunks of 32 codes:
//
//   affine: w = scale[n, k / group_size] * (code - zero_point)      (Core ML constexpr_blockwise_shift_scale)
//   lut:    w = lut[n / group_size][code]                           (Core ML constexpr_lut_to_dense)
//
// A chunk of 32 codes of `bits` bits takes 4 * bits bytes, split into bit planes
// of width 8, 4, 2 or 1 (bits 6 = planes 4 + 2, low bits first). Within a plane of
// width p (4p bytes), code i sits in byte i % 4p at bit p * (i / 4p), so one wide
// load and a shift per lane extract 16 codes at once.
#include <cstdint>

#include "runtime/dtype.h"
#include "runtime/half.h"

namespace pocketml {

inline constexpr int kCodesPerChunk = 32;

enum class QuantKind : uint8_t { affine = 0, lut = 1 };

struct PlaneLayout {
  int count = 0;
  int width[2] = {};  // bits per code in each plane, low bits first
};

static constexpr PlaneLayout plane_layout(int bits) {
  switch (bits) {
    case 1: return {1, {1, 0}};
    case 2: return {1, {2, 0}};
    case 3: return {2, {2, 1}};
    case 4: return {1, {4, 0}};
    case 5: return {2, {4, 1}};
    case 6: return {2, {4, 2}};
    case 8: return {1, {8, 0}};
    default: return {};
  }
}

static inline int64_t chunks_per_row(int64_t cols) { return (cols + kCodesPerChunk - 1) / kCodesPerChunk; }
static inline int64_t packed_row_bytes(int64_t cols, int bits) { return chunks_per_row(cols) * 4 * bits; }

// Read-only views of a quantized weight's arrays, validated by make_packed_weights.
struct PackedWeights {
  QuantKind kind = QuantKind::affine;
  int bits = 4;
  int64_t rows = 0, cols = 0;
  int64_t group_size = 0;  // affine: columns per scale; lut: rows per table
  int64_t row_bytes = 0;
  const uint8_t* packed = nullptr;       // [rows, row_bytes]
  const void* scales = nullptr;          // affine: [rows, cols / group_size] in scale_dtype
  DType scale_dtype = DType::f16;
  const uint8_t* zero_points = nullptr;  // affine: [rows, groups]; null when symmetric (zero point 2^(bits-1))
  const float* lut = nullptr;            // lut: [rows / group_size, 2^bits] widened to fp32 by the caller

  int64_t groups_per_row() const { return cols / group_size; }
  int symmetric_zero_point() const { return 1 << (bits - 1); }
};

static inline float load_scale(const void* scales, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::f16: return fp16_to_fp32(static_cast<const uint16_t*>(scales)[index]);
    case DType::bf16: return bf16_to_fp32(static_cast<const uint16_t*>(scales)[index]);
    default: return static_cast<const float*>(scales)[index];
  }
}

// The affine parameters of the group holding chunk `chunk` of row `row`.
static inline void chunk_affine_params(const PackedWeights& w, int64_t row, int64_t chunk, float* scale, float* zero) {
  const int64_t groups = w.groups_per_row();
  const int64_t group = row * groups + chunk * kCodesPerChunk / w.group_size;
  *scale = load_scale(w.scales, w.scale_dtype, group);
  *zero = static_cast<float>(w.zero_points ? w.zero_points[group] : w.symmetric_zero_point());
}

static inline const float* row_lut(const PackedWeights& w, int64_t row) {
  return w.lut + (row / w.group_size) * (int64_t(1) << w.bits);
}

// Code i (0..31) of a packed chunk: the executable spec of the layout.
static inline uint32_t chunk_code(const uint8_t* chunk, int bits, int i) {
  const PlaneLayout planes = plane_layout(bits);
  uint32_t code = 0;
  int low_bit = 0;
  for (int p = 0; p < planes.count; ++p) {
    const int width = planes.width[p];
    const int plane_bytes = 4 * width;
    const uint32_t field = (chunk[i % plane_bytes] >> (width * (i / plane_bytes))) & ((1u << width) - 1u);
    code |= field << low_bit;
    low_bit += width;
    chunk += plane_bytes;
  }
  return code;
}

}  // namespace pocketml
