// AVX2 + F16C conversions, 8 elements per step; the tail uses the scalar reference.
#include <immintrin.h>

#include <cstdint>

#include "convert/convert_kernels.h"
#include "runtime/half.h"

namespace pocketml::avx2 {
namespace {

inline __m128i pack_f32_to_f16(__m256 v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

inline __m256 unpack_f16_to_f32(__m128i h) {
  // vcvtph2ps already quiets signalling NaNs like the reference does.
  return _mm256_cvtph_ps(h);
}

inline __m128i pack_f32_to_bf16(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i round_bit = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(round_bit, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x0040));
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m256i result = _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
  // Narrow eight 32-bit lanes (values < 2^16) to 16 bits, keeping order.
  const __m256i packed = _mm256_packus_epi32(result, result);
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

inline __m256 unpack_bf16_to_f32(__m128i b) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
}

inline __m128i load8(const uint16_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline void store8(uint16_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

void f32_to_f16(const void* src, void* dst, size_t n) {
  const float* in = static_cast<const float*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, pack_f32_to_f16(_mm256_loadu_ps(in + i)));
  for (; i < n; ++i) out[i] = fp32_to_fp16(in[i]);
}

void f16_to_f32(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  float* out = static_cast<float*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, unpack_f16_to_f32(load8(in + i)));
  for (; i < n; ++i) out[i] = fp16_to_fp32(in[i]);
}

void f32_to_bf16(const void* src, void* dst, size_t n) {
  const float* in = static_cast<const float*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, pack_f32_to_bf16(_mm256_loadu_ps(in + i)));
  for (; i < n; ++i) out[i] = fp32_to_bf16(in[i]);
}

void bf16_to_f32(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  float* out = static_cast<float*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, unpack_bf16_to_f32(load8(in + i)));
  for (; i < n; ++i) out[i] = bf16_to_fp32(in[i]);
}

void f16_to_bf16(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, pack_f32_to_bf16(unpack_f16_to_f32(load8(in + i))));
  for (; i < n; ++i) out[i] = fp32_to_bf16(fp16_to_fp32(in[i]));
}

void bf16_to_f16(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, pack_f32_to_f16(unpack_bf16_to_f32(load8(in + i))));
  for (; i < n; ++i) out[i] = fp32_to_fp16(bf16_to_fp32(in[i]));
}

}  // namespace

const ConvertKernels convert_kernels = {f32_to_f16, f16_to_f32, f32_to_bf16, bf16_to_f32, f16_to_bf16, bf16_to_f16};

}  // namespace pocketml::avx2
