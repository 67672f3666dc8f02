// bf16 pair products with BFDOT (FEAT_BF16; put into the NEON table only where
// cpu_features().neon_bf16): each fp32 lane adds the products of one bf16
// pair, as AVX512-BF16's vdpbf16ps does, so bf16 prefill multiplies bf16 Q, K,
// P and V without widening them. A 6 x 16 register block as in attention_neon.cpp;
// columns past the last whole vector run scalar. BFDOT (without FEAT_EBF16)
// flushes denormals and rounds its sum to odd: differences from an fp32 FMA are
// far below bf16's own rounding.
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "attention/attention_kernels.h"
#include "runtime/half.h"

namespace pocketml::neon_bf16 {
namespace {

#include "attention/attention_tile_picker-inl.h"

constexpr int kRows = 6;
constexpr int kVectors = 4;

inline bfloat16x8_t broadcast_pair(const uint16_t* p) {
  uint32_t bits;
  std::memcpy(&bits, p, sizeof(bits));
  return vreinterpretq_bf16_u32(vdupq_n_u32(bits));
}

template <int ROWS, int NV>
void gemm_bf16_tile(int64_t pairs, const uint16_t* a, int64_t a_row_stride, int64_t a_pair_stride, const uint16_t* b,
                    int64_t ldb, float* c, int64_t ldc) {
  float32x4_t acc[ROWS][NV];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vld1q_f32(c + r * ldc + 4 * v);
  for (int64_t p = 0; p < pairs; ++p) {
    bfloat16x8_t bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = vreinterpretq_bf16_u16(vld1q_u16(b + p * ldb + 8 * v));
    const uint16_t* a_p = a + p * a_pair_stride;
    for (int r = 0; r < ROWS; ++r) {
      const bfloat16x8_t av = broadcast_pair(a_p + r * a_row_stride);
      for (int v = 0; v < NV; ++v) acc[r][v] = vbfdotq_f32(acc[r][v], av, bv[v]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < NV; ++v) vst1q_f32(c + r * ldc + 4 * v, acc[r][v]);
}

template <int ROWS, int NV>
struct GemmBf16Tile {
  static constexpr auto run = gemm_bf16_tile<ROWS, NV>;
};

void gemm_bf16_pairs(int64_t M, int64_t N, int64_t pairs, const uint16_t* a, int64_t a_row_stride,
                     int64_t a_pair_stride, const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  const int64_t vector_cols = N / 4 * 4;
  for (int64_t n0 = 0; n0 < vector_cols; n0 += 4 * kVectors) {
    const int nv = static_cast<int>((vector_cols - n0 < 4 * kVectors ? vector_cols - n0 : 4 * kVectors) / 4);
    const auto full = pick_tile<GemmBf16Tile, kVectors>(kRows, nv);
    int64_t m0 = 0;
    for (; m0 + kRows <= M; m0 += kRows)
      full(pairs, a + m0 * a_row_stride, a_row_stride, a_pair_stride, b + 2 * n0, ldb, c + m0 * ldc + n0, ldc);
    if (m0 < M) {
      const auto rest = pick_tile<GemmBf16Tile, kVectors>(static_cast<int>(M - m0), nv);
      rest(pairs, a + m0 * a_row_stride, a_row_stride, a_pair_stride, b + 2 * n0, ldb, c + m0 * ldc + n0, ldc);
    }
  }
  for (int64_t m = 0; m < M; ++m)  // the last N % 4 columns
    for (int64_t p = 0; p < pairs; ++p) {
      const uint16_t* a_mp = a + m * a_row_stride + p * a_pair_stride;
      for (int64_t n = vector_cols; n < N; ++n) {
        const uint16_t* b_pn = b + p * ldb + 2 * n;
        c[m * ldc + n] += bf16_to_fp32(a_mp[0]) * bf16_to_fp32(b_pn[0]) + bf16_to_fp32(a_mp[1]) * bf16_to_fp32(b_pn[1]);
      }
    }
}

// fp32 -> bf16 bits rounded to nearest even with NaN kept quiet, in integers
// exactly as the reference fp32_to_bf16 (BFCVT would flush denormals).
inline uint16x4_t f32_to_bf16_bits(float32x4_t v) {
  const uint32x4_t bits = vreinterpretq_u32_f32(v);
  const uint32x4_t round_bit = vandq_u32(vshrq_n_u32(bits, 16), vdupq_n_u32(1));
  const uint32x4_t rounded = vshrq_n_u32(vaddq_u32(bits, vaddq_u32(round_bit, vdupq_n_u32(0x7FFF))), 16);
  const uint32x4_t quiet_nan = vorrq_u32(vshrq_n_u32(bits, 16), vdupq_n_u32(0x0040));
  return vmovn_u32(vbslq_u32(vceqq_f32(v, v), rounded, quiet_nan));
}

void pair_rows_f32_to_bf16(const float* src, int64_t ld, int64_t rows, int64_t cols, uint16_t* dst) {
  for (int64_t r = 0; r < rows; r += 2) {
    const float* x = src + r * ld;
    const float* y = r + 1 < rows ? x + ld : nullptr;
    uint16_t* out = dst + r * cols;  // pair row r / 2 holds 2 * cols values
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      const uint16x4_t xb = f32_to_bf16_bits(vld1q_f32(x + c));
      const uint16x4_t yb = y ? f32_to_bf16_bits(vld1q_f32(y + c)) : vdup_n_u16(0);
      vst1q_u16(out + 2 * c, vcombine_u16(vzip1_u16(xb, yb), vzip2_u16(xb, yb)));
    }
    for (; c < cols; ++c) {
      out[2 * c] = fp32_to_bf16(x[c]);
      out[2 * c + 1] = y ? fp32_to_bf16(y[c]) : uint16_t(0);
    }
  }
}

void pair_rows_bf16(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t cols, uint16_t* dst) {
  for (int64_t r = 0; r < rows; r += 2) {
    const uint16_t* x = src + r * src_stride;
    const uint16_t* y = r + 1 < rows ? x + src_stride : nullptr;
    uint16_t* out = dst + r * cols;
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      const uint16x8_t xv = vld1q_u16(x + c), yv = y ? vld1q_u16(y + c) : vdupq_n_u16(0);
      vst1q_u16(out + 2 * c, vzip1q_u16(xv, yv));
      vst1q_u16(out + 2 * c + 8, vzip2q_u16(xv, yv));
    }
    for (; c < cols; ++c) {
      out[2 * c] = x[c];
      out[2 * c + 1] = y ? y[c] : uint16_t(0);
    }
  }
}

}  // namespace

const AttentionKernels bf16_pair_kernels = {
    nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
    gemm_bf16_pairs,
    pair_rows_f32_to_bf16,
    pair_rows_bf16,
};

}  // namespace pocketml::neon_bf16
