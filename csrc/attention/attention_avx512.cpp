// AVX-512 attention tiles: 16 fp32 lanes, register-blocked GEMM of 6 rows x
// 64 columns (24 accumulators + 4 B vectors + 1 broadcast of 32 registers),
// and a vector exp for the online softmax. Tails are masked, not looped.
#include <immintrin.h>

#include <cstdint>

#include "attention/attention_kernels.h"

// GCC 12's avx512fintrin.h seeds masked intrinsics with _mm512_undefined_ps(),
// which -Wmaybe-uninitialized reports once inlined (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace pocketml::avx512 {
namespace {

#include "attention/attention_tile_picker-inl.h"
#include "runtime/lane_sums_avx512-inl.h"

constexpr int kRows = 6;
constexpr int64_t kDepth = 64;
constexpr int kVectors = 4;

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << remaining) - 1u);
}

// exp(x) = 2^n * e^r with n = round(x / ln 2), |r| <= ln(2) / 2, e^r by its
// degree-7 Taylor polynomial (relative error < 2e-8 on that interval).
// vscalefps applies 2^n with correct underflow to 0; the clamp keeps -inf
// (masked scores) from turning into NaN in r. NaN inputs stay NaN.
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
  x = _mm512_min_ps(_mm512_set1_ps(88.8f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

template <int ROWS, int NV>
void gemm_tile(int64_t K, const float* a, int64_t a_row_stride, int64_t a_col_stride, const float* b, int64_t ldb,
               float* c, int64_t ldc, __mmask16 last) {
  __m512 acc[ROWS][NV];
  #pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, c + r * ldc + 16 * v);
  for (int64_t k = 0; k < K; ++k) {
    __m512 bv[NV];
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, b + k * ldb + 16 * v);
    const float* a_k = a + k * a_col_stride;
    #pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const __m512 av = _mm512_set1_ps(a_k[r * a_row_stride]);
      #pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(c + r * ldc + 16 * v, v == NV - 1 ? last : 0xFFFF, acc[r][v]);
}

template <int ROWS, int NV>
struct GemmTile {
  static constexpr auto run = gemm_tile<ROWS, NV>;
};

void gemm_slice(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row_stride, int64_t a_col_stride,
                const float* b, int64_t ldb, float* c, int64_t ldc) {
  for (int64_t n0 = 0; n0 < N; n0 += 16 * kVectors) {
    const int64_t width = N - n0 < 16 * kVectors ? N - n0 : 16 * kVectors;
    const int nv = static_cast<int>((width + 15) / 16);
    const __mmask16 last = tail_mask(width - 16 * (nv - 1));
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

// Sums of 16-lane partial products; only a K that is not a multiple of 16 pays
// for masked loads.
void dot_rows(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
              int64_t c_row_stride, int64_t c_col_stride) {
  const int64_t full = K / 16 * 16;
  const __mmask16 tail = tail_mask(K - full);
  for (int64_t m = 0; m < M; ++m) {
    const float* a_row = a + m * lda;
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {
      const float* b0 = b + n * ldb;
      const float* b1 = b0 + ldb;
      const float* b2 = b1 + ldb;
      const float* b3 = b2 + ldb;
      __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
      for (int64_t k = 0; k < full; k += 16) {
        const __m512 av = _mm512_loadu_ps(a_row + k);
        s0 = _mm512_fmadd_ps(av, _mm512_loadu_ps(b0 + k), s0);
        s1 = _mm512_fmadd_ps(av, _mm512_loadu_ps(b1 + k), s1);
        s2 = _mm512_fmadd_ps(av, _mm512_loadu_ps(b2 + k), s2);
        s3 = _mm512_fmadd_ps(av, _mm512_loadu_ps(b3 + k), s3);
      }
      if (full < K) {
        const __m512 av = _mm512_maskz_loadu_ps(tail, a_row + full);
        s0 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(tail, b0 + full), s0);
        s1 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(tail, b1 + full), s1);
        s2 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(tail, b2 + full), s2);
        s3 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(tail, b3 + full), s3);
      }
      c[m * c_row_stride + n * c_col_stride] = _mm512_reduce_add_ps(s0);
      c[m * c_row_stride + (n + 1) * c_col_stride] = _mm512_reduce_add_ps(s1);
      c[m * c_row_stride + (n + 2) * c_col_stride] = _mm512_reduce_add_ps(s2);
      c[m * c_row_stride + (n + 3) * c_col_stride] = _mm512_reduce_add_ps(s3);
    }
    for (; n < N; ++n) {
      __m512 s0 = _mm512_setzero_ps();
      for (int64_t k = 0; k < full; k += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a_row + k), _mm512_loadu_ps(b + n * ldb + k), s0);
      if (full < K)
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, a_row + full), _mm512_maskz_loadu_ps(tail, b + n * ldb + full),
                             s0);
      c[m * c_row_stride + n * c_col_stride] = _mm512_reduce_add_ps(s0);
    }
  }
}

