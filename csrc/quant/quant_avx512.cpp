// AVX-512 quantized-matmul kernels: 16 codes per register. A bit plane is one
// masked load; vpermd + vpsrlvd put each code in its own 32-bit lane, then
// the affine value is (float(code) - zero) * scale, the LUT value a register
// permute (<= 4 bits), a two-register permute (6 bits) or a gather (8 bits).
#include <immintrin.h>

#include "quant/plane_lanes.h"
#include "quant/quant_kernels.h"

namespace pocketml::avx512 {
namespace {

// Codes 16h .. 16h + 15 of a chunk, one per 32-bit lane.
template <int Bits>
inline __m512i chunk_codes(const uint8_t* chunk, int h) {
  constexpr PlaneLayout planes = plane_layout(Bits);
  __m512i code = _mm512_setzero_si512();
  int low_bit = 0;
  for (int p = 0; p < planes.count; ++p) {
    const int width = planes.width[p];
    const int slot = plane_slot(width);
    const __m512i words = _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << width) - 1u), chunk);
    const __m512i index = _mm512_load_si512(kPlaneLanes.word[slot] + 16 * h);
    const __m512i shift = _mm512_load_si512(kPlaneLanes.shift[slot] + 16 * h);
    __m512i field = _mm512_srlv_epi32(_mm512_permutexvar_epi32(index, words), shift);
    field = _mm512_and_si512(field, _mm512_set1_epi32((1 << width) - 1));
    code = _mm512_or_si512(code, _mm512_slli_epi32(field, low_bit));
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
    const __m512 s = _mm512_set1_ps(scale), z = _mm512_set1_ps(zero);
    for (int h = 0; h < 2; ++h) {
      const __m512 code = _mm512_cvtepi32_ps(chunk_codes<Bits>(chunk, h));
      _mm512_storeu_ps(out + 16 * h, _mm512_mul_ps(_mm512_sub_ps(code, z), s));
    }
  }
}

template <int Bits>
void decode_lut(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out) {
  const uint8_t* packed_row = w.packed + row * w.row_bytes;
  constexpr int chunk_bytes = 4 * Bits;
  const float* lut = row_lut(w, row);
  constexpr int entries = 1 << Bits;
  const __m512 lut0 = _mm512_maskz_loadu_ps(entries >= 16 ? 0xFFFF : (1u << entries) - 1u, lut);
  const __m512 lut1 = entries >= 32 ? _mm512_loadu_ps(lut + 16) : lut0;
  const __m512 lut2 = entries >= 64 ? _mm512_loadu_ps(lut + 32) : lut0;
  const __m512 lut3 = entries >= 64 ? _mm512_loadu_ps(lut + 48) : lut0;
  for (int64_t c = chunk_begin; c < chunk_end; ++c, out += kCodesPerChunk) {
    const uint8_t* chunk = packed_row + c * chunk_bytes;
    for (int h = 0; h < 2; ++h) {
      const __m512i code = chunk_codes<Bits>(chunk, h);
      __m512 value;
      if (entries <= 16) {
        value = _mm512_permutexvar_ps(code, lut0);
      } else if (entries <= 64) {
        const __m512 low = _mm512_permutex2var_ps(lut0, code, lut1);
        const __m512 high = _mm512_permutex2var_ps(lut2, code, lut3);
        const __mmask16 is_high = _mm512_test_epi32_mask(code, _mm512_set1_epi32(32));
        value = _mm512_mask_blend_ps(is_high, low, high);
      } else {
        value = _mm512_i32gather_ps(code, lut, 4);
      }
      _mm512_storeu_ps(out + 16 * h, value);
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

// An M x N block of dot products over k, M * N accumulators of 16 lanes.
template <int M, int N>
void dot_block(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t k, float* c, int64_t ldc) {
  __m512 acc[M][N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t t = 0; t < k; t += 16) {
    __m512 wv[N];
    for (int j = 0; j < N; ++j) wv[j] = _mm512_loadu_ps(w + j * ldw + t);
    for (int i = 0; i < M; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * ldx + t);
      for (int j = 0; j < N; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) c[i * ldc + j] += _mm512_reduce_add_ps(acc[i][j]);
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

const QuantKernels quant_kernels = {decode_row, dot_tile};

}  // namespace pocketml::avx512
