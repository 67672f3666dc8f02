// NEON attention tiles, ARMv8.0 only: 4 fp32 lanes, a register-blocked GEMM of
// 6 rows x 16 columns (24 accumulators + 4 B vectors + 1 broadcast of the 32
// registers), and the vector exp of the x86 variants for the online softmax.
// NEON has no masked loads: partial vectors go through a small stack buffer,
// and GEMM / dot-product columns past the last whole vector run scalar.
// Decode reads fp32 / fp16 / bf16 / int8 cache rows directly, converting in
// registers. fp16 is widened with FCVTL (ARMv8.0); where the CPU has FEAT_FHM,
// attention_neon_fhm.cpp multiplies fp16 operands directly (FMLAL), still
// accumulating in fp32.
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "attention/attention_kernels.h"
#include "runtime/half.h"

namespace pocketml::neon {
namespace {

#include "attention/attention_tile_picker-inl.h"

constexpr int kRows = 6;
constexpr int kVectors = 4;
constexpr int64_t kDepth = 64;

// The first `count` (< 4) floats at p, the other lanes `fill`.
inline float32x4_t load_partial(const float* p, int64_t count, float fill) {
  if (count >= 4) return vld1q_f32(p);
  float lanes[4] = {fill, fill, fill, fill};
  for (int64_t i = 0; i < count; ++i) lanes[i] = p[i];
  return vld1q_f32(lanes);
}

inline void store_partial(float* p, float32x4_t v, int64_t count) {
  if (count >= 4) {
    vst1q_f32(p, v);
    return;
  }
  float lanes[4];
  vst1q_f32(lanes, v);
  for (int64_t i = 0; i < count; ++i) p[i] = lanes[i];
}

// exp(x) = 2^n * e^r with n = round(x / ln 2), e^r by its degree-7 Taylor
// polynomial (relative error < 2e-8), as in the x86 variants. 2^n is built in
// the exponent bits, which needs n >= -126: below x = -87.3 the result is
// flushed to 0 explicitly. FMAX / FMIN propagate NaN, so NaN inputs stay NaN.
inline float32x4_t exp_f32(float32x4_t x) {
  const float32x4_t lowest = vdupq_n_f32(-87.3f);
  const uint32x4_t underflow = vcltq_f32(x, lowest);
  x = vminq_f32(vdupq_n_f32(88.3f), vmaxq_f32(lowest, x));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693145751953125f));
  r = vfmsq_f32(r, n, vdupq_n_f32(1.428606765330187045e-06f));
  float32x4_t p = vdupq_n_f32(1.0f / 5040.0f);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 720.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 120.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 24.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 6.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  const float32x4_t value = vmulq_f32(p, vreinterpretq_f32_s32(bits));
  return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(value), underflow));
}

// C[ROWS][4 NV] += A B over K, all columns in whole vectors.
template <int ROWS, int NV>
void gemm_tile(int64_t K, const float* a, int64_t a_row_stride, int64_t a_col_stride, const float* b, int64_t ldb,
               float* c, int64_t ldc) {
  float32x4_t acc[ROWS][NV];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vld1q_f32(c + r * ldc + 4 * v);
  for (int64_t k = 0; k < K; ++k) {
    float32x4_t bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = vld1q_f32(b + k * ldb + 4 * v);
    const float* a_k = a + k * a_col_stride;
    for (int r = 0; r < ROWS; ++r) {
      const float32x4_t av = vld1q_dup_f32(a_k + r * a_row_stride);
      for (int v = 0; v < NV; ++v) acc[r][v] = vfmaq_f32(acc[r][v], av, bv[v]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < NV; ++v) vst1q_f32(c + r * ldc + 4 * v, acc[r][v]);
}

template <int ROWS, int NV>
struct GemmTile {
  static constexpr auto run = gemm_tile<ROWS, NV>;
};

void gemm_slice(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row_stride, int64_t a_col_stride,
                const float* b, int64_t ldb, float* c, int64_t ldc) {
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
  for (int64_t m = 0; m < M; ++m)  // the last N % 4 columns
    for (int64_t k = 0; k < K; ++k) {
      const float a_mk = a[m * a_row_stride + k * a_col_stride];
      for (int64_t n = vector_cols; n < N; ++n) c[m * ldc + n] += a_mk * b[k * ldb + n];
    }
}

void gemm_accumulate(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row_stride, int64_t a_col_stride,
                     const float* b, int64_t ldb, float* c, int64_t ldc) {
  // The reduction runs in slices of kDepth so that the B slice a column block
  // streams (kDepth rows of 64 floats = 16 KiB) stays in L1 across row blocks.
  for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
    const int64_t depth = K - k0 < kDepth ? K - k0 : kDepth;
    gemm_slice(M, N, depth, a + k0 * a_col_stride, a_row_stride, a_col_stride, b + k0 * ldb, ldb, c, ldc);
  }
}

// sum_k a[k] * b[k] with the last K % 4 products added after the vector sum.
inline float dot(const float* a, const float* b, int64_t K) {
  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    s0 = vfmaq_f32(s0, vld1q_f32(a + k), vld1q_f32(b + k));
    s1 = vfmaq_f32(s1, vld1q_f32(a + k + 4), vld1q_f32(b + k + 4));
  }
  if (k + 4 <= K) {
    s0 = vfmaq_f32(s0, vld1q_f32(a + k), vld1q_f32(b + k));
    k += 4;
  }
  float sum = vaddvq_f32(vaddq_f32(s0, s1));
  for (; k < K; ++k) sum += a[k] * b[k];
  return sum;
}