void softmax_update(float* st, int64_t n_keys, int64_t n_rows, float* row_max, float* row_sum, float* rescale) {
  const __m512 minus_inf = _mm512_set1_ps(-__builtin_inff());
  for (int64_t r = 0; r < n_rows; r += 16) {
    const __mmask16 m = tail_mask(n_rows - r);
    const __m512 old_max = _mm512_mask_loadu_ps(minus_inf, m, row_max + r);
    __m512 new_max = old_max;
    for (int64_t j = 0; j < n_keys; ++j)
      new_max = _mm512_max_ps(new_max, _mm512_mask_loadu_ps(minus_inf, m, st + j * n_rows + r));
    // Rows still at -inf are fully masked so far: take exp against 0.
    const __m512 reference = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(new_max, minus_inf, _CMP_EQ_OQ), new_max,
                                                  _mm512_setzero_ps());
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n_keys; ++j) {
      float* s = st + j * n_rows + r;
      const __m512 p = exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(minus_inf, m, s), reference));
      _mm512_mask_storeu_ps(s, m, p);
      sum = _mm512_add_ps(sum, p);
    }
    const __m512 c = exp512(_mm512_sub_ps(old_max, reference));
    _mm512_mask_storeu_ps(rescale + r, m, c);
    _mm512_mask_storeu_ps(row_sum + r, m, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, row_sum + r), c, sum));
    _mm512_mask_storeu_ps(row_max + r, m, new_max);
  }
}

void softmax_update_rows(float* s, int64_t n_rows, int64_t n_keys, float* row_max, float* row_sum, float* rescale) {
  const __m512 minus_inf = _mm512_set1_ps(-__builtin_inff());
  for (int64_t r = 0; r < n_rows; ++r) {
    float* row = s + r * n_keys;
    __m512 m = minus_inf;
    for (int64_t j = 0; j < n_keys; j += 16)
      m = _mm512_max_ps(m, _mm512_mask_loadu_ps(minus_inf, tail_mask(n_keys - j), row + j));
    const float new_max = __builtin_fmaxf(row_max[r], _mm512_reduce_max_ps(m));
    // A row still at -inf is fully masked so far: take exp against 0.
    const float reference = new_max == -__builtin_inff() ? 0.0f : new_max;
    const __m512 ref = _mm512_set1_ps(reference);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n_keys; j += 16) {
      const __mmask16 mk = tail_mask(n_keys - j);
      const __m512 p = exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(minus_inf, mk, row + j), ref));
      _mm512_mask_storeu_ps(row + j, mk, p);
      sum = _mm512_add_ps(sum, p);
    }
    const float c = _mm512_cvtss_f32(exp512(_mm512_set1_ps(row_max[r] - reference)));
    rescale[r] = c;
    row_sum[r] = row_sum[r] * c + _mm512_reduce_add_ps(sum);
    row_max[r] = new_max;
  }
}

void scale_rows(float* acc, int64_t rows, int64_t dim, const float* rescale) {
  for (int64_t r = 0; r < rows; ++r) {
    if (rescale[r] == 1.0f) continue;
    const __m512 c = _mm512_set1_ps(rescale[r]);
    float* row = acc + r * dim;
    for (int64_t d = 0; d < dim; d += 16) {
      const __mmask16 m = tail_mask(dim - d);
      _mm512_mask_storeu_ps(row + d, m, _mm512_mul_ps(c, _mm512_maskz_loadu_ps(m, row + d)));
    }
  }
}

