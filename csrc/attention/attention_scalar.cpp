// The scalar reference of the attention tile operations: the executable
// specification every SIMD variant is tested against.
#include <cmath>
#include <limits>

#include "attention/attention_kernels.h"
#include "runtime/half.h"

namespace pocketml::scalar {
namespace {

void gemm_accumulate(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row_stride, int64_t a_col_stride,
                     const float* b, int64_t ldb, float* c, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m) {
    float* c_row = c + m * ldc;
    for (int64_t k = 0; k < K; ++k) {
      const float a_mk = a[m * a_row_stride + k * a_col_stride];
      const float* b_row = b + k * ldb;
      for (int64_t n = 0; n < N; ++n) c_row[n] += a_mk * b_row[n];
    }
  }
}

void dot_rows(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t c_row_stride, int64_t c_col_stride) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      float sum = 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += a[m * lda + k] * b[n * ldb + k];
      c[m * c_row_stride + n * c_col_stride] = sum;
    }
  }
}

void softmax_update(float* st, int64_t n_keys, int64_t n_rows, float* row_max, float* row_sum, float* rescale) {
  for (int64_t r = 0; r < n_rows; ++r) {
    float new_max = row_max[r];
    for (int64_t j = 0; j < n_keys; ++j) new_max = std::fmax(new_max, st[j * n_rows + r]);
    // Against -inf every score is masked: exp(-inf - 0) = 0 instead of NaN.
    const float reference = new_max == -std::numeric_limits<float>::infinity() ? 0.0f : new_max;
    float sum = 0.0f;
    for (int64_t j = 0; j < n_keys; ++j) {
      const float p = std::exp(st[j * n_rows + r] - reference);
      st[j * n_rows + r] = p;
      sum += p;
    }
    rescale[r] = std::exp(row_max[r] - reference);
    row_sum[r] = row_sum[r] * rescale[r] + sum;
    row_max[r] = new_max;
  }
}

void softmax_update_rows(float* s, int64_t n_rows, int64_t n_keys, float* row_max, float* row_sum, float* rescale) {
  // A query-major tile is the key-major tile of one row at a time.
  for (int64_t r = 0; r < n_rows; ++r)
    softmax_update(s + r * n_keys, n_keys, 1, row_max + r, row_sum + r, rescale + r);
}

void scale_rows(float* acc, int64_t rows, int64_t dim, const float* rescale) {
  for (int64_t r = 0; r < rows; ++r) {
    if (rescale[r] == 1.0f) continue;
    for (int64_t d = 0; d < dim; ++d) acc[r * dim + d] *= rescale[r];
  }
}

void exp_minus_lse(float* st, int64_t n_keys, int64_t n_rows, const float* row_max, const float* log_sum) {
  for (int64_t j = 0; j < n_keys; ++j)
    for (int64_t r = 0; r < n_rows; ++r) st[j * n_rows + r] = std::exp((st[j * n_rows + r] - row_max[r]) - log_sum[r]);
}

void widen_f16_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t dim, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < dim; ++d) dst[r * ld + d] = fp16_to_fp32(src[r * src_stride + d]);
}

void widen_bf16_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t dim, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < dim; ++d) dst[r * ld + d] = bf16_to_fp32(src[r * src_stride + d]);
}

void widen_int8_rows(const int8_t* src, int64_t src_stride, const float* scales, int64_t scale_stride, int64_t rows,
                     int64_t dim, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = scales[r * scale_stride];
    for (int64_t d = 0; d < dim; ++d) dst[r * ld + d] = scale * static_cast<float>(src[r * src_stride + d]);
  }
}

}  // namespace

const AttentionKernels attention_kernels = {
    gemm_accumulate,
    dot_rows,
    softmax_update,
    softmax_update_rows,
    scale_rows,
    exp_minus_lse,
    widen_f16_rows,
    widen_bf16_rows,
    widen_int8_rows,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace pocketml::scalar
