#pragma once
// The quantized-matmul kernel family: one table per instruction set.
//
// decode_row turns chunks of one packed row into fp32 weights, exactly the
// documented value (scale * (code - zero_point) rounded once to fp32, or the
// LUT entry), so every variant decodes bit for bit like the scalar reference.
// dot_tile multiplies a block of activation rows by a block of decoded weight
// rows; only its summation order differs between variants.
#include <cstdint>

#include "quant/quant_format.h"
#include "runtime/dispatch.h"

namespace pocketml {

// out[32 * (c - chunk_begin) + i] = weight of code i of chunk c, for c in [chunk_begin, chunk_end).
using DecodeRowFn = void (*)(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out);

// c[i * ldc + j] += sum_{t < k} x[i * ldx + t] * w[j * ldw + t] for i < m, j < n
// (m, n <= kDotTileRows; k a multiple of 32; rows 64-byte aligned not required).
using DotTileFn = void (*)(const float* x, int64_t ldx, int m, const float* w, int64_t ldw, int n, int64_t k, float* c,
                           int64_t ldc);

// Optional fused path for few activation rows (decode, M <= kMaxGemvRows): for
// weight rows r in [row_begin, row_end), y[i * ldy + r] = sum_k x[i * ldx + k] * w[r][k]
// for i < m, decoding each weight in registers, so the packed weights stream from
// memory once and nothing else is written. x holds gemv_padded_rows(m) rows, the
// ones past m zero; k runs over whole chunks (x is zero past K).
using GemvFn = void (*)(const PackedWeights& w, int64_t row_begin, int64_t row_end, const float* x, int64_t ldx, int m,
                        float* y, int64_t ldy);

// The int8-activation path (opt-in, QuantConfig(act_bits=8)). unpack_codes writes
// the codes of chunks [chunk_begin, chunk_end) of a row in natural order, one
// byte each. dot_int8 computes, for i < m, j < n:
//   c[i * ldc + j] += sum over groups t of scales[j * lds + t] * sum_{k in t} xq[i][k] * codes[j][k]
// with exact int32 sums per group (group a multiple of 32 dividing k).
using UnpackCodesFn = void (*)(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end,
                               uint8_t* out);
using DotInt8Fn = void (*)(const int8_t* xq, int64_t ldx, int m, const uint8_t* codes, int64_t ldw, int n, int64_t k,
                           int64_t group, const float* scales, int64_t lds, float* c, int64_t ldc);

inline constexpr int kDotTileRows = 4;
inline constexpr int kInt8TileRows = 4, kInt8TileCols = 2;
inline constexpr int kMaxGemvRows = 8;

// The row counts the fused GEMV is instantiated for (1, 2, 4, 8).
static inline int gemv_padded_rows(int m) { return m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : 8; }

// Chunks per group of one scale; the LUT (and a per-row group) spans the row.
static inline int64_t chunks_per_group(const PackedWeights& w, int64_t chunks) {
  if (w.kind == QuantKind::lut || w.group_size % kCodesPerChunk != 0) return chunks;
  return w.group_size / kCodesPerChunk;
}

static inline int64_t first_group_of_row(const PackedWeights& w, int64_t row) {
  return w.kind == QuantKind::affine ? row * w.groups_per_row() : 0;
}

struct QuantKernels {
  DecodeRowFn decode_row;
  DotTileFn dot_tile;
  GemvFn gemv;  // nullptr: the variant has no fused path and matmul decodes into tiles
  // int8-activation path; nullptr (AVX2: no 512-bit VNNI in its build flags): the scalar reference runs.
  UnpackCodesFn unpack_codes;
  DotInt8Fn dot_int8;
};

namespace scalar { extern const QuantKernels quant_kernels; }
namespace avx2 { extern const QuantKernels quant_kernels; }
namespace avx512 { extern const QuantKernels quant_kernels; }
namespace neon { extern const QuantKernels quant_kernels; }  // ARMv8.0 only
// The int8-activation dot product with ARMv8.2 extensions, called only where
// cpu_features() reports them (quant_tables() puts the best one in the NEON table).
namespace neon_dotprod { extern const DotInt8Fn dot_int8; }  // sdot
namespace neon_i8mm { extern const DotInt8Fn dot_int8; }     // usmmla

const IsaTables<QuantKernels>& quant_tables();

}  // namespace pocketml
