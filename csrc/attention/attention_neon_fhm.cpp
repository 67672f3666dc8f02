// fp16 products with FMLAL / FMLAL2 (FEAT_FHM; put into the NEON table only
// where cpu_features().neon_fhm): each multiplies four fp16 lanes (the low or
// the high half of a register) by fp16 values and adds the products to four
// fp32 lanes. A product of two fp16 values is exact in fp32 and the addition
// rounds once, so every step equals an fp32 FMA on the widened values:
// accumulation stays fp32, and fp16 Q, K, V and dO enter the GEMMs as stored,
// without a widening pass and at half the bytes per tile.
//
// The register block is the 6 x 16 of attention_neon.cpp: one 128-bit load of
// B gives eight columns (two accumulators), so a row of the block costs two
// loads instead of four. Columns past the last whole group of four run scalar.
// dot_rows_f16 (decode's scores, keys along the lanes) reads eight fp16 of a
// query and of a key per load, where the fp32 kernels widen the key first.
#include <arm_neon.h>

#include <cstdint>

#include "attention/attention_kernels.h"
#include "runtime/half.h"

namespace pocketml::neon_fhm {
namespace {

#include "attention/attention_tile_picker-inl.h"

constexpr int kRows = 6;
constexpr int kVectors = 4;
// The reduction runs in slices whose B rows (128 x 16 fp16 = 4 KiB per column
// block) stay in L1 across row blocks: the same bytes as the fp32 kernel's 64.
constexpr int64_t kDepth = 128;

inline float16x8_t load8(const uint16_t* p) { return vreinterpretq_f16_u16(vld1q_u16(p)); }

// Four fp16 values in the low half (the high half is never read by FMLAL).
inline float16x8_t load4(const uint16_t* p) {
  const uint16x4_t h = vld1_u16(p);
  return vreinterpretq_f16_u16(vcombine_u16(h, h));
}

inline float16x8_t broadcast(const uint16_t* p) { return vreinterpretq_f16_u16(vld1q_dup_u16(p)); }

// C[ROWS][4 NV] += A B over K: vector v of a row takes the low (even v) or
// high (odd v) half of B's eight-column load.
template <int ROWS, int NV>
void gemm_tile(int64_t K, const uint16_t* a, int64_t a_row_stride, int64_t a_col_stride, const uint16_t* b,
               int64_t ldb, float* c, int64_t ldc) {
  constexpr int kLoads = (NV + 1) / 2;
  float32x4_t acc[ROWS][NV];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vld1q_f32(c + r * ldc + 4 * v);
  for (int64_t k = 0; k < K; ++k) {
    float16x8_t bv[kLoads];
    for (int i = 0; i < kLoads; ++i) bv[i] = 2 * i + 1 < NV ? load8(b + k * ldb + 8 * i) : load4(b + k * ldb + 8 * i);
    const uint16_t* a_k = a + k * a_col_stride;
    for (int r = 0; r < ROWS; ++r) {
      const float16x8_t av = broadcast(a_k + r * a_row_stride);
      for (int v = 0; v < NV; ++v)
        acc[r][v] = v % 2 == 0 ? vfmlalq_low_f16(acc[r][v], bv[v / 2], av) : vfmlalq_high_f16(acc[r][v], bv[v / 2], av);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < NV; ++v) vst1q_f32(c + r * ldc + 4 * v, acc[r][v]);
}

template <int ROWS, int NV>
struct GemmTile {
  static constexpr auto run = gemm_tile<ROWS, NV>;
};

void gemm_slice(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t a_row_stride, int64_t a_col_stride,
                const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  const int64_t vector_cols = N / 4 * 4;
  for (int64_t n0 = 0; n0 < vector_cols; n0 += 4 * kVectors) {
    const int nv = static_cast<int>((vector_cols - n0 < 4 * kVectors ? vector_cols - n0 : 4 * kVectors) / 4);
    const auto full = pick_tile<GemmTile, kVectors>(kRows, nv);
    int64_t m0 = 0;
    for (; m0 + kRows <= M; m0 += kRows)
      full(K, a + m0 * a_row_stride, a_row_stride, a_col_stride, b + n0, ldb, c + m0 * ldc + n0, ldc);
    if (m0 < M) {
      const auto rest = pick_tile<GemmTile, kVectors>(static_cast<int>(M - m0), nv);
      rest(K, a + m0 * a_row_stride, a_row_stride, a_col_stride, b + n0, ldb, c + m0 * ldc + n0, ldc);
    }
  }
  for (int64_t m = 0; m < M; ++m)  // the last N % 4 columns: an exact product, one rounding, as FMLAL
    for (int64_t k = 0; k < K; ++k) {
      const float a_mk = fp16_to_fp32(a[m * a_row_stride + k * a_col_stride]);
      for (int64_t n = vector_cols; n < N; ++n) c[m * ldc + n] += a_mk * fp16_to_fp32(b[k * ldb + n]);
    }
}

// sum_k a[k] * b[k] for four rows of b at once: each load of a serves four
// keys, low and high halves go to separate accumulators (eight independent
// chains), and the last K % 4 products are added after the vector sum.
inline void dot4(const uint16_t* a, const uint16_t* const b[4], int64_t K, float sums[4]) {
  float32x4_t lo[4], hi[4];
  for (int j = 0; j < 4; ++j) lo[j] = hi[j] = vdupq_n_f32(0.0f);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const float16x8_t av = load8(a + k);
    for (int j = 0; j < 4; ++j) {
      const float16x8_t bv = load8(b[j] + k);
      lo[j] = vfmlalq_low_f16(lo[j], av, bv);
      hi[j] = vfmlalq_high_f16(hi[j], av, bv);
    }
  }
  if (k + 4 <= K) {
    const float16x8_t av = load4(a + k);
    for (int j = 0; j < 4; ++j) lo[j] = vfmlalq_low_f16(lo[j], av, load4(b[j] + k));
    k += 4;
  }
  for (int j = 0; j < 4; ++j) {
    sums[j] = vaddvq_f32(vaddq_f32(lo[j], hi[j]));
    for (int64_t t = k; t < K; ++t) sums[j] += fp16_to_fp32(a[t]) * fp16_to_fp32(b[j][t]);
  }
}

}  // namespace

void dot_rows_f16(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb,
                  float* c, int64_t c_row_stride, int64_t c_col_stride) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
      // A last group of fewer than four keys repeats its first key.
      const uint16_t* keys[4];
      for (int j = 0; j < 4; ++j) keys[j] = b + (n0 + j < N ? n0 + j : n0) * ldb;
      float sums[4];
      dot4(a + m * lda, keys, K, sums);
      for (int j = 0; j < 4 && n0 + j < N; ++j) c[m * c_row_stride + (n0 + j) * c_col_stride] = sums[j];
    }
  }
}

void gemm_f16(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t a_row_stride, int64_t a_col_stride,
              const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
    const int64_t depth = K - k0 < kDepth ? K - k0 : kDepth;
    gemm_slice(M, N, depth, a + k0 * a_col_stride, a_row_stride, a_col_stride, b + k0 * ldb, ldb, c, ldc);
  }
}

}  // namespace pocketml::neon_fhm
