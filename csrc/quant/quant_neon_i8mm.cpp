// The int8-activation dot product with USMMLA (FEAT_I8MM; called only where
// cpu_features().neon_i8mm): a 2x8 block of unsigned codes times a 2x8 block
// of signed activations, transposed, adds a 2x2 block of exact int32 sums. So
// two weight rows meet two activation rows per instruction, and the unsigned
// codes need no offset (unlike SDOT). Rows interleave 8 bytes at a time.
#include <arm_neon.h>

#include "quant/quant_kernels.h"

namespace pocketml::neon_i8mm {
namespace {

// Bytes 8h .. 8h + 7 of a and of b side by side (h = 0 low halves, 1 high).
inline uint8x16_t pair_halves(uint8x16_t a, uint8x16_t b, int h) {
  const uint64x2_t a64 = vreinterpretq_u64_u8(a), b64 = vreinterpretq_u64_u8(b);
  return vreinterpretq_u8_u64(h == 0 ? vzip1q_u64(a64, b64) : vzip2q_u64(a64, b64));
}

// Activation rows in pairs (P = ceil(M / 2); an odd last row pairs with itself)
// against weight rows j0, j1 (N = 1: j1 = j0); lane 2 * w + x of acc[p] holds
// weight row w times activation row 2p + x.
template <int M, int N>
void dot_int8_block(const int8_t* xq, int64_t ldx, const uint8_t* codes, int64_t ldw, int64_t k, int64_t group,
                    const float* scales, int64_t lds, float* c, int64_t ldc) {
  constexpr int P = (M + 1) / 2;
  float sum[M][N] = {};
  const uint8_t* row1 = codes + (N == 2 ? ldw : 0);
  for (int64_t k0 = 0; k0 < k; k0 += group) {
    int32x4_t acc[P];
    for (int p = 0; p < P; ++p) acc[p] = vdupq_n_s32(0);
    for (int64_t t = k0; t < k0 + group; t += 16) {
      const uint8x16_t w0 = vld1q_u8(codes + t), w1 = vld1q_u8(row1 + t);
      const uint8x16_t w_low = pair_halves(w0, w1, 0), w_high = pair_halves(w0, w1, 1);
      for (int p = 0; p < P; ++p) {
        const int second = 2 * p + 1 < M ? 2 * p + 1 : 2 * p;
        const uint8x16_t x0 = vreinterpretq_u8_s8(vld1q_s8(xq + 2 * p * ldx + t));
        const uint8x16_t x1 = vreinterpretq_u8_s8(vld1q_s8(xq + second * ldx + t));
        acc[p] = vusmmlaq_s32(acc[p], w_low, vreinterpretq_s8_u8(pair_halves(x0, x1, 0)));
        acc[p] = vusmmlaq_s32(acc[p], w_high, vreinterpretq_s8_u8(pair_halves(x0, x1, 1)));
      }
    }
    int32_t dot[2 * P][2];
    for (int p = 0; p < P; ++p) {
      int32_t lanes[4];
      vst1q_s32(lanes, acc[p]);
      for (int w = 0; w < 2; ++w)
        for (int x = 0; x < 2; ++x) dot[2 * p + x][w] = lanes[2 * w + x];
    }
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) sum[i][j] += scales[j * lds + k0 / group] * static_cast<float>(dot[i][j]);
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

void dot_int8_usmmla(const int8_t* xq, int64_t ldx, int m, const uint8_t* codes, int64_t ldw, int n, int64_t k,
                     int64_t group, const float* scales, int64_t lds, float* c, int64_t ldc) {
  switch (m) {
    case 1: dot_int8_rows<1>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
    case 2: dot_int8_rows<2>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
    case 3: dot_int8_rows<3>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
    default: dot_int8_rows<4>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
  }
}

}  // namespace

const DotInt8Fn dot_int8 = dot_int8_usmmla;

}  // namespace pocketml::neon_i8mm