void dot_rows(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t c_row_stride, int64_t c_col_stride) {
  for (int64_t m = 0; m < M; ++m) {
    const float* a_row = a + m * lda;
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {  // four keys share each load of the query row
      float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
      int64_t k = 0;
      for (; k + 4 <= K; k += 4) {
        const float32x4_t av = vld1q_f32(a_row + k);
        s0 = vfmaq_f32(s0, av, vld1q_f32(b + n * ldb + k));
        s1 = vfmaq_f32(s1, av, vld1q_f32(b + (n + 1) * ldb + k));
        s2 = vfmaq_f32(s2, av, vld1q_f32(b + (n + 2) * ldb + k));
        s3 = vfmaq_f32(s3, av, vld1q_f32(b + (n + 3) * ldb + k));
      }
      float sums[4] = {vaddvq_f32(s0), vaddvq_f32(s1), vaddvq_f32(s2), vaddvq_f32(s3)};
      for (; k < K; ++k)
        for (int j = 0; j < 4; ++j) sums[j] += a_row[k] * b[(n + j) * ldb + k];
      for (int j = 0; j < 4; ++j) c[m * c_row_stride + (n + j) * c_col_stride] = sums[j];
    }
    for (; n < N; ++n) c[m * c_row_stride + n * c_col_stride] = dot(a_row, b + n * ldb, K);
  }
}

void softmax_update(float* st, int64_t n_keys, int64_t n_rows, float* row_max, float* row_sum, float* rescale) {
  const float minus_inf = -__builtin_inff();
  for (int64_t r = 0; r < n_rows; r += 4) {
    const int64_t lanes = n_rows - r;
    const float32x4_t old_max = load_partial(row_max + r, lanes, minus_inf);
    float32x4_t new_max = old_max;
    for (int64_t j = 0; j < n_keys; ++j) new_max = vmaxnmq_f32(new_max, load_partial(st + j * n_rows + r, lanes, minus_inf));
    // Rows still at -inf are fully masked so far: take exp against 0.
    const uint32x4_t masked = vceqq_f32(new_max, vdupq_n_f32(minus_inf));
    const float32x4_t reference = vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(new_max), masked));
    float32x4_t sum = vdupq_n_f32(0.0f);
    for (int64_t j = 0; j < n_keys; ++j) {
      float* s = st + j * n_rows + r;
      const float32x4_t p = exp_f32(vsubq_f32(load_partial(s, lanes, minus_inf), reference));
      store_partial(s, p, lanes);
      sum = vaddq_f32(sum, p);
    }
    const float32x4_t c = exp_f32(vsubq_f32(old_max, reference));
    store_partial(rescale + r, c, lanes);
    store_partial(row_sum + r, vfmaq_f32(sum, load_partial(row_sum + r, lanes, 0.0f), c), lanes);
    store_partial(row_max + r, new_max, lanes);
  }
}

