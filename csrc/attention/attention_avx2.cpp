// AVX2 + FMA attention tiles: 8 fp32 lanes, register-blocked GEMM of 6 rows x
// 16 columns (12 accumulators + 2 B vectors + 1 broadcast of 16 registers),
// and a vector exp for the online softmax. Tails use masked loads and stores.
#include <immintrin.h>

#include <cstdint>

#include "attention/attention_kernels.h"
#include "runtime/half.h"

namespace pocketml::avx2 {
namespace {

#include "attention/attention_tile_picker-inl.h"

constexpr int kRows = 6;
constexpr int64_t kDepth = 64;
constexpr int kVectors = 2;

inline __m256i tail_mask(int64_t remaining) {
  const int count = remaining >= 8 ? 8 : static_cast<int>(remaining);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline __m256 hsum_broadcast(__m256 v) {
  v = _mm256_add_ps(v, _mm256_permute2f128_ps(v, v, 1));
  v = _mm256_add_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm256_add_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
}

inline float hsum(__m256 v) { return _mm256_cvtss_f32(hsum_broadcast(v)); }

// exp(x) = 2^n * e^r with n = round(x / ln 2), e^r by its degree-7 Taylor
// polynomial (relative error < 2e-8). 2^n is built in the exponent bits, which
// needs n >= -126: below x = -87.3 the result is flushed to 0 explicitly
// (exp(-87.3) ~ 1e-38 is the smallest normal). NaN inputs stay NaN.
inline __m256 exp256(__m256 x) {
  const __m256 lowest = _mm256_set1_ps(-87.3f);
  const __m256 underflow = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ);
  x = _mm256_max_ps(lowest, x);
  x = _mm256_min_ps(_mm256_set1_ps(88.3f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

template <int ROWS, int NV>
void gemm_tile(int64_t K, const float* a, int64_t a_row_stride, int64_t a_col_stride, const float* b, int64_t ldb,
               float* c, int64_t ldc, __m256i last) {
  const __m256i all = _mm256_set1_epi32(-1);
  __m256 acc[ROWS][NV];
  #pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_maskload_ps(c + r * ldc + 8 * v, v == NV - 1 ? last : all);
  for (int64_t k = 0; k < K; ++k) {
    __m256 bv[NV];
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_maskload_ps(b + k * ldb + 8 * v, v == NV - 1 ? last : all);
    const float* a_k = a + k * a_col_stride;
    #pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const __m256 av = _mm256_broadcast_ss(a_k + r * a_row_stride);
      #pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) _mm256_maskstore_ps(c + r * ldc + 8 * v, v == NV - 1 ? last : all, acc[r][v]);
}

template <int ROWS, int NV>
struct GemmTile {
  static constexpr auto run = gemm_tile<ROWS, NV>;
};

void gemm_slice(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row_stride, int64_t a_col_stride,
                const float* b, int64_t ldb, float* c, int64_t ldc) {
  for (int64_t n0 = 0; n0 < N; n0 += 8 * kVectors) {
    const int64_t width = N - n0 < 8 * kVectors ? N - n0 : 8 * kVectors;
    const int nv = static_cast<int>((width + 7) / 8);
    const __m256i last = tail_mask(width - 8 * (nv - 1));
    const auto full = pick_tile<GemmTile, kVectors>(kRows, nv);
    int64_t m0 = 0;
    for (; m0 + kRows <= M; m0 += kRows)
      full(K, a + m0 * a_row_stride, a_row_stride, a_col_stride, b + n0, ldb, c + m0 * ldc + n0, ldc, last);
    if (m0 < M) {
      const auto rest = pick_tile<GemmTile, kVectors>(static_cast<int>(M - m0), nv);
      rest(K, a + m0 * a_row_stride, a_row_stride, a_col_stride, b + n0, ldb, c + m0 * ldc + n0, ldc, last);
    }
  }
}


void gemm_accumulate(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row_stride, int64_t a_col_stride,
                     const float* b, int64_t ldb, float* c, int64_t ldc) {
  // The reduction runs in slices of kDepth so that the B slice one column
  // block streams (kDepth rows of 64 floats = 16 KiB) stays in L1 across all
  // row blocks even when K = D = 128 or 256.
  for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
    const int64_t depth = K - k0 < kDepth ? K - k0 : kDepth;
    gemm_slice(M, N, depth, a + k0 * a_col_stride, a_row_stride, a_col_stride, b + k0 * ldb, ldb, c, ldc);
  }
}

void dot_rows(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t c_row_stride, int64_t c_col_stride) {
  for (int64_t m = 0; m < M; ++m) {
    const float* a_row = a + m * lda;
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {
      __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
      for (int64_t k = 0; k < K; k += 8) {
        const __m256i mk = tail_mask(K - k);
        const __m256 av = _mm256_maskload_ps(a_row + k, mk);
        s0 = _mm256_fmadd_ps(av, _mm256_maskload_ps(b + n * ldb + k, mk), s0);
        s1 = _mm256_fmadd_ps(av, _mm256_maskload_ps(b + (n + 1) * ldb + k, mk), s1);
        s2 = _mm256_fmadd_ps(av, _mm256_maskload_ps(b + (n + 2) * ldb + k, mk), s2);
        s3 = _mm256_fmadd_ps(av, _mm256_maskload_ps(b + (n + 3) * ldb + k, mk), s3);
      }
      c[m * c_row_stride + n * c_col_stride] = hsum(s0);
      c[m * c_row_stride + (n + 1) * c_col_stride] = hsum(s1);
      c[m * c_row_stride + (n + 2) * c_col_stride] = hsum(s2);
      c[m * c_row_stride + (n + 3) * c_col_stride] = hsum(s3);
    }
    for (; n < N; ++n) {
      __m256 s0 = _mm256_setzero_ps();
      for (int64_t k = 0; k < K; k += 8) {
        const __m256i mk = tail_mask(K - k);
        s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a_row + k, mk), _mm256_maskload_ps(b + n * ldb + k, mk), s0);
      }
      c[m * c_row_stride + n * c_col_stride] = hsum(s0);
    }
  }
}

void softmax_update(float* st, int64_t n_keys, int64_t n_rows, float* row_max, float* row_sum, float* rescale) {
  const __m256 minus_inf = _mm256_set1_ps(-__builtin_inff());
  for (int64_t r = 0; r < n_rows; r += 8) {
    const __m256i m = tail_mask(n_rows - r);
    const __m256 old_max = _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(row_max + r, m), _mm256_castsi256_ps(m));
    __m256 new_max = old_max;
    for (int64_t j = 0; j < n_keys; ++j)
      new_max = _mm256_max_ps(new_max, _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(st + j * n_rows + r, m),
                                                        _mm256_castsi256_ps(m)));
    // Rows still at -inf are fully masked so far: take exp against 0.
    const __m256 reference = _mm256_andnot_ps(_mm256_cmp_ps(new_max, minus_inf, _CMP_EQ_OQ), new_max);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < n_keys; ++j) {
      float* s = st + j * n_rows + r;
      const __m256 p = exp256(_mm256_sub_ps(_mm256_maskload_ps(s, m), reference));
      _mm256_maskstore_ps(s, m, p);
      sum = _mm256_add_ps(sum, p);
    }
    const __m256 c = exp256(_mm256_sub_ps(old_max, reference));
    _mm256_maskstore_ps(rescale + r, m, c);
    _mm256_maskstore_ps(row_sum + r, m, _mm256_fmadd_ps(_mm256_maskload_ps(row_sum + r, m), c, sum));
    _mm256_maskstore_ps(row_max + r, m, new_max);
  }
}

