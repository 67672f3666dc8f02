#pragma once
// Scalar fp16 / bf16 <-> fp32 conversions: the reference every SIMD variant and
// every kernel that reads or writes half-precision values must match bit for bit.
//
// Rounding is to nearest, ties to even. Denormals are converted exactly (never
// flushed). NaN stays NaN: it is quieted and keeps its sign and the payload
// bits that fit, as x86 F16C and ARM FCVT do in hardware.
//
// The functions are `static inline` on purpose: this header is included by
// files compiled with AVX-512 flags, and internal linkage keeps an ISA-specific
// out-of-line copy from being shared with code that must run on any CPU.
#include <cstdint>
#include <cstring>

namespace pocketml {

static inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

static inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

static inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) {
    const uint32_t quiet = mantissa ? 0x00400000u : 0u;
    return bits_float(sign | 0x7F800000u | quiet | (mantissa << 13));
  }
  if (exponent == 0) {
    // Zero or denormal: mantissa * 2^-24 is exact in fp32.
    return bits_float(sign | float_bits(static_cast<float>(mantissa) * 0x1p-24f));
  }
  return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

static inline uint16_t fp32_to_fp16(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t magnitude = x & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7E00u | ((magnitude >> 13) & 0x3FFu);  // NaN
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to infinity
  if (magnitude < 0x38800000u) {
    // Result is a half denormal or zero. Adding 0.5f aligns the value so that the
    // FPU's own round-to-nearest-even leaves the half mantissa in the low bits.
    const float aligned = bits_float(magnitude) + 0.5f;
    return sign | static_cast<uint16_t>(float_bits(aligned) - 0x3F000000u);
  }
  const uint32_t round_bit = (magnitude >> 13) & 1u;
  magnitude += 0xC8000FFFu + round_bit;  // rebias exponent (-112 << 23) and add the rounding bias
  return sign | static_cast<uint16_t>(magnitude >> 13);
}

static inline float bf16_to_fp32(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

static inline uint16_t fp32_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // quiet NaN
  const uint32_t round_bit = (x >> 16) & 1u;
  return static_cast<uint16_t>((x + 0x7FFFu + round_bit) >> 16);
}

}  // namespace pocketml
