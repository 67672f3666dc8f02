#include <cmath>

#include "runtime/machine_probe.h"

namespace pocketml::scalar {
namespace {

float read_sum(const float* data, int64_t n, int64_t prefetch_bytes) {
  float acc[8] = {};
  for (int64_t i = 0; i < n; i += 64) {
    prefetch_stream_ahead(data + i, prefetch_bytes);
    for (int64_t k = i; k < i + 64; k += 8)
      for (int j = 0; j < 8; ++j) acc[j] += data[k + j];
  }
  return acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

double fma_chains(int64_t iterations, float* sink) {
  float a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const float m = 0.999999f, c = 1e-7f;
  for (int64_t i = 0; i < iterations; ++i)
    for (float& x : a) x = std::fma(x, m, c);
  *sink += a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
  return 2.0 * 8 * iterations;
}

}  // namespace

const ProbeKernels probe_kernels = {read_sum, fma_chains};

}  // namespace pocketml::scalar
