#pragma once
// Measures the machine so benchmarks can say what fraction of it a kernel uses:
// streaming read bandwidth from DRAM and the peak fp32 FMA rate, both on all
// pool threads with the active ISA.
#include <cstdint>

#include "runtime/dispatch.h"

namespace pocketml {

struct ProbeKernels {
  // Sums n floats (n a multiple of 64) so the compiler cannot drop the loads.
  // A positive `prefetch_bytes` also requests, non-temporal, the data that far
  // ahead of each 256-byte step (see prefetch_stream_ahead).
  float (*read_sum)(const float* data, int64_t n, int64_t prefetch_bytes);
  // Runs `iterations` rounds of independent FMA chains; returns the flops done.
  double (*fma_chains)(int64_t iterations, float* sink);
};

// The four lines `prefetch_bytes` past the 256-byte step at p, read-once
// (prefetchnta on x86): streaming read-once data that way, as the x86 decode
// kernels do, read 53-54 GB/s on two threads of a Zen 5 where plain loads read
// 46-52, so the probe's bandwidth is the better of both ways.
[[gnu::always_inline]] static inline void prefetch_stream_ahead(const float* p, int64_t prefetch_bytes) {
  if (prefetch_bytes <= 0) return;
  const char* ahead = reinterpret_cast<const char*>(p) + prefetch_bytes;
  for (int line = 0; line < 4; ++line) __builtin_prefetch(ahead + 64 * line, 0, 0);
}

namespace scalar { extern const ProbeKernels probe_kernels; }
namespace avx2 { extern const ProbeKernels probe_kernels; }
namespace avx512 { extern const ProbeKernels probe_kernels; }
namespace neon { extern const ProbeKernels probe_kernels; }

struct MachineMeasurement {
  double read_gbps;    // bytes per second / 1e9, best of the repeats and ways of reading
  double peak_gflops;  // fp32 FMA, 2 flops each
  int threads;
  const char* isa;
};

MachineMeasurement measure_machine(int64_t buffer_bytes, int repeats);

}  // namespace pocketml
