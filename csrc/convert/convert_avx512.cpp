// AVX-512 conversions, 16 elements per step; the tail runs masked, so there is
// no scalar remainder loop. AVX512-BF16's vcvtneps2bf16 is not used: it flushes
// denormals, and results must match the reference (and torch) bit for bit.
#include <immintrin.h>

#include <cstdint>

#include "convert/convert_kernels.h"

namespace pocketml::avx512 {
namespace {

inline __m256i pack_f32_to_f16(__m512 v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

inline __m512 unpack_f16_to_f32(__m256i h) { return _mm512_cvtph_ps(h); }

inline __m256i pack_f32_to_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i round_bit = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(round_bit, _mm512_set1_epi32(0x7FFF))), 16);
  const __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x0040));
  const __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, quiet_nan));
}

inline __m512 unpack_bf16_to_f32(__m256i b) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

inline __mmask16 tail_mask(size_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << remaining) - 1u);
}

inline __m256i load16(const uint16_t* p, __mmask16 m) { return _mm256_maskz_loadu_epi16(m, p); }
inline void store16(uint16_t* p, __mmask16 m, __m256i v) { _mm256_mask_storeu_epi16(p, m, v); }

void f32_to_f16(const void* src, void* dst, size_t n) {
  const float* in = static_cast<const float*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    store16(out + i, m, pack_f32_to_f16(_mm512_maskz_loadu_ps(m, in + i)));
  }
}

void f16_to_f32(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  float* out = static_cast<float*>(dst);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, m, unpack_f16_to_f32(load16(in + i, m)));
  }
}

void f32_to_bf16(const void* src, void* dst, size_t n) {
  const float* in = static_cast<const float*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    store16(out + i, m, pack_f32_to_bf16(_mm512_maskz_loadu_ps(m, in + i)));
  }
}

void bf16_to_f32(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  float* out = static_cast<float*>(dst);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, m, unpack_bf16_to_f32(load16(in + i, m)));
  }
}

void f16_to_bf16(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    store16(out + i, m, pack_f32_to_bf16(unpack_f16_to_f32(load16(in + i, m))));
  }
}

void bf16_to_f16(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    store16(out + i, m, pack_f32_to_f16(unpack_bf16_to_f32(load16(in + i, m))));
  }
}

}  // namespace

const ConvertKernels convert_kernels = {f32_to_f16, f16_to_f32, f32_to_bf16, bf16_to_f32, f16_to_bf16, bf16_to_f16};

}  // namespace pocketml::avx512