void exp_minus_lse(float* st, int64_t n_keys, int64_t n_rows, const float* row_max, const float* log_sum) {
  for (int64_t r = 0; r < n_rows; r += 16) {
    const __mmask16 m = tail_mask(n_rows - r);
    const __m512 top = _mm512_maskz_loadu_ps(m, row_max + r), l = _mm512_maskz_loadu_ps(m, log_sum + r);
    for (int64_t j = 0; j < n_keys; ++j) {
      float* s = st + j * n_rows + r;
      _mm512_mask_storeu_ps(s, m, exp512(_mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s), top), l)));
    }
  }
}

// Full 16-element chunks run unmasked; only a dim that is not a multiple of 16
// pays for a masked tail.
void widen_f16_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t dim, float* dst, int64_t ld) {
  const __mmask16 tail = tail_mask(dim % 16);
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* in = src + r * src_stride;
    float* out = dst + r * ld;
    int64_t d = 0;
    for (; d + 16 <= dim; d += 16)
      _mm512_storeu_ps(out + d, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + d))));
    if (d < dim) _mm512_mask_storeu_ps(out + d, tail, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, in + d)));
  }
}

inline __m512 bf16_to_f32(__m256i b) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)); }

void widen_bf16_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t dim, float* dst, int64_t ld) {
  const __mmask16 tail = tail_mask(dim % 16);
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* in = src + r * src_stride;
    float* out = dst + r * ld;
    int64_t d = 0;
    for (; d + 16 <= dim; d += 16)
      _mm512_storeu_ps(out + d, bf16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + d))));
    if (d < dim) _mm512_mask_storeu_ps(out + d, tail, bf16_to_f32(_mm256_maskz_loadu_epi16(tail, in + d)));
  }
}

void widen_int8_rows(const int8_t* src, int64_t src_stride, const float* scales, int64_t scale_stride, int64_t rows,
                     int64_t dim, float* dst, int64_t ld) {
  const __mmask16 tail = tail_mask(dim % 16);
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* in = src + r * src_stride;
    float* out = dst + r * ld;
    const __m512 scale = _mm512_set1_ps(scales[r * scale_stride]);
    int64_t d = 0;
    for (; d + 16 <= dim; d += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + d));
      _mm512_storeu_ps(out + d, _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))));
    }
    if (d < dim) {
      const __m128i bytes = _mm_maskz_loadu_epi8(tail, in + d);
      _mm512_mask_storeu_ps(out + d, tail, _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))));
    }
  }
}

// --- decode: K / V rows straight from the cache ----------------------------
//
// Every K / V element of a tile is loaded and converted once whatever the
// number of query rows: rows go through register blocks of a compile-time size
// (1, 2, 4 or 8), so every accumulator stays in a register.

// 16 elements of a cache row as fp32 (int8 without its scale).
template <DType kType>
inline __m512 load_row16(const void* row, int64_t d, __mmask16 m) {
  if constexpr (kType == DType::f32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + d);
  } else if constexpr (kType == DType::f16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + d));
  } else if constexpr (kType == DType::bf16) {
    return bf16_to_f32(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + d));
  } else {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, static_cast<const int8_t*>(row) + d)));
  }
}

// The same without a mask: a plain load the conversion can take as its memory operand.
template <DType kType>
inline __m512 load_row16(const void* row, int64_t d) {
  if constexpr (kType == DType::f32) {
    return _mm512_loadu_ps(static_cast<const float*>(row) + d);
  } else if constexpr (kType == DType::f16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + d)));
  } else if constexpr (kType == DType::bf16) {
    return bf16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + d)));
  } else {
    return _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(row) + d))));
  }
}

// The storage type of a cache element.
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
inline const void* cache_row(const void* base, int64_t j, int64_t stride) {
  return static_cast<const typename CacheElement<kType>::type*>(base) + j * stride;
}

