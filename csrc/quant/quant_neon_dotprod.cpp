// The int8-activation dot product with SDOT (FEAT_DotProd, ARMv8.2; called only
// where cpu_features().neon_dotprod): 16 products of signed bytes per lane
// group into four 32-bit lanes. SDOT takes signed bytes on both sides, so the
// unsigned codes c (up to 255) enter as c - 128 (their top bit flipped), and
// 128 * sum(x), counted by a second SDOT against ones, restores the exact sum.
#include <arm_neon.h>

#include "quant/quant_kernels.h"

namespace pocketml::neon_dotprod {
namespace {

template <int M, int N>
void dot_int8_block(const int8_t* xq, int64_t ldx, const uint8_t* codes, int64_t ldw, int64_t k, int64_t group,
                    const float* scales, int64_t lds, float* c, int64_t ldc) {
  const int8x16_t ones = vdupq_n_s8(1);
  float sum[M][N] = {};
  for (int64_t k0 = 0; k0 < k; k0 += group) {
    int32x4_t dot[M][N], x_sum[M];
    for (int i = 0; i < M; ++i) {
      x_sum[i] = vdupq_n_s32(0);
      for (int j = 0; j < N; ++j) dot[i][j] = vdupq_n_s32(0);
    }
    for (int64_t t = k0; t < k0 + group; t += 16) {
      int8x16_t wv[N];
      for (int j = 0; j < N; ++j) wv[j] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(codes + j * ldw + t), vdupq_n_u8(0x80)));
      for (int i = 0; i < M; ++i) {
        const int8x16_t xv = vld1q_s8(xq + i * ldx + t);
        x_sum[i] = vdotq_s32(x_sum[i], xv, ones);
        for (int j = 0; j < N; ++j) dot[i][j] = vdotq_s32(dot[i][j], xv, wv[j]);
      }
    }
    for (int i = 0; i < M; ++i) {
      const int32_t offset = 128 * vaddvq_s32(x_sum[i]);
      for (int j = 0; j < N; ++j)
        sum[i][j] += scales[j * lds + k0 / group] * static_cast<float>(vaddvq_s32(dot[i][j]) + offset);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) c[i * ldc + j] += sum[i][j];
}

template <int M>
void dot_int8_rows(const int8_t* xq, int64_t ldx, const uint8_t* codes, int64_t ldw, int n, int64_t k, int64_t group,
                   const float* scales, int64_t lds, float* c, int64_t ldc) {
  if (n == 1) {
    dot_int8_block<M, 1>(xq, ldx, codes, ldw, k, group, scales, lds, c, ldc);
  } else {
    dot_int8_block<M, 2>(xq, ldx, codes, ldw, k, group, scales, lds, c, ldc);
  }
}

void dot_int8_sdot(const int8_t* xq, int64_t ldx, int m, const uint8_t* codes, int64_t ldw, int n, int64_t k,
                   int64_t group, const float* scales, int64_t lds, float* c, int64_t ldc) {
  switch (m) {
    case 1: dot_int8_rows<1>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
    case 2: dot_int8_rows<2>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
    case 3: dot_int8_rows<3>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
    default: dot_int8_rows<4>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
  }
}

}  // namespace

const DotInt8Fn dot_int8 = dot_int8_sdot;

}  // namespace pocketml::neon_dotprod
