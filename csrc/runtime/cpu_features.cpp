#include "runtime/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "runtime/error.h"

#if POCKETML_ARCH_X86
#include <cpuid.h>
#endif
#if POCKETML_ARCH_ARM && defined(__linux__)
#include <sys/auxv.h>
#endif
#if POCKETML_ARCH_ARM && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace pocketml {
namespace {

#if POCKETML_ARCH_X86
bool os_saves_zmm_state() {
  // The OS must save the AVX-512 registers on context switch (XCR0 bits 1,2,5,6,7).
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (eax & 0xE6) == 0xE6;
}

bool os_saves_ymm_state() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (eax & 0x6) == 0x6;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  if (!osxsave || !os_saves_ymm_state()) return f;
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  f.avx2 = b & (1u << 5);
  if (os_saves_zmm_state()) {
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512vnni = c & (1u << 11);
    unsigned a1, b1, c1, d1;
    if (__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1)) f.avx512bf16 = a1 & (1u << 5);
  }
  return f;
}
#elif POCKETML_ARCH_ARM
CpuFeatures detect() {
  CpuFeatures f;
  f.neon = true;  // Advanced SIMD is mandatory on AArch64.
#if defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP);
  const unsigned long hw2 = getauxval(AT_HWCAP2);
  f.neon_fp16 = (hw & (1ul << 9)) && (hw & (1ul << 10));  // HWCAP_FPHP, HWCAP_ASIMDHP
  f.neon_dotprod = hw & (1ul << 20);                      // HWCAP_ASIMDDP
  f.neon_i8mm = hw2 & (1ul << 13);                        // HWCAP2_I8MM
  f.neon_bf16 = hw2 & (1ul << 14);                        // HWCAP2_BF16
  f.neon_fhm = f.neon_fp16 && (hw & (1ul << 23));         // HWCAP_ASIMDFHM (FHM requires FP16)
#elif defined(__APPLE__)
  auto has = [](const char* name) {
    int value = 0;
    size_t size = sizeof(value);
    return sysctlbyname(name, &value, &size, nullptr, 0) == 0 && value != 0;
  };
  f.neon_fp16 = has("hw.optional.arm.FEAT_FP16");
  f.neon_dotprod = has("hw.optional.arm.FEAT_DotProd");
  f.neon_i8mm = has("hw.optional.arm.FEAT_I8MM");
  f.neon_bf16 = has("hw.optional.arm.FEAT_BF16");
  f.neon_fhm = f.neon_fp16 && has("hw.optional.arm.FEAT_FHM");
#endif
  return f;
}
#else
CpuFeatures detect() { return {}; }
#endif

bool compiled_in(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2:
    case Isa::avx512: return POCKETML_ARCH_X86;
    case Isa::neon: return POCKETML_ARCH_ARM;
  }
  return false;
}

bool cpu_has(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2: return f.avx2 && f.fma && f.f16c;
    case Isa::avx512: return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
    case Isa::neon: return f.neon;
  }
  return false;
}

constexpr Isa kAllIsas[] = {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon};  // weakest first

std::optional<Isa> isa_named(const std::string& name) {
  for (Isa isa : kAllIsas)
    if (name == isa_name(isa)) return isa;
  return std::nullopt;
}

std::string isa_list(const std::vector<Isa>& isas) {
  std::string s;
  for (Isa isa : isas) s += (s.empty() ? "" : ", ") + std::string(isa_name(isa));
  return s;
}

std::string all_isa_names() { return isa_list({std::begin(kAllIsas), std::end(kAllIsas)}); }

std::string supported_list() { return isa_list(supported_isas()); }

Isa initial_isa() {
  const char* forced = std::getenv("POCKETML_ISA");
  if (forced == nullptr || *forced == '\0') return best_isa();
  // The message names the variable, not parse_isa's argument: that is what the user has to fix.
  const std::optional<Isa> named = isa_named(forced);
  if (!named)
    fail(ErrorKind::InvalidArgument,
         "POCKETML_ISA: expected one of " + all_isa_names() + " (or unset), got '" + forced + "'");
  const Isa isa = *named;
  if (!isa_supported(isa))
    fail(ErrorKind::Runtime, std::string("POCKETML_ISA=") + forced + " is not available on this machine (available: " +
                                 supported_list() + ")");
  return isa;
}

std::atomic<int> g_active{-1};
std::mutex g_active_mutex;

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::neon: return "neon";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  if (const std::optional<Isa> isa = isa_named(name)) return *isa;
  fail_argument(ErrorKind::InvalidArgument, "isa", "one of " + all_isa_names(), "'" + name + "'");
}

bool isa_supported(Isa isa) { return compiled_in(isa) && cpu_has(isa); }

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : kAllIsas)
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

Isa best_isa() { return supported_isas().back(); }

Isa active_isa() {
  int current = g_active.load(std::memory_order_acquire);
  if (current >= 0) return static_cast<Isa>(current);
  std::lock_guard<std::mutex> lock(g_active_mutex);
  if (g_active.load() < 0) g_active.store(static_cast<int>(initial_isa()));
  return static_cast<Isa>(g_active.load());
}

void set_active_isa(Isa isa) {
  if (!isa_supported(isa))
    fail_argument(ErrorKind::InvalidArgument, "isa", "one of the variants this machine runs (" + supported_list() + ")",
                  isa_name(isa));
  g_active.store(static_cast<int>(isa), std::memory_order_release);
}

std::vector<std::string> cpu_feature_names() {
  const CpuFeatures& f = cpu_features();
  std::vector<std::string> names;
  auto add = [&](bool present, const char* name) {
    if (present) names.emplace_back(name);
  };
  add(f.avx2, "avx2");
  add(f.fma, "fma");
  add(f.f16c, "f16c");
  add(f.avx512f, "avx512f");
  add(f.avx512bw, "avx512bw");
  add(f.avx512vl, "avx512vl");
  add(f.avx512dq, "avx512dq");
  add(f.avx512vnni, "avx512vnni");
  add(f.avx512bf16, "avx512bf16");
  add(f.neon, "neon");
  add(f.neon_fp16, "fp16");
  add(f.neon_dotprod, "dotprod");
  add(f.neon_i8mm, "i8mm");
  add(f.neon_bf16, "bf16");
  add(f.neon_fhm, "fhm");
  return names;
}

}  // namespace pocketml
