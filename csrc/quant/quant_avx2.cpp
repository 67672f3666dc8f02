// AVX2 quantized-matmul kernels: 8 codes per register. A bit plane is one
// masked load; vpermd + vpsrlvd put each code in its own 32-bit lane (byte-
// aligned 4- and 8-bit planes just widen bytes to lanes). The affine value is
// (float(code) - zero) * scale, the LUT value a register permute (<= 3 bits),
// two permutes and a blend (4 bits) or a gather: every value the documented
// one bit for bit, as in the reference.
#include <immintrin.h>

#include "quant/plane_lanes.h"
#include "quant/prefetch.h"
#include "quant/quant_kernels.h"

namespace pocketml::avx2 {
namespace {

inline __m256i word_mask(int words) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(words), lane);
}

inline __m256i widen_8_bytes(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// Codes 8q .. 8q + 7 of a chunk, one per 32-bit lane.
template <int Bits>
inline __m256i chunk_codes(const uint8_t* chunk, int q) {
  if constexpr (Bits == 8) {
    return widen_8_bytes(chunk + 8 * q);
  } else if constexpr (Bits == 4) {
    const __m256i bytes = widen_8_bytes(chunk + 8 * (q & 1));
    return q < 2 ? _mm256_and_si256(bytes, _mm256_set1_epi32(15)) : _mm256_srli_epi32(bytes, 4);
  }
  constexpr PlaneLayout planes = plane_layout(Bits);
  __m256i code = _mm256_setzero_si256();
  int low_bit = 0;
  for (int p = 0; p < planes.count; ++p) {
    const int width = planes.width[p];
    const int slot = plane_slot(width);
    const __m256i words = _mm256_maskload_epi32(reinterpret_cast<const int*>(chunk), word_mask(width));
    const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPlaneLanes.word[slot] + 8 * q));
    const __m256i shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPlaneLanes.shift[slot] + 8 * q));
    __m256i field = _mm256_srlv_epi32(_mm256_permutevar8x32_epi32(words, index), shift);
    field = _mm256_and_si256(field, _mm256_set1_epi32((1 << width) - 1));
    code = p == 0 ? field : _mm256_or_si256(code, _mm256_slli_epi32(field, low_bit));
    low_bit += width;
    chunk += 4 * width;
  }
  return code;
}

inline float load_scale_f16c(const void* scales, DType dtype, int64_t index) {
  if (dtype == DType::f16) return _cvtsh_ss(static_cast<const uint16_t*>(scales)[index]);
  return load_scale(scales, dtype, index);
}

template <int Bits>
struct AffineValues {
  __m256 scale = _mm256_setzero_ps(), zero = _mm256_setzero_ps();

  void start_group(const PackedWeights& w, int64_t group) {
    scale = _mm256_set1_ps(load_scale_f16c(w.scales, w.scale_dtype, group));
    zero = _mm256_set1_ps(static_cast<float>(w.zero_points ? w.zero_points[group] : w.symmetric_zero_point()));
  }
  void start_row(const PackedWeights&, int64_t) {}

  __m256 operator()(const uint8_t* chunk, int q) const {
    return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(chunk_codes<Bits>(chunk, q)), zero), scale);
  }
};

template <int Bits>
struct LutValues {
  const float* lut = nullptr;
  __m256 low = _mm256_setzero_ps(), high = _mm256_setzero_ps();  // entries 0..7 and 8..15 (up to 4 bits)

  void start_row(const PackedWeights& w, int64_t row) {
    lut = row_lut(w, row);
    if (Bits <= 3) low = _mm256_maskload_ps(lut, word_mask(1 << Bits));
    if (Bits == 4) {
      low = _mm256_loadu_ps(lut);
      high = _mm256_loadu_ps(lut + 8);
    }
  }
  void start_group(const PackedWeights&, int64_t) {}

  __m256 operator()(const uint8_t* chunk, int q) const {
    const __m256i code = chunk_codes<Bits>(chunk, q);
    if (Bits <= 3) return _mm256_permutevar8x32_ps(low, code);
    if (Bits == 4) {  // two 8-entry permutes; bit 3 of the code, moved to the sign bit, picks one
      const __m256 pick_high = _mm256_castsi256_ps(_mm256_slli_epi32(code, 28));
      return _mm256_blendv_ps(_mm256_permutevar8x32_ps(low, code), _mm256_permutevar8x32_ps(high, code), pick_high);
    }
    return _mm256_i32gather_ps(lut, code, 4);
  }
};