// The rows `ahead` rows past rows j .. j + count of a cache operand (see
// prefetch_decode_row). Always inlined, like the prefetch helpers: GCC 12 -O3
// takes an out-of-line function that only prefetches for pure and deletes its
// calls. That once dropped every prefetch of this file (decode from DRAM lost
// half its speed); `objdump -d | grep -c prefetchnta` on the object shows it.
template <DType kType>
[[gnu::always_inline]] inline void prefetch_ahead(const void* base, int64_t j, int64_t count, int64_t stride,
                                                  int64_t ahead, int64_t dim) {
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(typename CacheElement<kType>::type));
  for (int64_t i = 0; i < count; ++i) prefetch_decode_row(cache_row<kType>(base, j + ahead + i, stride), row_bytes);
}

template <DType kType>
inline int64_t prefetch_rows_ahead(int64_t dim) {
  return decode_prefetch_distance(dim * static_cast<int64_t>(sizeof(typename CacheElement<kType>::type)));
}

// The scales of keys 0 .. nk - 1 (zero beyond), lane l holding key l % KEYS.
template <int KEYS>
inline __m512 key_scales(const float* scales, int64_t stride, int nk) {
  __m512 s;
  if (stride == 1) {
    s = _mm512_maskz_loadu_ps(tail_mask(nk), scales);
  } else {
    alignas(64) float gathered[16] = {};
    for (int i = 0; i < nk; ++i) gathered[i] = scales[i * stride];
    s = _mm512_load_ps(gathered);
  }
  if constexpr (KEYS == 16) return s;
  const __m512i key = _mm512_and_si512(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                       _mm512_set1_epi32(KEYS - 1));
  return _mm512_permutexvar_ps(key, s);
}

// Scores of ROWS (2 or 4) query rows against KEYS = 16 / ROWS keys at a time: one
// accumulator per (row, key), so each K vector is converted once for all rows
// and one sum_lanes16 finishes all 16 dot products (lane r * KEYS + i: row r, key i).
template <DType kType, int ROWS, bool kWholeVectors>
void decode_scores_block(int64_t keys, int64_t dim, int64_t ahead, const float* q, const void* k, int64_t k_stride,
                         const float* k_scales, int64_t scale_stride, float* scores, int64_t ld) {
  static_assert(ROWS == 2 || ROWS == 4);
  constexpr int KEYS = 16 / ROWS;
  for (int64_t j0 = 0; j0 < keys; j0 += KEYS) {
    const int nk = keys - j0 < KEYS ? static_cast<int>(keys - j0) : KEYS;
    const void* key_rows[KEYS];
#pragma GCC unroll 16
    for (int i = 0; i < KEYS; ++i) key_rows[i] = cache_row<kType>(k, j0 + (i < nk ? i : 0), k_stride);
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d += 16) {
      const __mmask16 m = tail_mask(dim - d);
      __m512 qv[ROWS];
#pragma GCC unroll 8
      for (int r = 0; r < ROWS; ++r)
        qv[r] = kWholeVectors ? _mm512_loadu_ps(q + r * dim + d) : _mm512_maskz_loadu_ps(m, q + r * dim + d);
#pragma GCC unroll 16
      for (int i = 0; i < KEYS; ++i) {
        const __m512 kv = kWholeVectors ? load_row16<kType>(key_rows[i], d) : load_row16<kType>(key_rows[i], d, m);
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; ++r) acc[r * KEYS + i] = _mm512_fmadd_ps(qv[r], kv, acc[r * KEYS + i]);
      }
    }
    if (ahead > 0) prefetch_ahead<kType>(k, j0, nk, k_stride, ahead, dim);
    __m512 sums = sum_lanes16(acc);
    if constexpr (kType == DType::i8)
      sums = _mm512_mul_ps(sums, key_scales<KEYS>(k_scales + j0 * scale_stride, scale_stride, nk));
    if constexpr (ROWS == 2) {
      const __mmask8 m = static_cast<__mmask8>(tail_mask(nk));
      _mm256_mask_storeu_ps(scores + j0, m, _mm512_castps512_ps256(sums));
      _mm256_mask_storeu_ps(scores + ld + j0, m, _mm512_extractf32x8_ps(sums, 1));
    } else {
      const __mmask8 m = static_cast<__mmask8>(tail_mask(nk));
      _mm_mask_storeu_ps(scores + j0, m, _mm512_castps512_ps128(sums));
      _mm_mask_storeu_ps(scores + ld + j0, m, _mm512_extractf32x4_ps(sums, 1));
      _mm_mask_storeu_ps(scores + 2 * ld + j0, m, _mm512_extractf32x4_ps(sums, 2));
      _mm_mask_storeu_ps(scores + 3 * ld + j0, m, _mm512_extractf32x4_ps(sums, 3));
    }
  }
}

