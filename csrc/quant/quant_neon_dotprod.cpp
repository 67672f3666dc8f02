// The int8-activation dot product with SDOT (FEAT_DotProd, ARMv8.2; called only
// where cpu_features().neon_dotprod): 16 products of signed bytes per lane
// group into four 32-bit lanes. SDOT takes signed bytes on both sides, so the
// unsigned codes c (up to 255) enter as c - 128 (their top bit flipped), and
// 128 * sum(x), counted by a second SDOT against ones, restores the exact sum.
// The fused int8-activation GEMV for decode lives here too.
#include <arm_neon.h>

#include "quant/prefetch.h"
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

// The fused int8-activation GEMV (quant_kernels.h). A chunk of 4-bit codes is
// 16 bytes: its low nibbles (codes 0-15) and high nibbles (16-31), already signed
// bytes, meet the activations stored in that order (int8_gemv_position) in two
// SDOTs. 8-bit codes enter as c - 128 and their zero point as z - 128, which
// leaves every group's sum exact. A chunk lies in one group: its four 32-bit
// sums turn into fp32 once and are scaled by that group's scale.
template <int Bits, int M, int R>
void gemv_int8_rows_at(const PackedWeights& w, int64_t row, const int8_t* xq, int64_t ldx, const float* x_sums,
                       int64_t lds, const float* x_scale, int m, float* y, int64_t ldy) {
  constexpr int kCodeOffset = Bits == 8 ? 128 : 0;
  const int64_t chunks = chunks_per_row(w.cols);
  const int64_t group_chunks = chunks_per_group(w, chunks);
  const int64_t groups = w.groups_per_row();
  float32x4_t acc[R][M];
  float zero_share[R][M] = {}, scale[R] = {};
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < M; ++i) acc[r][i] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t index = (row + r) * groups + g;
      const float zero = static_cast<float>((w.zero_points ? w.zero_points[index] : w.symmetric_zero_point()) - kCodeOffset);
      const float scaled_zero = load_scale(w.scales, w.scale_dtype, index) * zero;
      for (int i = 0; i < M; ++i) zero_share[r][i] += scaled_zero * x_sums[i * lds + g];
    }
  }
  prefetch_group_params(w, row + 2 * R, R);
  const int64_t prefetch_distance = 2 * R * w.row_bytes;
  for (int64_t c = 0; c < chunks; ++c) {
    // Where the activations of the chunk's first and second halves sit.
    const int64_t first = Bits == 4 ? 128 * (c / 4) + 16 * (c % 4) : 32 * c;
    const int64_t second = Bits == 4 ? first + 64 : first + 16;
    if (c % group_chunks == 0)
      for (int r = 0; r < R; ++r) scale[r] = load_scale(w.scales, w.scale_dtype, (row + r) * groups + c / group_chunks);
    for (int r = 0; r < R; ++r) {
      const uint8_t* chunk = w.packed + (row + r) * w.row_bytes + c * 4 * Bits;
      if (c % 2 == 0) prefetch_line(chunk + prefetch_distance);
      int8x16_t low, high;
      if constexpr (Bits == 4) {
        const uint8x16_t bytes = vld1q_u8(chunk);
        low = vreinterpretq_s8_u8(vandq_u8(bytes, vdupq_n_u8(15)));
        high = vreinterpretq_s8_u8(vshrq_n_u8(bytes, 4));
      } else {
        low = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(chunk), vdupq_n_u8(0x80)));
        high = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(chunk + 16), vdupq_n_u8(0x80)));
      }
      for (int i = 0; i < M; ++i) {
        int32x4_t sums = vdotq_s32(vdupq_n_s32(0), low, vld1q_s8(xq + i * ldx + first));
        sums = vdotq_s32(sums, high, vld1q_s8(xq + i * ldx + second));
        acc[r][i] = vfmaq_n_f32(acc[r][i], vcvtq_f32_s32(sums), scale[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < M; ++i)
      if (i < m) y[i * ldy + row + r] = x_scale[i] * (vaddvq_f32(acc[r][i]) - zero_share[r][i]);
}

template <int Bits, int M>
void gemv_int8_rows(const PackedWeights& w, int64_t row_begin, int64_t row_end, const int8_t* xq, int64_t ldx,
                    const float* x_sums, int64_t lds, const float* x_scale, int m, float* y, int64_t ldy) {
  constexpr int R = M == 1 ? 4 : M == 2 ? 2 : 1;
  int64_t row = row_begin;
  for (; row + R <= row_end; row += R)
    gemv_int8_rows_at<Bits, M, R>(w, row, xq, ldx, x_sums, lds, x_scale, m, y, ldy);
  for (; row < row_end; ++row) gemv_int8_rows_at<Bits, M, 1>(w, row, xq, ldx, x_sums, lds, x_scale, m, y, ldy);
}

#include "quant/quant_int8_gemv_switchboard-inl.h"

}  // namespace

const DotInt8Fn dot_int8 = dot_int8_sdot;
const GemvInt8Fn gemv_int8 = gemv_int8_any;

}  // namespace pocketml::neon_dotprod
