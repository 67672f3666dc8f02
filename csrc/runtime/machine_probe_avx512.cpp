#include <immintrin.h>

#include "runtime/machine_probe.h"

namespace pocketml::avx512 {
namespace {

// Through memory rather than _mm512_reduce_add_ps, whose GCC 12 expansion
// trips -Wuninitialized; this runs once per call, so speed does not matter.
float horizontal_sum(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0;
  for (float x : lanes) s += x;
  return s;
}

float read_sum(const float* data, int64_t n, int64_t prefetch_bytes) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < n; i += 64) {
    prefetch_stream_ahead(data + i, prefetch_bytes);
    a0 = _mm512_add_ps(a0, _mm512_load_ps(data + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(data + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(data + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(data + i + 48));
  }
  return horizontal_sum(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// Twelve independent chains cover FMA latency (4 cycles) on two ports.
double fma_chains(int64_t iterations, float* sink) {
  __m512 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm512_set1_ps(static_cast<float>(j));
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iterations; ++i)
    for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(acc[j], m, c);
  __m512 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, acc[j]);
  *sink += horizontal_sum(s);
  return 2.0 * 16 * 12 * iterations;
}

}  // namespace

const ProbeKernels probe_kernels = {read_sum, fma_chains};

}  // namespace pocketml::avx512