// One query row, columns d0 .. d0 + 16 NV of it (the last vector masked by
// `last` unless kWholeVectors): q's vectors stay in registers and each key's
// dot product runs over them, so a block of 16 keys walks one row pointer. With
// `accumulate` the partial dot products are added to the scores already there
// (dim > 16 NV). A positive `ahead` prefetches that many rows ahead of the keys done.
template <DType kType, int NV, bool kWholeVectors>
void decode_scores_one_row(int64_t keys, int64_t dim, int64_t d0, __mmask16 last, bool accumulate, int64_t ahead,
                           const float* q, const void* k, int64_t k_stride, float* scores) {
  const int64_t row_bytes = k_stride * static_cast<int64_t>(sizeof(typename CacheElement<kType>::type));
  __m512 qv[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) qv[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, q + d0 + 16 * v);
  auto load = [&](const char* row, int v) {
    return kWholeVectors || v < NV - 1 ? load_row16<kType>(row, d0 + 16 * v) : load_row16<kType>(row, d0 + 16 * v, last);
  };
  for (int64_t j0 = 0; j0 < keys; j0 += 16) {
    const int nk = keys - j0 < 16 ? static_cast<int>(keys - j0) : 16;
    const char* row = static_cast<const char*>(cache_row<kType>(k, j0, k_stride));
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      acc[i] = _mm512_mul_ps(qv[0], load(row, 0));
#pragma GCC unroll 8
      for (int v = 1; v < NV; ++v) acc[i] = _mm512_fmadd_ps(qv[v], load(row, v), acc[i]);
      // One row's prefetch per key, not the block's 16 at its end: a burst of
      // 64 line requests (fp16, D = 128) read 4-6% slower from DRAM (MHA fp16,
      // in-process A/B, 1 and 2 threads; int8 equal). The 4-row block keeps
      // its requests at the end (spread there: GQA fp16 1-5% slower).
      if (ahead > 0 && i < nk) prefetch_ahead<kType>(k, j0 + i, 1, k_stride, ahead, dim);
      if (i + 1 < nk) row += row_bytes;  // keys past the last repeat it
      // One pointer stepped row by row: left to itself GCC keeps a pointer per
      // (key, column) of the block, 16 NV of them spilled to the stack and
      // reloaded for every load (2x the time of the FMAs at D = 128).
      asm("" : "+r"(row));
    }
    __m512 sums = sum_lanes16(acc);
    const __mmask16 m = tail_mask(nk);
    if (accumulate) sums = _mm512_add_ps(sums, _mm512_maskz_loadu_ps(m, scores + j0));
    _mm512_mask_storeu_ps(scores + j0, m, sums);
  }
}

// Columns from d0 on in blocks of NV vectors, the remainder in narrower ones.
template <DType kType, int NV>
void decode_scores_one_row_columns(int64_t keys, int64_t dim, int64_t d0, int64_t ahead, const float* q, const void* k,
                                   int64_t k_stride, float* scores) {
  for (; (dim - d0 + 15) / 16 >= NV; d0 += 16 * NV) {
    const int64_t rest = dim - d0 - 16 * (NV - 1);
    if (rest >= 16)
      decode_scores_one_row<kType, NV, true>(keys, dim, d0, 0xFFFF, d0 > 0, d0 > 0 ? 0 : ahead, q, k, k_stride,
                                             scores);
    else
      decode_scores_one_row<kType, NV, false>(keys, dim, d0, tail_mask(rest), d0 > 0, d0 > 0 ? 0 : ahead, q, k,
                                              k_stride, scores);
  }
  if constexpr (NV > 1)
    if (d0 < dim) decode_scores_one_row_columns<kType, NV / 2>(keys, dim, d0, 0, q, k, k_stride, scores);
}

