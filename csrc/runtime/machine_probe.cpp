#include "runtime/machine_probe.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "runtime/aligned_buffer.h"
#include "runtime/error.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

const IsaTables<ProbeKernels>& probe_tables() {
  static const IsaTables<ProbeKernels> tables = {
      &scalar::probe_kernels,
#if POCKETML_ARCH_X86
      &avx2::probe_kernels,
      &avx512::probe_kernels,
#else
      nullptr,
      nullptr,
#endif
#if POCKETML_ARCH_ARM
      &neon::probe_kernels,
#else
      nullptr,
#endif
  };
  return tables;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

MachineMeasurement measure_machine(int64_t buffer_bytes, int repeats) {
  if (buffer_bytes < (1 << 20))
    fail_argument(ErrorKind::InvalidArgument, "buffer_bytes", ">= 1 MiB", std::to_string(buffer_bytes));
  if (repeats < 1) fail_argument(ErrorKind::InvalidArgument, "repeats", ">= 1", std::to_string(repeats));
  const ProbeKernels& k = probe_tables().active();
  const int threads = ThreadPool::global().num_threads();
  MachineMeasurement m{0, 0, threads, isa_name(active_isa())};

  // Read bandwidth: each thread streams its own contiguous slice once per repeat.
  const int64_t n = buffer_bytes / 4 / 64 / threads * 64 * threads;
  AlignedBuffer<float> buffer(static_cast<size_t>(n));
  parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {  // first touch by the thread that reads it
    for (int64_t t = t0; t < t1; ++t) std::memset(buffer.data() + t * (n / threads), 0, n / threads * 4);
  });
  std::vector<float> sinks(threads);
  // Plain loads, and loads behind non-temporal requests 2 and 8 KiB ahead (the
  // best distance depends on the thread count): a kernel that streams better
  // than the probe must not read above 100% of it.
  for (int r = 0; r < repeats; ++r)
    for (int64_t prefetch_bytes : {int64_t{0}, int64_t{2048}, int64_t{8192}}) {
      auto start = std::chrono::steady_clock::now();
      parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
          sinks[t] += k.read_sum(buffer.data() + t * (n / threads), n / threads, prefetch_bytes);
      });
      m.read_gbps = std::max(m.read_gbps, n * 4.0 / seconds_since(start) / 1e9);
    }

  // Peak FMA: enough rounds that thread wake-up is noise.
  constexpr int64_t kIterations = 20'000'000;
  for (int r = 0; r < repeats; ++r) {
    std::vector<double> flops(threads);
    auto start = std::chrono::steady_clock::now();
    parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) flops[t] = k.fma_chains(kIterations, &sinks[t]);
    });
    double total = 0;
    for (double f : flops) total += f;
    m.peak_gflops = std::max(m.peak_gflops, total / seconds_since(start) / 1e9);
  }
  return m;
}

}  // namespace pocketml