void softmax_update_rows(float* s, int64_t n_rows, int64_t n_keys, float* row_max, float* row_sum, float* rescale) {
  const float minus_inf = -__builtin_inff();
  for (int64_t r = 0; r < n_rows; ++r) {
    float* row = s + r * n_keys;
    float32x4_t m = vdupq_n_f32(minus_inf);
    for (int64_t j = 0; j < n_keys; j += 4) m = vmaxnmq_f32(m, load_partial(row + j, n_keys - j, minus_inf));
    const float new_max = __builtin_fmaxf(row_max[r], vmaxnmvq_f32(m));
    // A row still at -inf is fully masked so far: take exp against 0.
    const float reference = new_max == minus_inf ? 0.0f : new_max;
    const float32x4_t ref = vdupq_n_f32(reference);
    float32x4_t sum = vdupq_n_f32(0.0f);
    for (int64_t j = 0; j < n_keys; j += 4) {
      // Lanes past the tile load -inf, so they add exp(-inf) = 0.
      const float32x4_t p = exp_f32(vsubq_f32(load_partial(row + j, n_keys - j, minus_inf), ref));
      store_partial(row + j, p, n_keys - j);
      sum = vaddq_f32(sum, p);
    }
    const float c = vgetq_lane_f32(exp_f32(vdupq_n_f32(row_max[r] - reference)), 0);
    rescale[r] = c;
    row_sum[r] = row_sum[r] * c + vaddvq_f32(sum);
    row_max[r] = new_max;
  }
}

void scale_rows(float* acc, int64_t rows, int64_t dim, const float* rescale) {
  for (int64_t r = 0; r < rows; ++r) {
    if (rescale[r] == 1.0f) continue;
    const float32x4_t c = vdupq_n_f32(rescale[r]);
    float* row = acc + r * dim;
    int64_t d = 0;
    for (; d + 4 <= dim; d += 4) vst1q_f32(row + d, vmulq_f32(c, vld1q_f32(row + d)));
    for (; d < dim; ++d) row[d] *= rescale[r];
  }
}

void exp_minus_lse(float* st, int64_t n_keys, int64_t n_rows, const float* row_max, const float* log_sum) {
  for (int64_t r = 0; r < n_rows; r += 4) {
    const int64_t lanes = n_rows - r;
    const float32x4_t top = load_partial(row_max + r, lanes, 0.0f), l = load_partial(log_sum + r, lanes, 0.0f);
    for (int64_t j = 0; j < n_keys; ++j) {
      float* s = st + j * n_rows + r;
      store_partial(s, exp_f32(vsubq_f32(vsubq_f32(load_partial(s, lanes, 0.0f), top), l)), lanes);
    }
  }
}

// Whole 8-element chunks in vectors; a dim that is not a multiple of 8
// finishes with the scalar reference conversions.
void widen_f16_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t dim, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* in = src + r * src_stride;
    float* out = dst + r * ld;
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) {
      const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(in + d));
      vst1q_f32(out + d, vcvt_f32_f16(vget_low_f16(h)));
      vst1q_f32(out + d + 4, vcvt_high_f32_f16(h));
    }
    for (; d < dim; ++d) out[d] = fp16_to_fp32(in[d]);
  }
}

void widen_bf16_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t dim, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* in = src + r * src_stride;
    float* out = dst + r * ld;
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) {
      const uint16x8_t b = vld1q_u16(in + d);
      vst1q_f32(out + d, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(b), 16)));
      vst1q_f32(out + d + 4, vreinterpretq_f32_u32(vshll_high_n_u16(b, 16)));
    }
    for (; d < dim; ++d) out[d] = bf16_to_fp32(in[d]);
  }
}

void widen_int8_rows(const int8_t* src, int64_t src_stride, const float* scales, int64_t scale_stride, int64_t rows,
                     int64_t dim, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* in = src + r * src_stride;
    float* out = dst + r * ld;
    const float scale = scales[r * scale_stride];
    const float32x4_t scale_v = vdupq_n_f32(scale);
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) {
      const int16x8_t wide = vmovl_s8(vld1_s8(in + d));
      vst1q_f32(out + d, vmulq_f32(scale_v, vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)))));
      vst1q_f32(out + d + 4, vmulq_f32(scale_v, vcvtq_f32_s32(vmovl_high_s16(wide))));
    }
    for (; d < dim; ++d) out[d] = scale * static_cast<float>(in[d]);
  }
}

// --- decode: K / V rows read in their cache type, converted in registers ---

template <DType kType>
struct CacheElement {
  using type = uint16_t;  // fp16, bf16
};
template <>
struct CacheElement<DType::f32> {
  using type = float;
};
template <>
struct CacheElement<DType::i8> {
  using type = int8_t;
};