template <DType kType>
void decode_scores_typed(int64_t rows, int64_t keys, int64_t dim, const float* q, const void* k, int64_t k_stride,
                         const float* k_scales, int64_t scale_stride, float* scores) {
  const int64_t ahead = prefetch_rows_ahead<kType>(dim);  // by the first row block only
  if constexpr (kType == DType::i8) prefetch_next_tile_scales(k_scales, scale_stride, keys);
  int64_t r = 0;
  auto block = [&](auto run, int64_t n) {
    run(keys, dim, r == 0 ? ahead : 0, q + r * dim, k, k_stride, k_scales, scale_stride, scores + r * keys, keys);
    r += n;
  };
  // 4-row blocks even for 8 rows and more: an 8-row block has 2 keys per
  // sum_lanes16, and its reductions and scalar stores cost 4x the 4-row block's
  // time per key (97 vs 22 cycles per key and 4 rows at D = 128, Zen 5).
  if (dim % 16 == 0) {
    while (rows - r >= 4) block(decode_scores_block<kType, 4, true>, 4);
    if (rows - r >= 2) block(decode_scores_block<kType, 2, true>, 2);
  } else {
    while (rows - r >= 4) block(decode_scores_block<kType, 4, false>, 4);
    if (rows - r >= 2) block(decode_scores_block<kType, 2, false>, 2);
  }
  if (rows - r >= 1) {
    float* row_scores = scores + r * keys;
    decode_scores_one_row_columns<kType, 8>(keys, dim, 0, r == 0 ? ahead : 0, q + r * dim, k, k_stride, row_scores);
    if constexpr (kType == DType::i8)
      for (int64_t j = 0; j < keys; ++j) row_scores[j] *= k_scales[j * scale_stride];
  }
}

