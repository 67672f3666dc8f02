#include <immintrin.h>

#include "runtime/machine_probe.h"

namespace pocketml::avx2 {
namespace {

float read_sum(const float* data, int64_t n, int64_t prefetch_bytes) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < n; i += 64) {
    prefetch_stream_ahead(data + i, prefetch_bytes);
    a0 = _mm256_add_ps(a0, _mm256_add_ps(_mm256_load_ps(data + i), _mm256_load_ps(data + i + 8)));
    a1 = _mm256_add_ps(a1, _mm256_add_ps(_mm256_load_ps(data + i + 16), _mm256_load_ps(data + i + 24)));
    a2 = _mm256_add_ps(a2, _mm256_add_ps(_mm256_load_ps(data + i + 32), _mm256_load_ps(data + i + 40)));
    a3 = _mm256_add_ps(a3, _mm256_add_ps(_mm256_load_ps(data + i + 48), _mm256_load_ps(data + i + 56)));
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  float lanes[8];
  _mm256_storeu_ps(lanes, s);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
}

// Twelve independent chains cover FMA latency (4-5 cycles) on two ports.
double fma_chains(int64_t iterations, float* sink) {
  __m256 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps(static_cast<float>(j));
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iterations; ++i)
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_fmadd_ps(acc[j], m, c);
  __m256 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, acc[j]);
  *sink += _mm256_cvtss_f32(s);
  return 2.0 * 8 * 12 * iterations;
}

}  // namespace

const ProbeKernels probe_kernels = {read_sum, fma_chains};

}  // namespace pocketml::avx2
