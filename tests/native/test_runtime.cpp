// The runtime on its own: feature detection, ISA selection, thread pool, errors.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

#include "check.h"
#include "runtime/cpu_features.h"
#include "runtime/error.h"
#include "runtime/machine_probe.h"
#include "runtime/sha256.h"
#include "runtime/thread_pool.h"

using namespace pocketml;

TEST(reports_the_machine) {
  std::printf("    ISA variants on this CPU:");
  for (Isa isa : supported_isas()) std::printf(" %s", isa_name(isa));
  std::printf("; features:");
  for (const std::string& f : cpu_feature_names()) std::printf(" %s", f.c_str());
  std::printf("\n");
  CHECK(supported_isas().front() == Isa::scalar, "scalar must always be available");
  CHECK(isa_supported(active_isa()), "active ISA " << isa_name(active_isa()));
#if POCKETML_ARCH_ARM
  CHECK(isa_supported(Isa::neon), "NEON is baseline on AArch64");
  CHECK(!isa_supported(Isa::avx2), "no x86 variants on ARM");
#endif
}

// tools/test-arm.sh names the ARM extensions each emulated CPU model has
// (POCKETML_EXPECT_ARM_FEATURES="fp16 dotprod i8mm bf16 fhm" for -cpu max, ""
// for cortex-a53): detection must find exactly those, so each run provably
// takes the fast paths or the fallbacks it is meant to test.
TEST(detects_the_arm_extensions_the_test_runner_expects) {
  const char* expected = std::getenv("POCKETML_EXPECT_ARM_FEATURES");
  if (expected == nullptr) return;
  std::string detected;
  for (const std::string& f : cpu_feature_names())
    if (f == "fp16" || f == "dotprod" || f == "i8mm" || f == "bf16" || f == "fhm") detected += (detected.empty() ? "" : " ") + f;
  CHECK(detected == expected, "detected '" << detected << "', expected '" << expected << "'");
}

TEST(set_active_isa_rejects_what_the_machine_lacks) {
  const Isa before = active_isa();
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}) {
    bool threw = false;
    try {
      set_active_isa(isa);
    } catch (const Error& e) {
      threw = e.kind() == ErrorKind::InvalidArgument;
    }
    CHECK(threw != isa_supported(isa), isa_name(isa));
  }
  set_active_isa(before);
}

TEST(parallel_for_covers_every_index_once) {
  ThreadPool& pool = ThreadPool::global();
  const int original = pool.num_threads();
  for (int threads : {1, 2, 3, 8}) {
    pool.set_num_threads(threads);
    for (int64_t n : {0, 1, 7, 1000, 100003}) {
      for (int64_t grain : {1, 16, 4096}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        parallel_for(n, grain, [&](int64_t begin, int64_t end) {
          CHECK(end - begin <= grain && begin < end, "range " << begin << ".." << end);
          for (int64_t i = begin; i < end; ++i) hits[i]++;
        });
        int wrong = 0;
        for (auto& h : hits) wrong += h.load() != 1;
        CHECK(wrong == 0, wrong << " indices not hit exactly once (threads " << threads << ", n " << n << ")");
      }
    }
  }
  pool.set_num_threads(original);
}

// Whether the exception thrown by one task of a job reaches the caller.
bool task_exception_reaches_caller() {
  try {
    parallel_for(64, 1, [](int64_t begin, int64_t) {
      if (begin == 37) throw std::runtime_error("task 37");
    });
  } catch (const std::runtime_error& e) {
    return std::string(e.what()) == "task 37";
  }
  return false;
}

TEST(parallel_for_rethrows_a_task_exception) {
  CHECK(task_exception_reaches_caller(), "exception from a task must reach the caller");
  std::atomic<int> after{0};
  parallel_for(64, 1, [&](int64_t begin, int64_t end) { after += static_cast<int>(end - begin); });
  CHECK(after == 64, "pool still works after an exception");
}

TEST(nested_parallel_for_runs_inline) {
  std::atomic<int64_t> total{0};
  parallel_for(8, 1, [&](int64_t, int64_t) {
    parallel_for(100, 10, [&](int64_t begin, int64_t end) { total += end - begin; });
  });
  CHECK(total == 800, "got " << total.load());
}