// acc[r][c0 : c0 + 16 NV] += sum_j w[r][j] v[j][c0 : c0 + 16 NV] for ROWS rows
// (w rows `ldw` apart, acc rows `dim` apart); the last vector is masked by
// `last` unless kWholeVectors. Each weight is broadcast straight from memory,
// so the loop holds nothing but the V conversions and the FMAs. A positive
// `ahead` prefetches that many rows ahead of the keys done.
template <DType kType, int ROWS, int NV, bool kWholeVectors>
void decode_accumulate_block(int64_t keys, int64_t dim, int64_t c0, __mmask16 last, int64_t ahead, const float* w,
                             int64_t ldw, const void* v, int64_t v_stride, float* acc) {
  __m512 o[ROWS][NV];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 8
    for (int i = 0; i < NV; ++i)
      o[r][i] = _mm512_maskz_loadu_ps(i == NV - 1 ? last : 0xFFFF, acc + r * dim + c0 + 16 * i);
  for (int64_t j = 0; j < keys; ++j) {
    const void* row = cache_row<kType>(v, j, v_stride);
    if (ahead > 0) prefetch_ahead<kType>(v, j, 1, v_stride, ahead, dim);
    __m512 vv[NV];
#pragma GCC unroll 8
    for (int i = 0; i < NV; ++i)
      vv[i] = kWholeVectors || i < NV - 1 ? load_row16<kType>(row, c0 + 16 * i) : load_row16<kType>(row, c0 + 16 * i, last);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const __m512 pv = _mm512_set1_ps(w[r * ldw + j]);
#pragma GCC unroll 8
      for (int i = 0; i < NV; ++i) o[r][i] = _mm512_fmadd_ps(pv, vv[i], o[r][i]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 8
    for (int i = 0; i < NV; ++i)
      _mm512_mask_storeu_ps(acc + r * dim + c0 + 16 * i, i == NV - 1 ? last : 0xFFFF, o[r][i]);
}

// Columns from c0 on in passes of NV vectors, the remainder in narrower passes,
// so no pass computes on vectors beyond dim.
template <DType kType, int ROWS, int NV>
void decode_accumulate_columns(int64_t keys, int64_t dim, int64_t c0, int64_t ahead, const float* w, int64_t ldw,
                               const void* v, int64_t v_stride, float* acc) {
  for (; (dim - c0 + 15) / 16 >= NV; c0 += 16 * NV) {
    const int64_t rest = dim - c0 - 16 * (NV - 1);
    const int64_t pass_ahead = c0 > 0 ? 0 : ahead;
    if (rest >= 16)
      decode_accumulate_block<kType, ROWS, NV, true>(keys, dim, c0, 0xFFFF, pass_ahead, w, ldw, v, v_stride, acc);
    else
      decode_accumulate_block<kType, ROWS, NV, false>(keys, dim, c0, tail_mask(rest), pass_ahead, w, ldw, v, v_stride,
                                                      acc);
  }
  if constexpr (NV > 1)
    if (c0 < dim) decode_accumulate_columns<kType, ROWS, NV / 2>(keys, dim, c0, 0, w, ldw, v, v_stride, acc);
}

// All `rows` rows of weights w (rows `ldw` apart) against `keys` rows of V, the
// rows in register blocks of 8, 4, 2, 1; the first block prefetches `ahead`.
template <DType kType>
void decode_accumulate_rows(int64_t rows, int64_t keys, int64_t dim, int64_t ahead, const float* w, int64_t ldw,
                            const void* v, int64_t v_stride, float* acc) {
  // At most 16 accumulators (ROWS x NV): with the V vectors they fit the 32 registers.
  int64_t r = 0;
  auto block = [&](auto pass, int64_t count) {
    pass(keys, dim, 0, r == 0 ? ahead : 0, w + r * ldw, ldw, v, v_stride, acc + r * dim);
    r += count;
  };
  while (rows - r >= 8) block(decode_accumulate_columns<kType, 8, 2>, 8);
  if (rows - r >= 4) block(decode_accumulate_columns<kType, 4, 4>, 4);
  if (rows - r >= 2) block(decode_accumulate_columns<kType, 2, 8>, 2);
  if (rows - r >= 1) block(decode_accumulate_columns<kType, 1, 8>, 1);
}

// int8 weights are built for up to 8 rows x 64 keys at a time (a 2 KiB stack tile).
inline constexpr int64_t kWeightRows = 8, kWeightKeys = 64;

template <DType kType>
void decode_accumulate_typed(int64_t rows, int64_t keys, int64_t dim, const float* p, const void* v,
                             int64_t v_stride, const float* v_scales, int64_t scale_stride, float* acc) {
  const int64_t ahead = prefetch_rows_ahead<kType>(dim);
  if constexpr (kType == DType::i8) prefetch_next_tile_scales(v_scales, scale_stride, keys);
  if constexpr (kType != DType::i8) {
    decode_accumulate_rows<kType>(rows, keys, dim, ahead, p, keys, v, v_stride, acc);
  } else {
    // The row's scale joins the probability once per key and row, in vectors,
    // rather than once per key, row and column pass.
    alignas(64) float weights[kWeightRows * kWeightKeys];
    alignas(64) float scales[kWeightKeys];
    for (int64_t j0 = 0; j0 < keys; j0 += kWeightKeys) {
      const int64_t n = keys - j0 < kWeightKeys ? keys - j0 : kWeightKeys;
      const float* tile_scales = v_scales + j0 * scale_stride;
      if (scale_stride != 1) {
        for (int64_t j = 0; j < n; ++j) scales[j] = tile_scales[j * scale_stride];
        tile_scales = scales;
      }
      const void* v0 = cache_row<kType>(v, j0, v_stride);
      for (int64_t r0 = 0; r0 < rows; r0 += kWeightRows) {
        const int64_t block_rows = rows - r0 < kWeightRows ? rows - r0 : kWeightRows;
        for (int64_t r = 0; r < block_rows; ++r)
          for (int64_t j = 0; j < n; j += 16) {
            const __mmask16 m = tail_mask(n - j);
            _mm512_mask_storeu_ps(weights + r * kWeightKeys + j, m,
                                  _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + (r0 + r) * keys + j0 + j),
                                                _mm512_maskz_loadu_ps(m, tile_scales + j)));
          }
        decode_accumulate_rows<kType>(block_rows, n, dim, r0 == 0 ? ahead : 0, weights, kWeightKeys, v0, v_stride,
                                      acc + r0 * dim);
      }
    }
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

// --- AVX512-BF16: two products per lane and instruction --------------------

inline __m512i broadcast_pair(const uint16_t* p) {
  int32_t bits;
  __builtin_memcpy(&bits, p, sizeof(bits));
  return _mm512_set1_epi32(bits);
}

template <int ROWS, int NV>
void gemm_bf16_tile(int64_t pairs, const uint16_t* a, int64_t a_row_stride, int64_t a_pair_stride, const uint16_t* b,
                    int64_t ldb, float* c, int64_t ldc, __mmask16 last) {
  __m512 acc[ROWS][NV];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, c + r * ldc + 16 * v);
  for (int64_t p = 0; p < pairs; ++p) {
    __m512i bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_maskz_loadu_epi32(v == NV - 1 ? last : 0xFFFF, b + p * ldb + 32 * v);
    const uint16_t* a_p = a + p * a_pair_stride;
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const __m512bh av = (__m512bh)broadcast_pair(a_p + r * a_row_stride);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, (__m512bh)bv[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(c + r * ldc + 16 * v, v == NV - 1 ? last : 0xFFFF, acc[r][v]);
}

template <int ROWS, int NV>
struct GemmBf16Tile {
  static constexpr auto run = gemm_bf16_tile<ROWS, NV>;
};

void gemm_bf16_pairs(int64_t M, int64_t N, int64_t pairs, const uint16_t* a, int64_t a_row_stride,
                     int64_t a_pair_stride, const uint16_t* b, int64_t ldb, float* c, int64_t ldc) {
  for (int64_t n0 = 0; n0 < N; n0 += 16 * kVectors) {
    const int64_t width = N - n0 < 16 * kVectors ? N - n0 : 16 * kVectors;
    const int nv = static_cast<int>((width + 15) / 16);
    const __mmask16 last = tail_mask(width - 16 * (nv - 1));
    const auto full = pick_tile<GemmBf16Tile, kVectors>(kRows, nv);
    int64_t m0 = 0;
    for (; m0 + kRows <= M; m0 += kRows)
      full(pairs, a + m0 * a_row_stride, a_row_stride, a_pair_stride, b + 2 * n0, ldb, c + m0 * ldc + n0, ldc, last);
    if (m0 < M) {
      const auto rest = pick_tile<GemmBf16Tile, kVectors>(static_cast<int>(M - m0), nv);
      rest(pairs, a + m0 * a_row_stride, a_row_stride, a_pair_stride, b + 2 * n0, ldb, c + m0 * ldc + n0, ldc, last);
    }
  }
}

// Interleaves the 16-bit lanes of two 16-lane rows: (x0, y0, x1, y1, ...).
inline void store_interleaved(uint16_t* dst, __m256i x, __m256i y, int64_t count) {
  const __m512i idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                       39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i both = _mm512_permutex2var_epi16(_mm512_castsi256_si512(x), idx, _mm512_castsi256_si512(y));
  _mm512_mask_storeu_epi32(dst, tail_mask(count), both);
}

void pair_rows_f32_to_bf16(const float* src, int64_t ld, int64_t rows, int64_t cols, uint16_t* dst) {
  for (int64_t r = 0; r < rows; r += 2) {
    const float* x = src + r * ld;
    const float* y = r + 1 < rows ? x + ld : nullptr;
    uint16_t* out = dst + r * cols;  // pair row r / 2 holds 2 * cols values
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 m = tail_mask(cols - c);
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + c);
      const __m512 yv = y ? _mm512_maskz_loadu_ps(m, y + c) : _mm512_setzero_ps();
      const __m256i xb = (__m256i)_mm512_cvtneps_pbh(xv);
      const __m256i yb = (__m256i)_mm512_cvtneps_pbh(yv);
      store_interleaved(out + 2 * c, xb, yb, cols - c);
    }
  }
}

void pair_rows_bf16(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t cols, uint16_t* dst) {
  for (int64_t r = 0; r < rows; r += 2) {
    const uint16_t* x = src + r * src_stride;
    const uint16_t* y = r + 1 < rows ? x + src_stride : nullptr;
    uint16_t* out = dst + r * cols;
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 m = tail_mask(cols - c);
      const __m256i xv = _mm256_maskz_loadu_epi16(m, x + c);
      const __m256i yv = y ? _mm256_maskz_loadu_epi16(m, y + c) : _mm256_setzero_si256();
      store_interleaved(out + 2 * c, xv, yv, cols - c);
    }
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
    gemm_bf16_pairs,
    pair_rows_f32_to_bf16,
    pair_rows_bf16,
};

}  // namespace pocketml::avx512