template <class Values>
void decode(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out) {
  const int64_t group_chunks = chunks_per_group(w, chunks_per_row(w.cols));
  const uint8_t* packed_row = w.packed + row * w.row_bytes;
  const int64_t first_group = first_group_of_row(w, row);
  Values values;
  values.start_row(w, row);
  for (int64_t c = chunk_begin; c < chunk_end; ++c, out += kCodesPerChunk) {
    if (c == chunk_begin || c % group_chunks == 0) values.start_group(w, first_group + c / group_chunks);
    const uint8_t* chunk = packed_row + c * 4 * w.bits;
    for (int q = 0; q < 4; ++q) _mm256_storeu_ps(out + 8 * q, values(chunk, q));
  }
}

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// R weight rows at once against M activation rows: each x vector is loaded once
// for R rows, and R * M * Chains independent FMA chains hide the FMA latency
// within AVX2's 16 registers.
template <class Values, int M, int R>
void gemv_rows_at(const PackedWeights& w, int64_t row, const float* x, int64_t ldx, int m, float* y, int64_t ldy) {
  constexpr int Chains = M <= 2 ? 2 : 1;
  const int64_t chunks = chunks_per_row(w.cols);
  const int64_t group_chunks = chunks_per_group(w, chunks);
  const int64_t chunk_bytes = 4 * w.bits;
  const uint8_t* chunk[R];
  Values values[R];
  __m256 acc[R][M][Chains];
  for (int r = 0; r < R; ++r) {
    chunk[r] = w.packed + (row + r) * w.row_bytes;
    values[r].start_row(w, row + r);
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < Chains; ++j) acc[r][i][j] = _mm256_setzero_ps();
  }
  if (w.kind == QuantKind::affine) prefetch_group_params(w, row + 2 * R, R);
  int64_t group = 0;
  for (int64_t c0 = 0; c0 < chunks; c0 += group_chunks, ++group) {
    for (int r = 0; r < R; ++r) values[r].start_group(w, first_group_of_row(w, row + r) + group);
    const int64_t c1 = c0 + group_chunks < chunks ? c0 + group_chunks : chunks;
    for (int64_t c = c0; c < c1; ++c) {
      const float* xc = x + c * kCodesPerChunk;
      // Rows are short streams the hardware prefetcher picks up late: fetch the
      // same place two steps of R rows ahead.
      for (int r = 0; r < R; ++r) prefetch_line(chunk[r] + 2 * R * w.row_bytes);
      for (int q = 0; q < 4; ++q) {
        for (int r = 0; r < R; ++r) {
          const __m256 v = values[r](chunk[r], q);
          for (int i = 0; i < M; ++i)
            acc[r][i][q % Chains] = _mm256_fmadd_ps(_mm256_loadu_ps(xc + i * ldx + 8 * q), v, acc[r][i][q % Chains]);
        }
      }
      for (int r = 0; r < R; ++r) chunk[r] += chunk_bytes;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < M; ++i)
      if (i < m) y[i * ldy + row + r] = horizontal_sum(Chains == 2 ? _mm256_add_ps(acc[r][i][0], acc[r][i][Chains - 1])
                                                                   : acc[r][i][0]);
}

// Rows in steps of R (2 for M <= 2, else 1: at most 8 accumulators in 16 registers).
template <class Values, int M>
void gemv(const PackedWeights& w, int64_t row_begin, int64_t row_end, const float* x, int64_t ldx, int m, float* y,
          int64_t ldy) {
  constexpr int R = M <= 2 ? 2 : 1;
  int64_t row = row_begin;
  for (; row + R <= row_end; row += R) gemv_rows_at<Values, M, R>(w, row, x, ldx, m, y, ldy);
  for (; row < row_end; ++row) gemv_rows_at<Values, M, 1>(w, row, x, ldx, m, y, ldy);
}


// An M x N block of dot products over k, M * N accumulators of 8 lanes.
template <int M, int N>
void dot_block(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t k, float* c, int64_t ldc) {
  __m256 acc[M][N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t t = 0; t < k; t += 8) {
    __m256 wv[N];
    for (int j = 0; j < N; ++j) wv[j] = _mm256_loadu_ps(w + j * ldw + t);
    for (int i = 0; i < M; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + t);
      for (int j = 0; j < N; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) c[i * ldc + j] += horizontal_sum(acc[i][j]);
}

#include "quant/quant_switchboard-inl.h"

}  // namespace

const QuantKernels quant_kernels = {decode_row, dot_tile, gemv_any, nullptr, nullptr, nullptr, nullptr};

}  // namespace pocketml::avx2
