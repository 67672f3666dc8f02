#pragma once
// Measures the machine so benchmarks can say what fraction of it a kernel uses:
// streaming read bandwidth from DRAM and the peak fp32 FMA rate, both on all
// pool threads with the active ISA.
#include <cstdint>

#include "runtime/dispatch.h"

namespace pocketml {

struct ProbeKernels {
  // Sums n floats (n a multiple of 64) so the compiler cannot drop the loads.
  float (*read_sum)(const float* data, int64_t n);
  // Runs `iterations` rounds of independent FMA chains; returns the flops done.
  double (*fma_chains)(int64_t iterations, float* sink);
};

namespace scalar { extern const ProbeKernels probe_kernels; }
namespace avx2 { extern const ProbeKernels probe_kernels; }
namespace avx512 { extern const ProbeKernels probe_kernels; }
namespace neon { extern const ProbeKernels probe_kernels; }

struct MachineMeasurement {
  double read_gbps;    // bytes per second / 1e9, best of the repeats
  double peak_gflops;  // fp32 FMA, 2 flops each
  int threads;
  const char* isa;
};

MachineMeasurement measure_machine(int64_t buffer_bytes, int repeats);

}  // namespace pocketml
