// NEON conversions, 8 elements per step (two float32x4 halves); the tail uses
// the scalar reference. Only ARMv8.0 instructions: FCVTN/FCVTL convert fp16
// with round-to-nearest-even and quiet NaNs exactly as the reference does
// (FPCR.DN is off on Linux and macOS), and bf16 rounding is done on integers
// because BFCVT needs FEAT_BF16.
#include <arm_neon.h>

#include <cstdint>

#include "convert/convert_kernels.h"
#include "runtime/half.h"

namespace pocketml::neon {
namespace {

inline uint16x4_t f32_to_bf16_bits(float32x4_t v) {
  const uint32x4_t bits = vreinterpretq_u32_f32(v);
  const uint32x4_t round_bit = vandq_u32(vshrq_n_u32(bits, 16), vdupq_n_u32(1));
  const uint32x4_t rounded = vshrq_n_u32(vaddq_u32(bits, vaddq_u32(round_bit, vdupq_n_u32(0x7FFF))), 16);
  const uint32x4_t quiet_nan = vorrq_u32(vshrq_n_u32(bits, 16), vdupq_n_u32(0x0040));
  const uint32x4_t is_number = vceqq_f32(v, v);  // false only for NaN
  return vmovn_u32(vbslq_u32(is_number, rounded, quiet_nan));
}

inline float32x4_t bf16_bits_to_f32(uint16x4_t b) { return vreinterpretq_f32_u32(vshll_n_u16(b, 16)); }

inline uint16x4_t f32_to_f16_bits(float32x4_t v) { return vreinterpret_u16_f16(vcvt_f16_f32(v)); }

inline float32x4_t f16_bits_to_f32(uint16x4_t h) { return vcvt_f32_f16(vreinterpret_f16_u16(h)); }

void f32_to_f16(const void* src, void* dst, size_t n) {
  const float* in = static_cast<const float*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    vst1q_u16(out + i, vcombine_u16(f32_to_f16_bits(vld1q_f32(in + i)), f32_to_f16_bits(vld1q_f32(in + i + 4))));
  for (; i < n; ++i) out[i] = fp32_to_fp16(in[i]);
}

void f16_to_f32(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  float* out = static_cast<float*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x8_t h = vld1q_u16(in + i);
    vst1q_f32(out + i, f16_bits_to_f32(vget_low_u16(h)));
    vst1q_f32(out + i + 4, f16_bits_to_f32(vget_high_u16(h)));
  }
  for (; i < n; ++i) out[i] = fp16_to_fp32(in[i]);
}

void f32_to_bf16(const void* src, void* dst, size_t n) {
  const float* in = static_cast<const float*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    vst1q_u16(out + i, vcombine_u16(f32_to_bf16_bits(vld1q_f32(in + i)), f32_to_bf16_bits(vld1q_f32(in + i + 4))));
  for (; i < n; ++i) out[i] = fp32_to_bf16(in[i]);
}

void bf16_to_f32(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  float* out = static_cast<float*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x8_t b = vld1q_u16(in + i);
    vst1q_f32(out + i, bf16_bits_to_f32(vget_low_u16(b)));
    vst1q_f32(out + i + 4, bf16_bits_to_f32(vget_high_u16(b)));
  }
  for (; i < n; ++i) out[i] = bf16_to_fp32(in[i]);
}

void f16_to_bf16(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x8_t h = vld1q_u16(in + i);
    vst1q_u16(out + i, vcombine_u16(f32_to_bf16_bits(f16_bits_to_f32(vget_low_u16(h))),
                                    f32_to_bf16_bits(f16_bits_to_f32(vget_high_u16(h)))));
  }
  for (; i < n; ++i) out[i] = fp32_to_bf16(fp16_to_fp32(in[i]));
}

void bf16_to_f16(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x8_t b = vld1q_u16(in + i);
    vst1q_u16(out + i, vcombine_u16(f32_to_f16_bits(bf16_bits_to_f32(vget_low_u16(b))),
                                    f32_to_f16_bits(bf16_bits_to_f32(vget_high_u16(b)))));
  }
  for (; i < n; ++i) out[i] = fp32_to_fp16(bf16_to_fp32(in[i]));
}

}  // namespace

const ConvertKernels convert_kernels = {f32_to_f16, f16_to_f32, f32_to_bf16, bf16_to_f32, f16_to_bf16, bf16_to_f16};

}  // namespace pocketml::neon