template <DType kType>
inline const typename CacheElement<kType>::type* cache_row(const void* base, int64_t j, int64_t stride) {
  return static_cast<const typename CacheElement<kType>::type*>(base) + j * stride;
}

// Elements d .. d + 3 of a cache row as fp32 (int8 without its row scale).
template <DType kType>
inline float32x4_t load_row4(const typename CacheElement<kType>::type* row, int64_t d) {
  if constexpr (kType == DType::f32) {
    return vld1q_f32(row + d);
  } else if constexpr (kType == DType::f16) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(row + d)));
  } else if constexpr (kType == DType::bf16) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(row + d), 16));
  } else {
    uint32_t word;
    std::memcpy(&word, row + d, 4);
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u32(vdup_n_u32(word))))));
  }
}

template <DType kType>
inline float load_element(const typename CacheElement<kType>::type* row, int64_t d) {
  if constexpr (kType == DType::f32) return row[d];
  if constexpr (kType == DType::f16) return fp16_to_fp32(row[d]);
  if constexpr (kType == DType::bf16) return bf16_to_fp32(row[d]);
  return static_cast<float>(row[d]);
}

// Four keys at a time against up to four query rows: each K vector is loaded
// (and converted) once for all rows, 16 accumulators, one reduction per score;
// the last dim % 4 products are added after it.
template <DType kType>
void decode_scores_typed(int64_t rows, int64_t keys, int64_t dim, const float* q, const void* k, int64_t k_stride,
                         const float* k_scales, int64_t scale_stride, float* scores) {
  const int64_t vector_dim = dim / 4 * 4;
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(typename CacheElement<kType>::type));
  const int64_t ahead = decode_prefetch_distance(row_bytes);
  if constexpr (kType == DType::i8) prefetch_next_tile_scales(k_scales, scale_stride, keys);
  for (int64_t j0 = 0; j0 < keys; j0 += 4) {
    const int nk = keys - j0 < 4 ? static_cast<int>(keys - j0) : 4;
    const typename CacheElement<kType>::type* key_rows[4];
    for (int i = 0; i < 4; ++i) key_rows[i] = cache_row<kType>(k, j0 + (i < nk ? i : 0), k_stride);
    for (int i = 0; i < nk; ++i) prefetch_decode_row(cache_row<kType>(k, j0 + ahead + i, k_stride), row_bytes);
    for (int64_t r0 = 0; r0 < rows; r0 += 4) {
      const int nr = rows - r0 < 4 ? static_cast<int>(rows - r0) : 4;
      float32x4_t acc[4][4];
      for (int r = 0; r < 4; ++r)
        for (int i = 0; i < 4; ++i) acc[r][i] = vdupq_n_f32(0.0f);
      for (int64_t d = 0; d < vector_dim; d += 4) {
        float32x4_t kv[4];
        for (int i = 0; i < 4; ++i) kv[i] = load_row4<kType>(key_rows[i], d);
        for (int r = 0; r < nr; ++r) {
          const float32x4_t qv = vld1q_f32(q + (r0 + r) * dim + d);
          for (int i = 0; i < 4; ++i) acc[r][i] = vfmaq_f32(acc[r][i], qv, kv[i]);
        }
      }
      for (int r = 0; r < nr; ++r)
        for (int i = 0; i < nk; ++i) {
          float score = vaddvq_f32(acc[r][i]);
          for (int64_t d = vector_dim; d < dim; ++d) score += q[(r0 + r) * dim + d] * load_element<kType>(key_rows[i], d);
          if constexpr (kType == DType::i8) score *= k_scales[(j0 + i) * scale_stride];
          scores[(r0 + r) * keys + j0 + i] = score;
        }
    }
  }
}