inline float hmax(__m256 v) {
  v = _mm256_max_ps(v, _mm256_permute2f128_ps(v, v, 1));
  v = _mm256_max_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm256_cvtss_f32(_mm256_max_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1))));
}

void softmax_update_rows(float* s, int64_t n_rows, int64_t n_keys, float* row_max, float* row_sum, float* rescale) {
  const __m256 minus_inf = _mm256_set1_ps(-__builtin_inff());
  for (int64_t r = 0; r < n_rows; ++r) {
    float* row = s + r * n_keys;
    __m256 m = minus_inf;
    for (int64_t j = 0; j < n_keys; j += 8) {
      const __m256i mk = tail_mask(n_keys - j);
      m = _mm256_max_ps(m, _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(row + j, mk), _mm256_castsi256_ps(mk)));
    }
    const float new_max = __builtin_fmaxf(row_max[r], hmax(m));
    // A row still at -inf is fully masked so far: take exp against 0.
    const float reference = new_max == -__builtin_inff() ? 0.0f : new_max;
    const __m256 ref = _mm256_set1_ps(reference);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < n_keys; j += 8) {
      const __m256i mk = tail_mask(n_keys - j);
      const __m256 e = exp256(_mm256_sub_ps(_mm256_maskload_ps(row + j, mk), ref));
      const __m256 p = _mm256_and_ps(e, _mm256_castsi256_ps(mk));  // lanes past the tile add nothing
      _mm256_maskstore_ps(row + j, mk, p);
      sum = _mm256_add_ps(sum, p);
    }
    const float c = _mm256_cvtss_f32(exp256(_mm256_set1_ps(row_max[r] - reference)));
    rescale[r] = c;
    row_sum[r] = row_sum[r] * c + hsum(sum);
    row_max[r] = new_max;
  }
}

