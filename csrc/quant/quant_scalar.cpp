// The scalar reference of the quantized-matmul kernels: the executable spec
// every SIMD variant is tested against.
#include "quant/quant_kernels.h"

namespace pocketml::scalar {
namespace {

void decode_row(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out) {
  const uint8_t* packed_row = w.packed + row * w.row_bytes;
  const int chunk_bytes = 4 * w.bits;
  for (int64_t c = chunk_begin; c < chunk_end; ++c, out += kCodesPerChunk) {
    const uint8_t* chunk = packed_row + c * chunk_bytes;
    if (w.kind == QuantKind::lut) {
      const float* lut = row_lut(w, row);
      for (int i = 0; i < kCodesPerChunk; ++i) out[i] = lut[chunk_code(chunk, w.bits, i)];
    } else {
      float scale, zero;
      chunk_affine_params(w, row, c, &scale, &zero);
      for (int i = 0; i < kCodesPerChunk; ++i) out[i] = scale * (static_cast<float>(chunk_code(chunk, w.bits, i)) - zero);
    }
  }
}

void dot_tile(const float* x, int64_t ldx, int m, const float* w, int64_t ldw, int n, int64_t k, float* c,
              int64_t ldc) {
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      float sum = 0.0f;
      for (int64_t t = 0; t < k; ++t) sum += x[i * ldx + t] * w[j * ldw + t];
      c[i * ldc + j] += sum;
    }
  }
}

void unpack_codes(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, uint8_t* out) {
  const uint8_t* packed_row = w.packed + row * w.row_bytes;
  for (int64_t c = chunk_begin; c < chunk_end; ++c, out += kCodesPerChunk)
    for (int i = 0; i < kCodesPerChunk; ++i)
      out[i] = static_cast<uint8_t>(chunk_code(packed_row + c * 4 * w.bits, w.bits, i));
}

void dot_int8(const int8_t* xq, int64_t ldx, int m, const uint8_t* codes, int64_t ldw, int n, int64_t k, int64_t group,
              const float* scales, int64_t lds, float* c, int64_t ldc) {
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      float sum = 0.0f;
      for (int64_t k0 = 0; k0 < k; k0 += group) {
        int32_t dot = 0;
        for (int64_t t = k0; t < k0 + group; ++t) dot += int32_t(xq[i * ldx + t]) * int32_t(codes[j * ldw + t]);
        sum += scales[j * lds + k0 / group] * static_cast<float>(dot);
      }
      c[i * ldc + j] += sum;
    }
  }
}

}  // namespace

const QuantKernels quant_kernels = {decode_row, dot_tile, nullptr, unpack_codes, dot_int8, nullptr, nullptr};

}  // namespace pocketml::scalar
