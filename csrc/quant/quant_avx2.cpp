// AVX2 quantized-matmul kernels: 8 codes per register. A bit plane is one
// masked load; vpermd + vpsrlvd put each code in its own 32-bit lane, then
// the affine value is (float(code) - zero) * scale, the LUT value a register
// permute (<= 3 bits) or a gather.
#include <immintrin.h>

#include "quant/plane_lanes.h"
#include "quant/quant_kernels.h"

namespace pocketml::avx2 {
namespace {

inline __m256i word_mask(int words) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(words), lane);
}

// Codes 8q .. 8q + 7 of a chunk, one per 32-bit lane.
template <int Bits>
inline __m256i chunk_codes(const uint8_t* chunk, int q) {
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
    code = _mm256_or_si256(code, _mm256_slli_epi32(field, low_bit));
    low_bit += width;
    chunk += 4 * width;
  }
  return code;
}

template <int Bits>
void decode_affine(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out) {
  const uint8_t* packed_row = w.packed + row * w.row_bytes;
  constexpr int chunk_bytes = 4 * Bits;
  for (int64_t c = chunk_begin; c < chunk_end; ++c, out += kCodesPerChunk) {
    const uint8_t* chunk = packed_row + c * chunk_bytes;
    float scale, zero;
    chunk_affine_params(w, row, c, &scale, &zero);
    const __m256 s = _mm256_set1_ps(scale), z = _mm256_set1_ps(zero);
    for (int q = 0; q < 4; ++q) {
      const __m256 code = _mm256_cvtepi32_ps(chunk_codes<Bits>(chunk, q));
      _mm256_storeu_ps(out + 8 * q, _mm256_mul_ps(_mm256_sub_ps(code, z), s));
    }
  }
}

template <int Bits>
void decode_lut(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out) {
  const uint8_t* packed_row = w.packed + row * w.row_bytes;
  constexpr int chunk_bytes = 4 * Bits;
  const float* lut = row_lut(w, row);
  constexpr int entries = 1 << Bits;
  const __m256 lut8 = _mm256_maskload_ps(lut, word_mask(entries));
  for (int64_t c = chunk_begin; c < chunk_end; ++c, out += kCodesPerChunk) {
    const uint8_t* chunk = packed_row + c * chunk_bytes;
    for (int q = 0; q < 4; ++q) {
      const __m256i code = chunk_codes<Bits>(chunk, q);
      const __m256 value = entries <= 8 ? _mm256_permutevar8x32_ps(lut8, code) : _mm256_i32gather_ps(lut, code, 4);
      _mm256_storeu_ps(out + 8 * q, value);
    }
  }
}

template <template <int> class Decoder>
void decode_with_bits(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out) {
  switch (w.bits) {
    case 1: Decoder<1>::run(w, row, chunk_begin, chunk_end, out); break;
    case 2: Decoder<2>::run(w, row, chunk_begin, chunk_end, out); break;
    case 3: Decoder<3>::run(w, row, chunk_begin, chunk_end, out); break;
    case 4: Decoder<4>::run(w, row, chunk_begin, chunk_end, out); break;
    case 5: Decoder<5>::run(w, row, chunk_begin, chunk_end, out); break;
    case 6: Decoder<6>::run(w, row, chunk_begin, chunk_end, out); break;
    default: Decoder<8>::run(w, row, chunk_begin, chunk_end, out); break;
  }
}

template <int Bits>
struct AffineDecoder {
  static void run(const PackedWeights& w, int64_t row, int64_t b, int64_t e, float* out) { decode_affine<Bits>(w, row, b, e, out); }
};

template <int Bits>
struct LutDecoder {
  static void run(const PackedWeights& w, int64_t row, int64_t b, int64_t e, float* out) { decode_lut<Bits>(w, row, b, e, out); }
};

// Bits become a template argument here so plane loops and masks are constants.
void decode_row(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out) {
  if (w.kind == QuantKind::lut) {
    decode_with_bits<LutDecoder>(w, row, chunk_begin, chunk_end, out);
  } else {
    decode_with_bits<AffineDecoder>(w, row, chunk_begin, chunk_end, out);
  }
}

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
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

template <int M>
void dot_rows(const float* x, int64_t ldx, const float* w, int64_t ldw, int n, int64_t k, float* c, int64_t ldc) {
  switch (n) {
    case 1: dot_block<M, 1>(x, ldx, w, ldw, k, c, ldc); break;
    case 2: dot_block<M, 2>(x, ldx, w, ldw, k, c, ldc); break;
    case 3: dot_block<M, 3>(x, ldx, w, ldw, k, c, ldc); break;
    default: dot_block<M, 4>(x, ldx, w, ldw, k, c, ldc); break;
  }
}

void dot_tile(const float* x, int64_t ldx, int m, const float* w, int64_t ldw, int n, int64_t k, float* c,
              int64_t ldc) {
  switch (m) {
    case 1: dot_rows<1>(x, ldx, w, ldw, n, k, c, ldc); break;
    case 2: dot_rows<2>(x, ldx, w, ldw, n, k, c, ldc); break;
    case 3: dot_rows<3>(x, ldx, w, ldw, n, k, c, ldc); break;
    default: dot_rows<4>(x, ldx, w, ldw, n, k, c, ldc); break;
  }
}

}  // namespace

const QuantKernels quant_kernels = {decode_row, dot_tile, nullptr};

}  // namespace pocketml::avx2
