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
// with exact int32 sums per group (group a multiple of 32 dividing k, at most
// 2^15 so that the int32 sums cannot overflow: callers split longer groups).
using UnpackCodesFn = void (*)(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end,
                               uint8_t* out);
using DotInt8Fn = void (*)(const int8_t* xq, int64_t ldx, int m, const uint8_t* codes, int64_t ldw, int n, int64_t k,
                           int64_t group, const float* scales, int64_t lds, float* c, int64_t ldc);

// The fused int8-activation GEMV (M <= kMaxGemvRows) for the weights
// int8_gemv_handles: for weight rows r in [row_begin, row_end),
//   y[i * ldy + r] = x_scale[i] * sum_g scale_g * (sum_{k in g} xq[i][k] * code[r][k] - zero_g * x_sums[i][g])
// reading each packed row once, in blocks of kInt8GemvBlockBytes. Row i of xq
// (ldx bytes apart) holds activation k at int8_gemv_position(bits, k), zeros up
// to whole blocks; row i of x_sums (lds apart) holds each group's sum of xq,
// zeros past the last group up to a multiple of 16.
using GemvInt8Fn = void (*)(const PackedWeights& w, int64_t row_begin, int64_t row_end, const int8_t* xq, int64_t ldx,
                            const float* x_sums, int64_t lds, const float* x_scale, int m, float* y, int64_t ldy);

// The exact GEMV for bf16 activations on bf16 dot products (vdpbf16ps), for
// the weights bf16_gemv_handles (4-bit affine) and M <= kMaxBf16GemvRows. Each
// weight enters as code - zero, an integer bf16 holds exactly, so every product
// is exact in fp32; for weight rows r in [row_begin, row_end),
//   y[i * ldy + r] = sum_g scale_g * sum_{k in g} (code[r][k] - zero_g) * x[i][k]
// summed in fp32, like the fp32 GEMV but for where the scale multiplies. A
// 64-byte block of a packed row holds 128 codes, read as four passes of 32
// nibbles (bits 4j .. 4j + 3 of each 16-bit word for pass j); row i of x (ldx
// elements apart) holds each block's activations in that order
// (bf16_gemv_position), zeros up to whole blocks. vdpbf16ps reads subnormal
// inputs as zero and flushes partial sums below 2^-126, so x must hold no
// nonzero value below 2^-110 in magnitude (the caller routes such activations
// to gemv): then no product or partial sum lands in the flushed range.
using GemvBf16Fn = void (*)(const PackedWeights& w, int64_t row_begin, int64_t row_end, const uint16_t* x, int64_t ldx,
                            int m, float* y, int64_t ldy);

inline constexpr int kBf16GemvBlockCodes = 128;
// From M = 4 on the bf16 GEMV measured slower than the fp32 one, so it serves 1 or 2 rows.
inline constexpr int kMaxBf16GemvRows = 2;

// The block-wise GEMVs (bf16 dot products, int8 activations) specialise groups
// of 32, 64 or 128 codes and one group per row. Other lengths the format allows
// (multiples of 32 dividing K, such as a Core ML block of 256) take the general
// paths.
static inline bool block_gemv_groups(const PackedWeights& w) {
  return w.groups_per_row() == 1 || w.group_size == 32 || w.group_size == 64 || w.group_size == 128;
}

static inline bool bf16_gemv_handles(const PackedWeights& w) {
  return w.kind == QuantKind::affine && w.bits == 4 && block_gemv_groups(w);
}

// The place of activation k in the bf16 GEMV's x row. Code i of a chunk sits in
// byte i % 16, high nibble when i >= 16 (quant_format.h), so byte b of a block
// is in word b / 2 and its low and high nibbles in passes 2 (b % 2) and
// 2 (b % 2) + 1.
static inline int64_t bf16_gemv_position(int64_t k) {
  const int64_t block = k / kBf16GemvBlockCodes, chunk = k % kBf16GemvBlockCodes / kCodesPerChunk;
  const int64_t i = k % kCodesPerChunk, byte = 16 * chunk + i % 16;
  const int64_t pass = 2 * (byte % 2) + i / 16;
  return block * kBf16GemvBlockCodes + 32 * pass + byte / 2;
}

inline constexpr int kInt8GemvBlockBytes = 64;

static inline bool int8_gemv_handles(const PackedWeights& w) {
  return w.kind == QuantKind::affine && (w.bits == 4 || w.bits == 8) && block_gemv_groups(w);
}

// Codes per block of packed bytes: 128 4-bit codes or 64 8-bit ones.
static inline int64_t int8_gemv_block_codes(int bits) { return kInt8GemvBlockBytes * 8 / bits; }

// The place of activation k in the int8 GEMV's xq row: that of its code in the
// packed bytes, so that one byte-wise dot product pairs them. A block of 4-bit
// codes is read as its 64 low nibbles, then its 64 high nibbles (quant_format.h:
// code i of a chunk sits in byte i % 16, high nibble when i >= 16).
static inline int64_t int8_gemv_position(int bits, int64_t k) {
  if (bits == 8) return k;
  const int64_t block = k / 128, chunk = k % 128 / kCodesPerChunk, i = k % kCodesPerChunk;
  return 128 * block + 64 * (i / 16) + 16 * chunk + i % 16;
}

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
  // nullptr (scalar, AVX2, ARMv8.0): int8 activations go through unpack_codes and dot_int8 at every M.
  GemvInt8Fn gemv_int8;
  // nullptr where the CPU lacks bf16 dot products: bf16 activations take gemv.
  GemvBf16Fn gemv_bf16;
};

namespace scalar { extern const QuantKernels quant_kernels; }
namespace avx2 { extern const QuantKernels quant_kernels; }
namespace avx512 { extern const QuantKernels quant_kernels; }
namespace neon { extern const QuantKernels quant_kernels; }  // ARMv8.0 only
// The int8-activation dot product with ARMv8.2 extensions, called only where
// cpu_features() reports them (quant_tables() puts the best one in the NEON table).
namespace neon_dotprod {  // sdot
extern const DotInt8Fn dot_int8;
extern const GemvInt8Fn gemv_int8;
}  // namespace neon_dotprod
namespace neon_i8mm { extern const DotInt8Fn dot_int8; }     // usmmla

const IsaTables<QuantKernels>& quant_tables();

}  // namespace pocketml