void scale_rows(float* acc, int64_t rows, int64_t dim, const float* rescale) {
  for (int64_t r = 0; r < rows; ++r) {
    if (rescale[r] == 1.0f) continue;
    const __m256 c = _mm256_set1_ps(rescale[r]);
    float* row = acc + r * dim;
    for (int64_t d = 0; d < dim; d += 8) {
      const __m256i m = tail_mask(dim - d);
      _mm256_maskstore_ps(row + d, m, _mm256_mul_ps(c, _mm256_maskload_ps(row + d, m)));
    }
  }
}

void exp_minus_lse(float* st, int64_t n_keys, int64_t n_rows, const float* row_max, const float* log_sum) {
  for (int64_t r = 0; r < n_rows; r += 8) {
    const __m256i m = tail_mask(n_rows - r);
    const __m256 top = _mm256_maskload_ps(row_max + r, m), l = _mm256_maskload_ps(log_sum + r, m);
    for (int64_t j = 0; j < n_keys; ++j) {
      float* s = st + j * n_rows + r;
      _mm256_maskstore_ps(s, m, exp256(_mm256_sub_ps(_mm256_sub_ps(_mm256_maskload_ps(s, m), top), l)));
    }
  }
}

// Full 8-element chunks in vectors; a dim that is not a multiple of 8 finishes
// with the scalar reference conversions.
void widen_f16_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t dim, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* in = src + r * src_stride;
    float* out = dst + r * ld;
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8)
      _mm256_storeu_ps(out + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + d))));
    for (; d < dim; ++d) out[d] = fp16_to_fp32(in[d]);
  }
}

void widen_bf16_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t dim, float* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* in = src + r * src_stride;
    float* out = dst + r * ld;
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) {
      const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + d)));
      _mm256_storeu_ps(out + d, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
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
    const __m256 scale_v = _mm256_set1_ps(scale);
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) {
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(in + d));
      _mm256_storeu_ps(out + d, _mm256_mul_ps(scale_v, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))));
    }
    for (; d < dim; ++d) out[d] = scale * static_cast<float>(in[d]);
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

}  // namespace pocketml::avx2
