#pragma once
// Entry points of the quantization area: argument checks, threading and the
// choice of kernel variant live here; the kernels in quant_<isa>.cpp.
#include <cstdint>
#include <string>

#include "quant/quant_format.h"
#include "runtime/tensor.h"

namespace pocketml {

// The arrays of one quantized weight as the caller holds them. Optional arrays
// have data == nullptr: zero_points (symmetric affine), scales (lut), lut (affine).
struct QuantizedViews {
  QuantKind kind = QuantKind::affine;
  int bits = 4;
  int64_t cols = 0;        // K: the packed rows are padded to whole 32-code chunks
  int64_t group_size = 0;  // affine: columns per scale; lut: rows per table
  TensorView packed;       // uint8 [N, packed_row_bytes(K, bits)]
  TensorView scales;       // fp16/bf16/fp32 [N, K / group_size]
  TensorView zero_points;  // uint8 [N, K / group_size]
  TensorView lut;          // fp16/bf16/fp32 [N / group_size, 2^bits]
};

enum class AffineMethod { rtn, mse };

struct AffineOptions {
  int bits = 4;
  int64_t group_size = 64;  // 32, 64, 128 or K (one group per row)
  bool symmetric = false;
  AffineMethod method = AffineMethod::rtn;
};

struct LutOptions {
  int bits = 4;
  int64_t group_size = 0;  // output channels per table (N: one table)
  uint64_t seed = 0;
  int max_iterations = 100;
};

// `arg` names the field in the messages (Python's arguments by default).
void check_affine_bits(int bits, const std::string& arg = "bits");
void check_lut_bits(int bits, const std::string& arg = "nbits");

// Checks bits, group size and every array's dtype and shape; returns the views
// the kernels read. LUT entries are widened to fp32 into `lut_f32` and must be
// finite (the kernels multiply the padding codes of a row, code 0, by zero
// activations); a null `lut_f32` checks shapes only (a LUT still to be written).
PackedWeights make_packed_weights(const QuantizedViews& q, float* lut_f32);
int64_t lut_entries(const QuantizedViews& q);  // number of floats make_packed_weights writes to lut_f32

// codes uint8 [N, K] (each < 2^bits) <-> packed uint8 [N, packed_row_bytes(K, bits)].
void pack_codes(const TensorView& codes, int bits, const TensorView& packed);
void unpack_codes(const TensorView& packed, int bits, const TensorView& codes);

// weight [N, K] fp32/fp16/bf16 -> packed codes, scales (their dtype is the storage
// dtype) and zero points (absent when symmetric). importance: fp32 [K] or absent.
void quantize_affine(const TensorView& weight, const AffineOptions& options, const TensorView& importance,
                     const TensorView& packed, const TensorView& scales, const TensorView& zero_points);

// weight [N, K] -> packed codes and a k-means LUT per group of output channels.
void quantize_lut(const TensorView& weight, const LutOptions& options, const TensorView& importance,
                  const TensorView& packed, const TensorView& lut);

// out [N, K] fp32/fp16/bf16 = the dequantized weight.
void dequantize(const QuantizedViews& q, const TensorView& out);

// out [..., N] = x [..., K] @ W^T, fp32 accumulation over the dequantized weights
// (both contiguous; M, the product of the leading dimensions, counts the rows).
// x and out in fp32, fp16 or bf16 (out is rounded once from fp32).
//
// act_bits = 8 (opt-in, affine weights only) first rounds each row of x to int8
// with one scale, x ~ sx * xq (sx = max(max|x| / 127, FLT_MIN), round to nearest
// even), then computes out = sx * sum_g scale_g * (sum_k xq * code - zero_g * sum_k xq)
// with exact int32 sums per group (VNNI vpdpbusd where available; for M <= 8 and
// 4- or 8-bit codes a fused GEMV reading the packed weights once). A row of x
// holding a NaN or an infinity has no int8 form: its results are NaN. Results
// differ from act_bits = 0 by the activation rounding; it is never chosen implicitly.
void quantized_matmul(const TensorView& x, const QuantizedViews& q, const TensorView& out, int act_bits = 0);

}  // namespace pocketml