TEST(sha256_matches_fips_180_vectors) {
  CHECK(sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "empty");
  CHECK(sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "abc");
  const char* two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  CHECK(sha256_hex(two_blocks, 56) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", "56 bytes");
  std::string million(1000000, 'a');
  Sha256 pieces;  // fed in uneven pieces: buffering across blocks
  for (size_t i = 0; i < million.size(); i += 997) pieces.update(million.data() + i, std::min<size_t>(997, million.size() - i));
  const auto digest = pieces.finish();
  CHECK(digest[0] == 0xcd && digest[1] == 0xc7 && digest[31] == 0xd0, "one million 'a'");
}

// The machine probe's kernels: each variant sums exactly what it reads (small
// integers, so any order is exact) and runs its FMA chains to finite values.
TEST(every_machine_probe_variant_reads_and_computes) {
  std::vector<std::pair<Isa, const ProbeKernels*>> variants = {{Isa::scalar, &scalar::probe_kernels}};
#if POCKETML_ARCH_X86
  if (isa_supported(Isa::avx2)) variants.push_back({Isa::avx2, &avx2::probe_kernels});
  if (isa_supported(Isa::avx512)) variants.push_back({Isa::avx512, &avx512::probe_kernels});
#endif
#if POCKETML_ARCH_ARM
  variants.push_back({Isa::neon, &neon::probe_kernels});
#endif
  alignas(64) float data[512];
  float expected = 0.0f;
  for (int i = 0; i < 512; ++i) expected += data[i] = static_cast<float>(i % 7 - 3);
  for (const auto& [isa, kernels] : variants) {
    CHECK(kernels->read_sum(data, 512, 0) == expected, isa_name(isa) << " read_sum");
    CHECK(kernels->read_sum(data, 512, 256) == expected, isa_name(isa) << " read_sum prefetching");
    float sink = 0.0f;
    CHECK(kernels->fma_chains(100, &sink) > 0.0, isa_name(isa) << " fma_chains flops");
    CHECK(std::isfinite(sink) && sink != 0.0f, isa_name(isa) << " fma_chains result " << sink);
  }
}

TEST(back_to_back_jobs_of_varying_width_each_run_exactly_once) {
  // Alternating jobs that need 1, 2 or all threads: a worker left out of one job
  // must neither run it nor miss the next one it belongs to.
  ThreadPool& pool = ThreadPool::global();
  const int original = pool.num_threads();
  pool.set_num_threads(4);
  auto run_jobs = [] {
    int64_t wrong = 0;
    for (int round = 0; round < 10000; ++round) {
      const int64_t n = 1 + round % 5;
      std::atomic<int64_t> sum{0};
      parallel_for(n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) sum += i + 1;
      });
      wrong += sum.load() != n * (n + 1) / 2;
    }
    return wrong;
  };
  const int64_t cold = run_jobs();  // threads sleep between jobs
  CHECK(cold == 0, cold << " of 10000 jobs covered their range wrongly (sleeping workers)");
  {
    ThreadPool::KeepWarm warm;  // threads spin between jobs
    const int64_t warm_wrong = run_jobs();
    CHECK(warm_wrong == 0, warm_wrong << " of 10000 jobs covered their range wrongly (spinning workers)");
  }
  pool.set_num_threads(original);
}

#if defined(__unix__) || defined(__APPLE__)
// The pool borrowing an OpenMP runtime the process loaded, as torch loads libgomp.
TEST(jobs_run_on_a_loaded_openmp_runtime) {
  ThreadPool& pool = ThreadPool::global();
  const int original = pool.num_threads();
  CHECK(!pool.use_openmp_threads("libpocketml-no-such-runtime.so"), "bound to a library nothing loaded");
  CHECK(!pool.use_openmp_threads("libstdc++.so.6"), "bound to a loaded library without OpenMP entry points");
  CHECK(!pool.on_openmp_threads(), "not bound, yet on OpenMP threads");
  void* gomp = dlopen("libgomp.so.1", RTLD_NOW | RTLD_LOCAL);
  if (gomp == nullptr) {
    std::printf("    skipped: no libgomp.so.1 to load here\n");
    return;
  }
  CHECK(pool.use_openmp_threads("libgomp.so.1") && pool.on_openmp_threads(), "did not bind to the loaded libgomp");

  for (int threads : {2, 3, 8}) {
    pool.set_num_threads(threads);
    for (int64_t n : {1, 7, 1000}) {
      for (int64_t grain : {1, 16}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::mutex ids_mutex;
        std::set<std::thread::id> ids;
        parallel_for(n, grain, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) hits[i]++;
          std::lock_guard<std::mutex> lock(ids_mutex);
          ids.insert(std::this_thread::get_id());
        });
        int wrong = 0;
        for (auto& h : hits) wrong += h.load() != 1;
        CHECK(wrong == 0, wrong << " indices not hit exactly once (threads " << threads << ", n " << n << ")");
        // Each member of a full team runs its own first chunk.
        const int64_t chunks = (n + grain - 1) / grain;
        CHECK(static_cast<int64_t>(ids.size()) == std::min<int64_t>(threads, chunks),
              ids.size() << " threads ran " << chunks << " chunks at " << threads << " threads");
      }
    }
  }

  CHECK(task_exception_reaches_caller(), "an exception from a task on an OpenMP thread must reach the caller");

  // Called inside another OpenMP region, the runtime forms a team of one, smaller
  // than the job planned: that thread runs every chunk.
  using ParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);
  auto gomp_parallel = reinterpret_cast<ParallelFn>(dlsym(gomp, "GOMP_parallel"));
  std::atomic<int64_t> nested_total{0};
  std::atomic<int> nested_threads{0};
  struct Outer {
    std::atomic<int64_t>* total;
    std::atomic<int>* threads;
  } outer{&nested_total, &nested_threads};
  gomp_parallel(
      [](void* data) {
        Outer& o = *static_cast<Outer*>(data);
        std::set<std::thread::id> ids;
        std::mutex ids_mutex;
        parallel_for(100, 10, [&](int64_t begin, int64_t end) {
          *o.total += end - begin;
          std::lock_guard<std::mutex> lock(ids_mutex);
          ids.insert(std::this_thread::get_id());
        });
        *o.threads += static_cast<int>(ids.size());
      },
      &outer, 2, 0);
  CHECK(nested_total == 200, "nested jobs covered " << nested_total.load() << " of 200 indices");
  CHECK(nested_threads == 2, "each nested job ran on its own thread alone, got " << nested_threads.load());

  pool.use_own_threads();
  CHECK(!pool.on_openmp_threads(), "still on OpenMP threads after use_own_threads");
  std::atomic<int> after{0};
  parallel_for(64, 1, [&](int64_t begin, int64_t end) { after += static_cast<int>(end - begin); });
  CHECK(after == 64, "own threads after the OpenMP runtime covered " << after.load());
  pool.set_num_threads(original);
  // gomp stays loaded: its idle threads live on, as they do under torch.
}
#endif
