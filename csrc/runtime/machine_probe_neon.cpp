#include <arm_neon.h>

#include "runtime/machine_probe.h"

namespace pocketml::neon {
namespace {

float read_sum(const float* data, int64_t n, int64_t prefetch_bytes) {
  float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < n; i += 64) {
    prefetch_stream_ahead(data + i, prefetch_bytes);
    for (int j = 0; j < 64; j += 16) {
      a0 = vaddq_f32(a0, vld1q_f32(data + i + j));
      a1 = vaddq_f32(a1, vld1q_f32(data + i + j + 4));
      a2 = vaddq_f32(a2, vld1q_f32(data + i + j + 8));
      a3 = vaddq_f32(a3, vld1q_f32(data + i + j + 12));
    }
  }
  return vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
}

// Sixteen independent chains cover FMA latency (4 cycles) on Apple silicon's
// four 128-bit FMA pipes, within the 32 vector registers.
double fma_chains(int64_t iterations, float* sink) {
  float32x4_t acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = vdupq_n_f32(static_cast<float>(j));
  const float32x4_t m = vdupq_n_f32(0.999999f), c = vdupq_n_f32(1e-7f);
  for (int64_t i = 0; i < iterations; ++i)
    for (int j = 0; j < 16; ++j) acc[j] = vfmaq_f32(c, acc[j], m);
  float32x4_t s = acc[0];
  for (int j = 1; j < 16; ++j) s = vaddq_f32(s, acc[j]);
  *sink += vgetq_lane_f32(s, 0);
  return 2.0 * 4 * 16 * iterations;
}

}  // namespace

const ProbeKernels probe_kernels = {read_sum, fma_chains};

}  // namespace pocketml::neon