// acc[r][c0 : c0 + 4 NV] += sum_j p[r][j] v[j][c0 : c0 + 4 NV] for up to four
// rows at a time: each V vector is loaded (and converted) once for all of them.
// The first block of columns (c0 = 0) prefetches the rows ahead.
template <DType kType, int NV>
void decode_accumulate_block(int64_t rows, int64_t keys, int64_t dim, int64_t c0, const float* p, const void* v,
                             int64_t v_stride, const float* v_scales, int64_t scale_stride, float* acc) {
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(typename CacheElement<kType>::type));
  const int64_t ahead = decode_prefetch_distance(row_bytes);
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const int nr = rows - r0 < 4 ? static_cast<int>(rows - r0) : 4;
    float32x4_t o[4][NV];
    for (int r = 0; r < 4; ++r)
      for (int i = 0; i < NV; ++i) o[r][i] = r < nr ? vld1q_f32(acc + (r0 + r) * dim + c0 + 4 * i) : vdupq_n_f32(0.0f);
    for (int64_t j = 0; j < keys; ++j) {
      const auto* row = cache_row<kType>(v, j, v_stride);
      if (c0 == 0 && r0 == 0) prefetch_decode_row(cache_row<kType>(v, j + ahead, v_stride), row_bytes);
      float32x4_t vv[NV];
      for (int i = 0; i < NV; ++i) vv[i] = load_row4<kType>(row, c0 + 4 * i);
      const float row_scale = kType == DType::i8 ? v_scales[j * scale_stride] : 1.0f;
      for (int r = 0; r < nr; ++r) {
        const float32x4_t pv = vdupq_n_f32(p[(r0 + r) * keys + j] * row_scale);
        for (int i = 0; i < NV; ++i) o[r][i] = vfmaq_f32(o[r][i], pv, vv[i]);
      }
    }
    for (int r = 0; r < nr; ++r)
      for (int i = 0; i < NV; ++i) vst1q_f32(acc + (r0 + r) * dim + c0 + 4 * i, o[r][i]);
  }
}

template <DType kType>
void decode_accumulate_typed(int64_t rows, int64_t keys, int64_t dim, const float* p, const void* v,
                             int64_t v_stride, const float* v_scales, int64_t scale_stride, float* acc) {
  const int64_t vector_dim = dim / 4 * 4;
  if constexpr (kType == DType::i8) prefetch_next_tile_scales(v_scales, scale_stride, keys);
  for (int64_t c0 = 0; c0 < vector_dim; c0 += 16) {
    switch ((vector_dim - c0 < 16 ? vector_dim - c0 : 16) / 4) {
      case 1: decode_accumulate_block<kType, 1>(rows, keys, dim, c0, p, v, v_stride, v_scales, scale_stride, acc); break;
      case 2: decode_accumulate_block<kType, 2>(rows, keys, dim, c0, p, v, v_stride, v_scales, scale_stride, acc); break;
      case 3: decode_accumulate_block<kType, 3>(rows, keys, dim, c0, p, v, v_stride, v_scales, scale_stride, acc); break;
      default: decode_accumulate_block<kType, 4>(rows, keys, dim, c0, p, v, v_stride, v_scales, scale_stride, acc); break;
    }
  }
  for (int64_t r = 0; r < rows; ++r)  // the last dim % 4 columns
    for (int64_t j = 0; j < keys; ++j) {
      const auto* row = cache_row<kType>(v, j, v_stride);
      const float weight = p[r * keys + j] * (kType == DType::i8 ? v_scales[j * scale_stride] : 1.0f);
      for (int64_t d = vector_dim; d < dim; ++d) acc[r * dim + d] += weight * load_element<kType>(row, d);
    }
}

void decode_scores(DType kv, int64_t rows, int64_t keys, int64_t dim, const float* q, const void* k,
                   int64_t k_stride, const float* k_scales, int64_t scale_stride, float* scores) {
  auto run = [&](auto typed) { typed(rows, keys, dim, q, k, k_stride, k_scales, scale_stride, scores); };
  switch (kv) {
    case DType::f16: return run(decode_scores_typed<DType::f16>);
    case DType::bf16: return run(decode_scores_typed<DType::bf16>);
    case DType::i8: return run(decode_scores_typed<DType::i8>);
    default: return run(decode_scores_typed<DType::f32>);
  }
}

void decode_accumulate(DType kv, int64_t rows, int64_t keys, int64_t dim, const float* p, const void* v,
                       int64_t v_stride, const float* v_scales, int64_t scale_stride, float* acc) {
  auto run = [&](auto typed) { typed(rows, keys, dim, p, v, v_stride, v_scales, scale_stride, acc); };
  switch (kv) {
    case DType::f16: return run(decode_accumulate_typed<DType::f16>);
    case DType::bf16: return run(decode_accumulate_typed<DType::bf16>);
    case DType::i8: return run(decode_accumulate_typed<DType::i8>);
    default: return run(decode_accumulate_typed<DType::f32>);
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
    decode_scores,
    decode_accumulate,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace pocketml::neon
