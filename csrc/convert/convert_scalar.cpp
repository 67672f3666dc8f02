#include <cstdint>

#include "convert/convert_kernels.h"
#include "runtime/half.h"

namespace pocketml::scalar {
namespace {

void f32_to_f16(const void* src, void* dst, size_t n) {
  const float* in = static_cast<const float*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; ++i) out[i] = fp32_to_fp16(in[i]);
}

void f16_to_f32(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  float* out = static_cast<float*>(dst);
  for (size_t i = 0; i < n; ++i) out[i] = fp16_to_fp32(in[i]);
}

void f32_to_bf16(const void* src, void* dst, size_t n) {
  const float* in = static_cast<const float*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; ++i) out[i] = fp32_to_bf16(in[i]);
}

void bf16_to_f32(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  float* out = static_cast<float*>(dst);
  for (size_t i = 0; i < n; ++i) out[i] = bf16_to_fp32(in[i]);
}

void f16_to_bf16(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; ++i) out[i] = fp32_to_bf16(fp16_to_fp32(in[i]));
}

void bf16_to_f16(const void* src, void* dst, size_t n) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  uint16_t* out = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; ++i) out[i] = fp32_to_fp16(bf16_to_fp32(in[i]));
}

}  // namespace

const ConvertKernels convert_kernels = {f32_to_f16, f16_to_f32, f32_to_bf16, bf16_to_f32, f16_to_bf16, bf16_to_f16};

}  // namespace pocketml::scalar
